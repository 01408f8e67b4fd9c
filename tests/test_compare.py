"""Same-seed A/B and word ablation (sdplay/compare/comparison.py) on the tiny random model: B differs in one field only,
identical runs measure zero, different prompts do not, and weight 1 is the original to the bit."""

import re
import time
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from sdplay.compare.comparison import (
    ABLATIONS,
    SD_CONTRASTS,
    SHAPES_CONTRASTS,
    Comparison,
    ablate,
    aligned_words,
    attention_shift,
    difference_gain,
    difference_image,
    paired_step,
    presets_for,
    prompt_words,
    split_step,
    variant,
    with_seed,
    x0_difference,
)
from sdplay.explain.capture import explain
from sdplay.explain.render import COLORMAPS, ExplainView, words_of
from sdplay.runtime.errors import UserError
from sdplay.runtime.request import GenerationRequest, validated

A = validated(GenerationRequest(prompt="a red cat on a dog", sampler="Euler", steps=4, guidance_scale=4, seed=7))


@pytest.fixture(scope="module")
def run_a(manager):
    return explain(manager, A)


def fields_that_differ(a: GenerationRequest, b: GenerationRequest) -> set[str]:
    return {name for name in a.__dataclass_fields__ if getattr(a, name) != getattr(b, name)}


@pytest.mark.parametrize(
    "field, value, changed, expected",
    [
        ("guidance_scale", "8", "guidance_scale", 8.0),
        ("steps", 6, "steps", 6),
        ("sampler", "DDIM", "sampler", "DDIM"),
        ("negative_prompt", "dog", "negative_prompt", "dog"),
        ("word", "red -> blue", "prompt", "a blue cat on a dog"),
        ("word", "a → the", "prompt", "the red cat on the dog"),
    ],
)
def test_variant_keeps_the_seed_and_changes_one_field(field, value, changed, expected):
    b = variant(A, field, value)
    assert b.seed == A.seed == 7
    assert fields_that_differ(A, b) == {changed}
    assert getattr(b, changed) == expected


def test_variant_refuses_bad_values_with_clear_messages():
    with pytest.raises(UserError, match="no word 'green'"):
        variant(A, "word", "green -> blue")
    with pytest.raises(UserError, match="'old -> new'"):
        variant(A, "word", "red blue")
    with pytest.raises(UserError, match="guidance_scale"):
        variant(A, "guidance_scale", "lots")
    with pytest.raises(UserError, match="B may differ in one of"):
        variant(A, "width", 128)


def test_a_random_seed_is_drawn_once_for_both():
    drawn = with_seed(GenerationRequest(prompt="a cat", seed=-1))
    assert 0 <= drawn.seed
    assert variant(drawn, "guidance_scale", 2).seed == drawn.seed


def test_presets_fit_the_model_vocabulary():
    assert presets_for(()) == list(SD_CONTRASTS)
    one_shape = ("a", "on", "background", "large", "small", "red", "blue", "circle", "square", "gray", "left")
    one_shape += ("right", "the", "in", "center")
    names = [p.name for p in presets_for(one_shape)]
    assert "red vs blue" in names and "left vs right" in names
    assert "two objects, colours swapped" not in names  # "and" is unknown to a one-object model
    assert "two objects, colours swapped" in [p.name for p in presets_for((*one_shape, "and"))]
    for preset in (*SHAPES_CONTRASTS, *SD_CONTRASTS):  # every preset makes a valid B from its A
        a = GenerationRequest(prompt=preset.prompt, guidance_scale=float(preset.a_value or 7), seed=1)
        assert fields_that_differ(a, variant(a, preset.field, preset.value)) - {"sampler", "schedule"}


def test_identical_runs_measure_zero_everywhere(manager, run_a):
    again = explain(manager, A)
    assert np.array_equal(run_a.image, again.image)
    difference = np.asarray(difference_image(run_a.image, again.image))
    assert (difference == COLORMAPS["inferno"][0]).all()  # the colour of zero everywhere
    assert x0_difference(run_a, again).tolist() == [0.0] * run_a.steps
    assert split_step(x0_difference(run_a, again)) is None
    assert Comparison(run_a, again).summary()["x_t_difference"] == [0.0] * run_a.steps
    shifts = attention_shift(run_a, again)
    assert [s.word for s in shifts] == ["a", "red", "cat", "on", "a", "dog"]
    assert all(s.shift == 0 for s in shifts)
    assert Comparison(run_a, again).summary()["pixel_difference"] == {"mean": 0.0, "changed_share": 0.0}


def test_difference_image_is_black_where_equal_and_bright_where_not():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[:4] = 50
    diff = np.asarray(difference_image(Image.fromarray(a), Image.fromarray(b)))
    assert diff.shape == (8, 8, 3)
    assert diff[4:].max() < 10  # inferno's black
    assert (diff[:4] == COLORMAPS["inferno"][200]).all()  # 50 levels × 4: near the (yellow) top of the map
    assert difference_gain(a, b) == 4  # 50 levels: ×4 is the largest power of two that stays under 255
    assert difference_gain(a, a) == 1
    b[:4] = 1
    assert difference_gain(a, b) == 32  # a one-level change is amplified as far as allowed
    with pytest.raises(UserError, match="different sizes"):
        difference_image(a, np.zeros((4, 8, 3), np.uint8))


