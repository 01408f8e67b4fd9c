"""/explain through gradio_client against `python app.py`: /txt2img's parameters in, the image and the export out."""

import json

import numpy as np
from PIL import Image
from safetensors import safe_open

from sdplay.explain.export import load_run
from sdplay.explain.render import HeatmapSettings, replay_view
from tests.helpers import CONTRACT, load

ARGS = dict(prompt="a red cat", negative_prompt="dog", sampler="Euler", steps=3, guidance_scale=7, seed=11)


def test_explain_takes_the_txt2img_parameters(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = {name: [p["parameter_name"] for p in endpoints[name]["parameters"]] for name in ("/explain", "/txt2img")}
    # All of /txt2img's but the batch size: Explain records one image.
    assert names["/explain"] == [name for name in names["/txt2img"] if name != "batch_size"]
    assert names["/explain"][: len(CONTRACT["/txt2img"])] == CONTRACT["/txt2img"]


def test_explain_returns_the_image_and_a_replayable_export(client):
    image, export = client.predict(**ARGS, width=64, height=64, api_name="/explain")
    assert export.endswith(".safetensors")
    run = load_run(export)
    assert run.tokens == ["<|startoftext|>", "a</w>", "red</w>", "cat</w>", "<|endoftext|>"]
    assert run.negative_tokens == ["<|startoftext|>", "dog</w>", "<|endoftext|>"]
    assert {k: getattr(run.recipe, k) for k in ARGS} == ARGS and (run.recipe.width, run.recipe.height) == (64, 64)
    assert run.steps == 3 and np.array_equal(run.image, load(image))

    # The contract a notebook relies on, read with safetensors alone.
    with safe_open(export, framework="np") as f:
        metadata = f.metadata()
        assert json.loads(metadata["tokens"]) == run.tokens and json.loads(metadata["recipe"]) == run.recipe.as_dict()
        assert f.get_tensor("image").shape == (64, 64, 3) and f.get_tensor("image").dtype == np.uint8
        assert f.get_tensor("latents").shape == f.get_tensor("x0").shape == (3, 4, 8, 8)
        assert f.get_tensor("attention").shape == (3, len(run.tokens), 8, 8)

    # Recording changes nothing: /txt2img makes the same pixels for the same request.
    gallery, _, _ = client.predict(**ARGS, width=64, height=64, api_name="/txt2img")
    assert np.array_equal(load(gallery[0]["image"]), np.asarray(Image.open(image).convert("RGB")))


def test_a_one_step_run_is_explained_and_replays(client):
    """SD-Turbo's normal use, through the API: the export of one step replays."""
    _, export = client.predict(**(ARGS | {"steps": 1}), width=64, height=64, api_name="/explain")
    view = replay_view(export)
    assert view.run.steps == 1 and view.draw(0, HeatmapSettings())["label"].startswith("**Step 1 of 1**")
