"""Tests for the shapes world (renderer, masks, grammar) and the committed shapes model.

The model tests use the weights in assets/shapes/ and never train.
"""

import pathlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTokenizer

from sdplay.page import build_demo
from sdplay.runtime.composition import local_manager
from sdplay.runtime.errors import UserError
from sdplay.runtime.generate import generate
from sdplay.runtime.metadata import parse_infotext
from sdplay.runtime.models import ModelSwitch, SwitchPolicy
from sdplay.runtime.request import GenerationRequest, Limits, Task
from sdplay.shapes.evaluate import measure, measure_objects
from sdplay.shapes.world import (
    BACKGROUNDS,
    COLORS,
    HALF_MARGIN,
    OPPOSITE_POSITIONS,
    POSITION_JITTER,
    POSITIONS,
    SIZES,
    VOCABULARY,
    region,
    render,
    render_pair,
    sample_pair,
    sample_scene,
)
from tests.helpers import running_unet

MODEL = pathlib.Path(__file__).resolve().parents[1] / "assets" / "shapes"


def test_masks_match_images() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = sample_scene(rng)
        image, masks = render(scene, 64)
        obj = masks[scene.shape]
        fg, bg = np.array(COLORS[scene.color]), np.array(BACKGROUNDS[scene.background])
        # Every pixel blends the two colours; the mask holds the pixels that are at least half object colour.
        share = (image - bg) @ (fg - bg) / ((fg - bg) @ (fg - bg))
        assert np.abs(bg + share[..., None] * (fg - bg) - image).max() <= 1
        assert obj[share > 0.52].all() and not obj[share < 0.48].any(), scene  # rounding blurs exact halves
        assert obj.sum() > 0.4 * (scene.side * 64) ** 2  # a triangle fills half its box
        assert all(masks[w] is obj for w in (scene.size, scene.color))
        # The position word names a region of the image, and the object's centre lies inside it.
        named = masks[POSITIONS[scene.position][0]]
        assert named.sum() == (1024 if scene.position == "in the center" else 2048)
        assert named[int(scene.cy * 64), int(scene.cx * 64)], scene
        assert np.array_equal(masks[scene.background], ~obj) and np.array_equal(masks["background"], ~obj)


def test_placement_follows_the_grammar() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        scene = sample_scene(rng)
        _, masks = render(scene, 64)
        ys, xs = np.nonzero(masks[scene.shape])
        assert abs(max(xs.max() - xs.min(), ys.max() - ys.min()) + 1 - scene.side * 64) <= 2
        assert abs((xs.min() + xs.max() + 1) / 2 - scene.cx * 64) <= 1.5
        low, high = SIZES[scene.size]
        assert low <= scene.side <= high
        _, ax, ay = POSITIONS[scene.position]
        for centre, anchor in [(scene.cx, ax), (scene.cy, ay)]:
            low, high = (0.4, 0.6) if anchor == 0.5 else (anchor - POSITION_JITTER, anchor + POSITION_JITTER)
            assert low - 1e-9 <= centre <= high + 1e-9, scene
        assert scene.background != scene.color
        assert set(scene.prompt().split()) <= set(VOCABULARY)


def test_a_one_object_prompt_reads_as_before() -> None:
    rng = np.random.default_rng(2)
    scene = sample_scene(rng)
    words = scene.prompt().split()
    assert words == [
        "a",
        scene.size,
        scene.color,
        scene.shape,
        *scene.position.split(),
        "on",
        "a",
        scene.background,
        "background",
    ]
    assert "and" not in scene.prompt(np.random.default_rng(3), drop=0.5)