def test_a_different_prompt_splits_the_trajectories(manager, run_a):
    b = explain(manager, variant(A, "word", "red -> dog"))
    differences = x0_difference(run_a, b)
    assert (differences > 0).all()
    assert 1 <= split_step(differences) <= run_a.steps
    assert split_step(np.array([0.0, 1.0, 4.0, 2.0])) == 3  # the first step at half the largest difference
    compared = Comparison(run_a, b)
    summary = compared.summary()
    trajectory = summary["x_t_difference"]
    assert trajectory[0] == 0 and trajectory[-1] > 0  # one seed: the paths start together, then part
    assert summary["pixel_difference"]["mean"] > 0
    assert summary["a"]["seed"] == summary["b"]["seed"] == 7
    assert [(w["word"], w["word_b"]) for w in summary["words"]][1:3] == [("red", "dog"), ("cat", "cat")]
    # The swapped word is compared with its replacement; the others with themselves.
    assert aligned_words(compared.views[0].words, compared.views[1].words)[2] == 2
    x0_a, x0_b = compared.x0_at(1)
    heat_a, heat_b = compared.attention_at(1, 2)
    assert x0_a.size == x0_b.size == heat_a.size == heat_b.size
    assert "part at" in compared.describe()


def test_steps_of_different_counts_pair_by_their_place_in_the_run(manager, run_a):
    b = explain(manager, variant(A, "steps", 6))
    assert len(x0_difference(run_a, b)) == run_a.steps
    assert [paired_step(step, 4, 6) for step in range(4)] == [0, 2, 3, 5]  # first with first, last with last
    compared = Comparison(run_a, b)
    alone_a, alone_b = ExplainView(run_a), ExplainView(b)
    for step, step_b in ((0, 0), (1, 2), (3, 5)):
        x0_a, x0_b = compared.x0_at(step)
        assert np.array_equal(np.asarray(x0_a), np.asarray(alone_a.x0(step)))
        assert np.array_equal(np.asarray(x0_b), np.asarray(alone_b.x0(step_b))), step


def test_ablation_at_weight_one_is_the_original_bit_for_bit(manager, run_a):
    same = ablate(A, 1, "1")
    assert same.prompt == "a (red:1) cat on a dog"
    again = explain(manager, same)
    assert np.array_equal(run_a.image, again.image)
    assert all(s.shift == 0 for s in attention_shift(run_a, again))


def test_ablation_removes_or_reweights_one_word(manager, run_a):
    assert [m.group() for m in prompt_words("a (red:1.2) cat BREAK on [a|dog]")] == [
        "a",
        "red",
        "cat",
        "on",
        "a",
        "dog",
    ]
    assert ablate(A, "red", "removed").prompt == "a cat on a dog"
    assert ablate(A, 5, "removed").prompt == "a red cat on a"
    assert ablate(A, "cat", "0.5").prompt == "a red (cat:0.5) on a dog"
    assert ablate(replace_prompt(A, "a (red:1.2) cat"), "red", "0.5").prompt == "a ((red:0.5):1.2) cat"
    assert {ablate(A, 1, mode).seed for mode in ABLATIONS} == {A.seed}
    with pytest.raises(UserError, match="no word 'green'"):
        ablate(A, "green", "removed")
    with pytest.raises(UserError, match="weight such as 0, 0.5 or 1.5"):
        ablate(A, 1, "half")

    removed = explain(manager, ablate(A, "red", "removed"))
    assert [w.text for w in words_of(removed.tokens) if not w.special] == ["a", "cat", "on", "a", "dog"]
    shifts = {s.word: s for s in attention_shift(run_a, removed)}
    assert shifts["red"].index_b is None and shifts["red"].shift is None
    assert shifts["cat"].shift > 0  # every other word's attention moves when one is gone

    zero = explain(manager, ablate(A, "red", "0"))
    assert zero.tokens == run_a.tokens  # reweighting keeps the tokens, and changes what they mean
    assert x0_difference(run_a, zero)[-1] > 0
    maps = Comparison(run_a, zero).change_maps()
    assert len(maps) == 6 and all(image.size == (128, 128) for image, _ in maps)


def replace_prompt(request: GenerationRequest, prompt: str) -> GenerationRequest:
    return validated(GenerationRequest(**{**request.__dict__, "prompt": prompt}))


API_A = ("a red cat on a dog", "", "Euler", 3, 4, 11, 64, 64, "Automatic")


