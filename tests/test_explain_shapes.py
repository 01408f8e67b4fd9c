"""The Explain view on the bundled shapes model: each word's map falls on the object it names (DAAM's protocol).

These are the bundled model's bars, reproduced from the view's own recorded maps after an export round trip.
"""

from pathlib import Path

import numpy as np
import pytest

from sdplay.explain.capture import explain
from sdplay.explain.export import load_run, save_run
from sdplay.models import ModelManager
from sdplay.requests import GenerationRequest
from sdplay.shapes.evaluate import daam_iou, measure
from sdplay.shapes.world import sample_scene

MODEL = Path(__file__).resolve().parent.parent / "assets" / "shapes"
PROMPTS = 16


@pytest.fixture(scope="module")
def shapes() -> ModelManager:
    manager = ModelManager(device="cpu")
    manager.load(str(MODEL))
    return manager


def test_word_maps_overlap_the_objects_they_name(shapes, tmp_path):
    rng = np.random.default_rng(31)  # fresh scenes, not the training draws
    ious: dict[str, list[float]] = {"shape": [], "colour": []}
    for i in range(PROMPTS):
        scene = sample_scene(rng)
        request = GenerationRequest(prompt=scene.prompt(), sampler="Euler", steps=20, guidance_scale=5.0, seed=i)
        run = load_run(save_run(explain(shapes, request), tmp_path / f"run{i}.safetensors"))
        object_mask = measure(run.image).mask
        maps = run.averaged_attention().mean(dim=0)  # averaged over steps: [T, h, w]
        for key, word in (("shape", scene.shape), ("colour", scene.color)):
            ious[key].append(daam_iou(maps[run.tokens.index(f"{word}</w>")], object_mask))
    assert np.mean(ious["shape"]) >= 0.70, ious["shape"]
    assert np.mean(ious["colour"]) >= 0.60, ious["colour"]