def test_two_object_scenes_follow_the_grammar() -> None:
    rng = np.random.default_rng(4)
    for _ in range(200):
        pair = sample_pair(rng)
        first, second = pair.objects
        assert (first.position, second.position) in [*OPPOSITE_POSITIONS, *(p[::-1] for p in OPPOSITE_POSITIONS)]
        assert len({first.color, second.color, pair.background}) == 3
        assert first.background == second.background == pair.background
        for obj in pair.objects:
            low, high = SIZES[obj.size]
            assert low <= obj.side <= min(high, 0.5 - 2 * HALF_MARGIN)
            # The whole object lies in its half, HALF_MARGIN from its edges: the two never touch.
            half = region(obj.position, 1000)
            for x, y in [
                (obj.cx - obj.side / 2, obj.cy - obj.side / 2),
                (obj.cx + obj.side / 2, obj.cy + obj.side / 2),
            ]:
                assert half[int(y * 999), int(x * 999)], pair
        assert set(pair.prompt().split()) <= set(VOCABULARY)
        assert pair.prompt().startswith(f"a {first.size} {first.color} {first.shape} {first.position} and a ")
        # Leaving phrases out never drops a position: it is what tells the two objects apart.
        kept = pair.prompt(np.random.default_rng(5), drop=0.9).split()
        assert {POSITIONS[o.position][0] for o in pair.objects} <= set(kept) and kept.count("and") == 1


def test_each_object_of_a_pair_has_its_own_word_masks() -> None:
    rng = np.random.default_rng(6)
    for _ in range(50):
        pair = sample_pair(rng)
        image, masks = render_pair(pair, 64)
        own = [m[o.shape] for m, o in zip(masks, pair.objects, strict=True)]
        assert not (own[0] & own[1]).any() and own[0].any() and own[1].any()
        for obj, words, mask in zip(pair.objects, masks, own, strict=True):
            assert words[obj.color] is mask and words[obj.size] is mask
            assert np.linalg.norm(np.median(image[mask], axis=0) - COLORS[obj.color]) < 2
            assert words[POSITIONS[obj.position][0]][int(obj.cy * 64), int(obj.cx * 64)]
            assert np.array_equal(words["background"], ~(own[0] | own[1]))
        # The tagged words name the same masks: "red" in the first phrase is object 1's, not object 2's.
        tags = dict(pair.tagged_words()[1:4])
        assert tags == {pair.first.size: "object 1", pair.first.color: "object 1", pair.first.shape: "object 1"}


def test_the_evaluation_reads_both_objects_of_rendered_pairs() -> None:
    rng = np.random.default_rng(7)
    for _ in range(60):
        pair = sample_pair(rng)
        found = measure_objects(render_pair(pair, 64)[0])
        assert {(f.color, f.shape, f.size) for f in found} == {(o.color, o.shape, o.size) for o in pair.objects}
        assert found[0].background == pair.background