def test_api_compare_and_ablate_return_both_images_and_a_summary(client):
    images, difference, summary = client.predict(*API_A, "CFG scale", "8", api_name="/compare")
    assert len(images) == 2 and all(Image.open(path).size == (64, 64) for path in images)
    assert Image.open(difference).size == (64, 64)
    assert summary["a"]["seed"] == summary["b"]["seed"] == 11
    assert (summary["a"]["guidance_scale"], summary["b"]["guidance_scale"]) == (4.0, 8.0)
    assert len(summary["x0_difference"]) == 3 and summary["x0_difference"][-1] > 0

    images, _, summary = client.predict(*API_A, "red", "1", api_name="/ablate")
    assert summary["b"]["prompt"] == "a (red:1) cat on a dog"
    assert np.array_equal(np.asarray(Image.open(images[0])), np.asarray(Image.open(images[1])))
    assert summary["pixel_difference"]["mean"] == 0 and summary["split_step"] is None

    _, _, summary = client.predict(*API_A, "cat", "removed", api_name="/ablate")
    assert summary["b"]["prompt"] == "a red on a dog"
    assert [w["word_b"] for w in summary["words"]] == ["a", "red", None, "on", "a", "dog"]


BAD_INPUT = [
    ("/compare", ("Word", "green -> blue"), "no word 'green' to swap"),
    ("/compare", ("Width", "128"), "B may differ in one of"),
    ("/compare", ("Steps", "1000"), "steps must be between 1 and 150"),
    ("/ablate", ("green", "removed"), "no word 'green' to ablate"),
    ("/ablate", ("red", "lots"), "weight such as 0, 0.5 or 1.5"),
]


def test_api_bad_input_is_a_clear_error_and_the_server_keeps_serving(client):
    from gradio_client.exceptions import AppError

    for endpoint, extra, message in BAD_INPUT:
        with pytest.raises(AppError, match=re.escape(message)) as raised:
            client.predict(*API_A, *extra, api_name=endpoint)
        assert "/" not in str(raised.value).replace("->", "")  # no server path
    assert client.predict(*API_A, "Seed", "12", api_name="/compare")[2]["b"]["seed"] == 12


def test_cancel_stops_a_comparison_and_frees_the_model(client):
    long = ("a red cat", "", "Euler", 150, 4, 1, 768, 768, "Automatic", "CFG scale", "8")
    job = client.submit(*long, api_name="/compare")
    deadline = time.monotonic() + 60
    while job.status().code.name not in ("PROGRESS", "ITERATING") and time.monotonic() < deadline:
        time.sleep(0.05)
    job.cancel()
    started = time.monotonic()
    assert client.predict(*API_A, "Seed", "3", api_name="/compare")[2]["b"]["seed"] == 3
    assert time.monotonic() - started < 45  # not after two runs of 150 steps at 768²


def test_an_ablation_reuses_the_a_just_compared_only_when_a_is_unchanged(run_a):
    from sdplay.compare.ui import Recorded

    recorded = Recorded(A, run_a)
    assert recorded.matches(A)
    assert recorded.matches(replace(A, seed=-1))  # a random seed: the one A was given
    assert not recorded.matches(replace(A, seed=8))
    assert not recorded.matches(replace(A, guidance_scale=5.0))


def test_compare_and_ablate_take_the_explain_parameters_and_their_own(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = {name: [p["parameter_name"] for p in endpoints[name]["parameters"]] for name in endpoints}
    assert names["/compare"] == [*names["/explain"], "differs_in", "b_value"]
    assert names["/ablate"] == [*names["/explain"], "word", "mode"]
    images, _, summary = client.predict(
        prompt="a red cat", negative_prompt="", sampler="Euler", steps=2, guidance_scale=4, seed=2, width=64,
        height=64, schedule="Automatic", word="cat", mode="0.5", api_name="/ablate",
    )  # fmt: skip
    assert summary["b"]["prompt"] == "a red (cat:0.5)" and len(images) == 2


def test_the_tabs_handlers_are_plain_functions_of_the_settings_by_name():
    import gradio as gr

    from sdplay.compare.ui import A_SETTINGS, ab_requests, draw, preset_pair, prompt_word_choices, sent_settings
    from sdplay.runtime.request import Limits

    settings = dict(zip(A_SETTINGS, API_A, strict=True))
    a, b, _ = ab_requests(Limits(), differs_in="CFG scale", b_value="8", **settings)
    assert (a.prompt, a.seed, a.schedule) == ("a red cat on a dog", 11, "Automatic")
    assert fields_that_differ(a, b) == {"guidance_scale"} and b.guidance_scale == 8.0

    *sent, schedule, tabs = sent_settings(**{**settings, "schedule": "Karras"})  # Explain → Compare's A
    assert tuple(sent) == API_A[:8]
    assert schedule.value == "Karras" and ("Karras", "Karras") in schedule.choices and tabs.selected == "compare"

    assert preset_pair("SD: red vs blue") == ("a photo of a red car on a street", "Word", "red -> blue", gr.skip())
    assert preset_pair("SD: CFG 1 vs 4")[1:] == ("CFG scale", "4", 1.0)  # A's CFG scale is set too
    assert preset_pair(None) == (gr.skip(),) * 4 == draw(None, 1, None)
    words = prompt_word_choices("a red a")
    assert (words.choices, words.value) == ([("a (1)", 0), ("red (2)", 1), ("a (3)", 2)], 0)
    assert prompt_word_choices("").value is None
