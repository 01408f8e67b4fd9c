"""The UI edge (sdplay/ui/common.py): every message that leaves it is one a user may see, with no server path."""

from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from sdplay.runtime.catalog import ModelSettings
from sdplay.runtime.errors import UserError
from sdplay.runtime.generate import GenerationResult, StepUpdate
from sdplay.runtime.request import GenerationRequest, Limits
from sdplay.ui.common import run, user_errors

PATHS = [
    "/tmp/gradio/2c1f0e9a/junk.png",
    "/root/.cache/huggingface/hub/models--org--name/unet/model.safetensors",
    "~/models/secret/model.safetensors",
    "C:\\Users\\ann\\models\\model.safetensors",
    "C:/Users/ann/models/model.safetensors",
    "\\\\fileserver\\share\\models\\model.safetensors",
]
SERVER_WORDS = ["/tmp", "/root", "gradio", "2c1f0e9a", ".cache", "huggingface", "Users", "fileserver", "~"]


def shown(error: Exception) -> str:
    """The message a user sees when `error` is raised inside `user_errors()`."""
    with pytest.raises(gr.Error) as caught, user_errors():
        raise error
    return caught.value.message


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", [UserError, gr.Error, OSError])
def test_no_message_names_a_server_path(kind, path):
    message = shown(kind(f"cannot identify image file '{path}' (see {path}, then retry)"))
    assert all(word not in message for word in SERVER_WORDS), message
    assert "cannot identify image file" in message and path.replace("\\", "/").rsplit("/")[-1] in message


def test_urls_fractions_and_slashes_in_words_are_kept():
    text = "See https://huggingface.co/stabilityai/sd-turbo: 1/2 steps, CFG / steps, and/or a C: drive."
    assert shown(UserError(text)) == text


def test_the_progress_bar_moves_with_each_preview_not_with_every_step():
    """Each progress update is a message to every watching client: a step every few milliseconds (a small model, a
    fast GPU) would be a flood of them while the job runs on the same cores."""
    updates = [
        StepUpdate(step, 20, 0.01, [Image.new("RGB", (8, 8))] if step in (1, 11) else []) for step in range(1, 21)
    ]
    result = GenerationResult([Image.new("RGB", (8, 8))], ["infotext"], [7])
    model = SimpleNamespace(name="m", native_size=8, settings=ModelSettings(size=8))
    manager = SimpleNamespace(
        model=model, executor=SimpleNamespace(seconds_per_step={}, run=lambda job: iter([*updates, result]))
    )
    shown: list[str] = []
    outputs = list(
        run(manager, GenerationRequest(prompt="cat"), Limits(), None, lambda value, desc: shown.append(desc))
    )
    assert shown == ["Starting", updates[0].describe(), updates[10].describe()]
    assert len(outputs) == 3 and outputs[-1][2] == 7  # two previews, then the images, infotext and seed
