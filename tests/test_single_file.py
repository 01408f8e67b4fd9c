"""Single-file checkpoints: an original-layout .safetensors file with a local config loads offline like the folder.

Pickle checkpoints are refused by their header whatever their name, and a missing file is a clear error.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from sdplay.runtime.composition import local_manager
from sdplay.runtime.errors import UserError
from sdplay.runtime.generate import generate
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import GenerationRequest
from tests.single_file import save_original_checkpoint

REQUEST = GenerationRequest(prompt="a red cat", negative_prompt="dog", sampler="DPM++ 2M", steps=4, seed=1234)


@pytest.fixture(scope="module")
def checkpoint(tiny_model: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("single-file") / "tiny.safetensors"
    save_original_checkpoint(tiny_model, path)
    return path


def test_single_file_generates_the_folders_pixels(checkpoint: Path, tiny_model: Path, manager: ModelManager) -> None:
    single = local_manager(device="cpu")
    model = single.load(str(checkpoint), config=str(tiny_model))
    assert (model.name, model.config) == ("tiny.safetensors", str(tiny_model))
    from_file = generate(single, REQUEST).images[0]
    from_folder = generate(manager, REQUEST).images[0]
    np.testing.assert_array_equal(np.asarray(from_file), np.asarray(from_folder))


@pytest.mark.parametrize("name", ["model.ckpt", "disguised.safetensors"])
def test_pickle_checkpoint_is_refused(tmp_path: Path, tiny_model: Path, name: str) -> None:
    path = tmp_path / name
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, path)
    with pytest.raises(UserError, match=r"not a safetensors file.*pickle"):
        local_manager(device="cpu").load(str(path), config=str(tiny_model))


def test_missing_file_is_a_user_error(tmp_path: Path, tiny_model: Path) -> None:
    with pytest.raises(UserError, match="No model at"):
        local_manager(device="cpu").load(str(tmp_path / "missing.safetensors"), config=str(tiny_model))
