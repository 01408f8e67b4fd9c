"""The Explain view on the bundled shapes model: each word's map falls on the object it names (DAAM's protocol).

These are the bundled model's bars, reproduced from the view's own recorded maps after an export round trip.
"""

from dataclasses import fields, replace
from types import SimpleNamespace

import gradio as gr
import numpy as np
import torch
from diffusers import AutoencoderKL

from sdplay.compare.ui import ABView, Recorder, compare_on_page
from sdplay.explain.capture import explain
from sdplay.explain.decoding import cheap_to_decode
from sdplay.explain.export import load_run, save_run
from sdplay.explain.render import ExplainView
from sdplay.explain.ui import decoding_if_cheap
from sdplay.page import build_demo
from sdplay.runtime.models import ModelSwitch, SwitchPolicy
from sdplay.runtime.request import GenerationRequest, Limits
from sdplay.shapes.evaluate import daam_iou, measure
from sdplay.shapes.world import sample_scene
from sdplay.ui.tabs import Page
from tests.helpers import SHAPES

SD_VAE_BLOCKS = dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
PROMPTS = 16


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


def test_explain_decodes_x0_unasked_when_the_vae_is_cheap(shapes):
    """After a run of the bundled model, Explain decodes x̂₀ by itself: its VAE's linear preview is a poor likeness
    (brown for red, a blue halo). SD's VAE at 512² costs far more: there x̂₀ waits for the Decode button."""
    switch = ModelSwitch({"shapes": str(SHAPES)}, SwitchPolicy.LOCKED)
    demo, page = build_demo(shapes, Limits(), switch), Page(shapes, Limits(), switch)
    session, quiet = SimpleNamespace(session_hash="a visitor", headers={}, username=None), lambda *args, **kwargs: None
    request = GenerationRequest(prompt="a large red circle on the left on a gray background", sampler="Euler", seed=3)
    run = explain(shapes, replace(request, steps=4))

    elsewhere = ExplainView(replace(run, recipe=replace(run.recipe, model="another model")))
    assert list(decoding_if_cheap(page, elsewhere, 4, session, quiet)) == [gr.skip()]  # its VAE is not here
    assert elsewhere.decoded_steps == frozenset()

    view = ExplainView(run)
    preview = np.asarray(view.x0(3), dtype=int)
    shown = list(decoding_if_cheap(page, view, 4, session, quiet))
    assert view.decoded_steps == frozenset(range(4)) and np.array_equal(np.asarray(shown[0]), np.asarray(view.x0(3)))
    # Euler's last step lands on x̂₀: decoded, it is the final image; the linear preview was far from it.
    final = np.asarray(view.image, dtype=int)
    assert np.abs(np.asarray(view.x0(3), dtype=int) - final).mean() < 2 < 10 < np.abs(preview - final).mean()

    # Decoding, unasked or pressed, then redraws the page's filmstrip, whose frames are those x̂₀s.
    for name in ("decode_if_cheap", "decode_all"):
        index = next(i for i, f in demo.fns.items() if getattr(f.fn, "__name__", None) == name)
        followers = [f for f in demo.fns.values() if f.trigger_after == index]
        assert any("sdplay-filmstrip-page" in (output.elem_classes or []) for f in followers for output in f.outputs)

    a = dict(prompt=request.prompt, negative_prompt="", sampler="Euler", steps=4, guidance_scale=4, seed=3)
    a |= dict(width=64, height=64, schedule="Automatic")
    shown_on = ABView(*(gr.State() for _ in fields(ABView)))  # stand-ins for the page's outputs
    recorder = Recorder(shapes, Limits(), session, quiet)
    *_, shown = compare_on_page(recorder, shown_on, differs_in="CFG scale", b_value="1", **a)
    pair = shown[shown_on.comparison]
    assert [view.decoded_steps for view in pair.views] == [frozenset(range(4))] * 2  # Compare's x̂₀s too

    with torch.device("meta"):  # SD 1.5's VAE, without its weights
        sd_vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, **SD_VAE_BLOCKS)
    assert cheap_to_decode(shapes.model.pipe.vae, 64 * 64) and not cheap_to_decode(sd_vae, 512 * 512)