@pytest.fixture(scope="module")
def pipe() -> StableDiffusionPipeline:
    assert (MODEL / "model_index.json").exists(), "the shapes model is missing: run python -m sdplay.shapes.train"
    pipe = StableDiffusionPipeline.from_pretrained(MODEL, dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_committed_tokenizer_has_one_token_per_grammar_word() -> None:
    tokenizer = CLIPTokenizer.from_pretrained(MODEL / "tokenizer", local_files_only=True)
    for word in VOCABULARY:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_committed_model_puts_a_red_circle_on_the_left(pipe: StableDiffusionPipeline) -> None:
    prompt = "a large red circle on the left on a gray background"
    result = pipe(prompt, num_inference_steps=20, guidance_scale=5.0, generator=torch.manual_seed(0), output_type="np")
    image = result.images[0] * 255
    assert image.shape == (64, 64, 3)
    red = np.linalg.norm(image - np.array(COLORS["red"]), axis=-1) < 60
    assert red.sum() > 0.1 * 64 * 64, "no large red object"
    assert np.nonzero(red)[1].mean() < 0.4 * 64, "the red object is not left of centre"
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    assert np.linalg.norm(np.median(border, axis=0) - np.array(BACKGROUNDS["gray"])) < 40, "background is not gray"


def test_all_three_tasks_run_on_it_through_the_app_manager() -> None:
    manager = local_manager(device="cpu")
    manager.load(str(MODEL))
    prompt = "a large blue square in the center on a white background"
    image = generate(manager, GenerationRequest(prompt=prompt, steps=10, seed=1, guidance_scale=5.0)).images[0]
    assert image.size == (64, 64) and measure(np.asarray(image)).background == "white"
    again = generate(
        manager, GenerationRequest(task=Task.IMG2IMG, prompt=prompt, steps=10, seed=2, image=image, strength=0.5)
    )
    assert again.images[0].size == (64, 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    inpainted = generate(
        manager, GenerationRequest(task=Task.INPAINT, prompt=prompt, steps=10, image=image, mask=mask, mask_blur=0)
    )
    assert np.array_equal(np.asarray(inpainted.images[0])[:, 32:], np.asarray(image)[:, 32:])


def test_the_fast_path_runs_the_distilled_unet_once_a_step_as_diffusers_does(shapes) -> None:
    """The LCM sampler on the bundled model runs its 4-step UNet (assets/shapes/unet-lcm): one UNet call a step,
    the same pixels as plain diffusers with that UNet and LCMScheduler, and an infotext that says what ran."""
    prompt = "a small red circle on the left and a small blue square on the right on a gray background"
    request = GenerationRequest(prompt=prompt, sampler="LCM", steps=4, guidance_scale=4.0, seed=7)
    calls = {"fast": 0, "teaching": 0}
    hooks = [
        unet.register_forward_hook(lambda *args, name=name: calls.__setitem__(name, calls[name] + 1))
        for name, unet in (("fast", running_unet(shapes, "LCM")), ("teaching", running_unet(shapes)))
    ]
    try:
        result = generate(shapes, request)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"fast": 4, "teaching": 0}
    params = parse_infotext(result.infotexts[0]).params
    assert (params["Sampler"], params["Steps"], params["CFG scale"]) == ("LCM", "4", "4")

    pipe = StableDiffusionPipeline.from_pretrained(MODEL, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet = UNet2DConditionModel.from_pretrained(MODEL / "unet-lcm", local_files_only=True)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    plain = pipe(prompt, num_inference_steps=4, guidance_scale=4.0, generator=torch.Generator().manual_seed(7))
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(result.images[0]))
    found = {got.color: got.shape for got in measure_objects(np.asarray(result.images[0]))}
    assert found.get("red") == "circle", found  # the picture asked for, in 4 steps


def test_the_generation_tabs_start_on_the_fast_path_and_explain_on_the_20_step_story(shapes) -> None:
    demo = build_demo(shapes, Limits(), ModelSwitch({"shapes": str(MODEL)}, SwitchPolicy.LOCKED))
    endpoints = demo.get_api_info()["named_endpoints"]

    def defaults(endpoint: str) -> tuple:
        given = {p["parameter_name"]: p["parameter_default"] for p in endpoints[endpoint]["parameters"]}
        return given["sampler"], given["steps"], given["guidance_scale"]

    for endpoint in ("/txt2img", "/img2img", "/inpaint", "/xyz"):
        assert defaults(endpoint) == ("LCM", 4, 4), endpoint
    assert defaults("/explain") == ("DPM++ 2M", 20, 4)


@pytest.mark.parametrize(
    ("task", "steps", "strength", "most"), [(Task.TXT2IMG, 51, 1.0, 50), (Task.IMG2IMG, 30, 0.5, 25)]
)
def test_lcm_asked_for_more_steps_than_it_was_distilled_on_says_so(shapes, task, steps, strength, most) -> None:
    image = Image.new("RGB", (64, 64), "gray") if task == Task.IMG2IMG else None
    request = GenerationRequest(task=task, prompt="a red circle", sampler="LCM", steps=steps, strength=strength)
    with pytest.raises(UserError, match=rf"The LCM sampler runs at most {most} steps.*: {steps} asked"):
        generate(shapes, replace(request, image=image))
    assert generate(shapes, replace(request, image=image, steps=most)).images  # its most still runs
