"""The Explain view's panels, drawn from real captured runs on the tiny model: sizes, word maps, scales, replay."""

import re
import threading
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from bench.handmade import synthetic_run
from sdplay.explain.captions import ModelFacts, captions
from sdplay.explain.capture import explain
from sdplay.explain.decoding import MAX_DECODED, Decoded, DecodeRequest, decode_latents, decode_order, vae_decode
from sdplay.explain.export import save_run
from sdplay.explain.render import (
    CHART_SIZE,
    CHOSEN_COLOUR,
    COLORMAPS,
    GRID_COLOUR,
    LABEL_COLOUR,
    OTHER_COLOUR,
    ExplainView,
    HeatmapSettings,
    Word,
    chart_area,
    content_word,
    dropped_text,
    guidance_brightness,
    label_rows,
    replay_view,
    words_of,
)
from sdplay.explain.ui import step_sliders
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobControl
from sdplay.runtime.request import GenerationRequest, Task

STEPS = 4
# The tiny tokenizer knows "red" and "cat" as words; "sitting" falls apart into letters.
REQUEST = GenerationRequest(prompt="a red cat sitting", negative_prompt="dog", sampler="Euler", steps=STEPS, seed=3)


@pytest.fixture(scope="module")
def run(manager):
    return explain(manager, REQUEST)


@pytest.fixture(scope="module")
def view(run) -> ExplainView:
    return ExplainView(run)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def word_index(view: ExplainView, text: str) -> int:
    return next(i for i, w in enumerate(view.words) if w.text == text)


def test_panels_have_the_right_sizes(view, run):
    assert run.image.shape == (64, 64, 3)
    assert view.size == (256, 256)  # small images are drawn larger, by a whole factor
    panels = view.draw(1, HeatmapSettings(word=word_index(view, "cat")))
    for image in (panels[name] for name in ("x_t", "x0", "eps_uncond", "eps_cond", "guidance", "heatmap")):
        assert image.size == (256, 256) and image.mode == "RGB"
    channels, (_, h, w) = run.latents.shape[1], run.latents.shape[1:]
    zoom = 128 // w
    assert panels["channels"].size == (channels * (w * zoom + 4) - 4, 2 * h * zoom + 4)
    assert [caption for _, caption in panels["layers"]] == ["down 4×4", "mid 4×4", "up 4×4", "average 8×8"]
    assert all(tile.size == (128, 128) for tile, _ in panels["layers"] + panels["negative"])
    assert [label for _, label in panels["negative"]] == ["⟨start⟩", "dog", "⟨end⟩"]
    assert panels["blended"] is None and view.mask() is None
    assert panels["label"].startswith("**Step 2 of 4** · t = ")


def test_heatmap_changes_with_the_word_and_the_step(view):
    cat, red = word_index(view, "cat"), word_index(view, "red")
    at = {(w, s): pixels(view.heatmap(s, HeatmapSettings(word=w))[0]) for w in (cat, red) for s in (0, STEPS - 1)}
    assert not np.array_equal(at[cat, 0], at[red, 0])
    assert not np.array_equal(at[cat, 0], at[cat, STEPS - 1])
    # Redrawing is deterministic: the same settings give the same pixels.
    assert np.array_equal(at[cat, 0], pixels(view.heatmap(0, HeatmapSettings(word=cat))[0]))


def test_per_word_and_shared_scales_differ(view):
    cat = word_index(view, "cat")
    own, own_bar = view.heatmap(2, HeatmapSettings(word=cat))
    shared, shared_bar = view.heatmap(2, HeatmapSettings(word=cat, shared=True))
    assert not np.array_equal(pixels(own), pixels(shared))
    assert "own min–max" in own_bar and "shared by all words" in shared_bar
    # Shared: one top for all words, the largest value of any of them.
    maps = view.word_maps(2, HeatmapSettings())
    real = [i for i, w in enumerate(view.words) if not w.special]
    assert f"{maps[real].max():.3f}" in shared_bar


def test_step_range_sums_the_steps(view):
    cat = word_index(view, "cat")
    single = view.word_maps(1, HeatmapSettings(word=cat))
    assert np.array_equal(view.word_maps(3, HeatmapSettings(word=cat, steps=(1, 1))), single)
    summed = view.word_maps(0, HeatmapSettings(word=cat, steps=(0, STEPS - 1)))
    each = sum(view.word_maps(s, HeatmapSettings(word=cat)) for s in range(STEPS))
    np.testing.assert_allclose(summed, each, rtol=1e-5)


def test_opacity_and_colormap_change_the_overlay(view):
    cat = word_index(view, "cat")
    base = pixels(view.heatmap(1, HeatmapSettings(word=cat))[0])
    assert np.array_equal(pixels(view.heatmap(1, HeatmapSettings(word=cat, opacity=0))[0]), pixels(view.image))
    for colormap in set(COLORMAPS) - {"viridis"}:
        assert not np.array_equal(pixels(view.heatmap(1, HeatmapSettings(word=cat, colormap=colormap))[0]), base)


def test_subwords_merge_into_words(view, run):
    assert [w.label for w in view.words] == ["⟨start⟩", "a", "red", "cat", "sitting", "⟨end⟩"]
    sitting = view.words[word_index(view, "sitting")]
    assert [run.tokens[p] for p in sitting.tokens] == ["s", "i", "t", "t", "i", "n", "g</w>"]
    table = view.subword_table().splitlines()
    assert "| sitting | `s` · `i` · `t` · `t` · `i` · `n` · `g</w>` | 4–10 |" in table
    # The start token's own "|"s are escaped: each row keeps its three cells (issue 23).
    assert table[2] == "| ⟨start⟩ | `<\\|startoftext\\|>` | 0 |"
    assert all(len(re.split(r"(?<!\\)\|", row)) == 5 for row in table)
    # Byte-level BPE: "é" is two bytes spelled as two characters, and must come back as one letter.
    tokens = ["<|startoftext|>", "caf", "Ã©</w>", "au", "lait</w>", "<|endoftext|>"]
    assert words_of(tokens) == [
        Word("start", (0,), special=True),
        Word("café", (1, 2)),
        Word("aulait", (3, 4)),
        Word("end", (5,), special=True),
    ]


def test_the_75_token_limit_is_shown(view):
    assert view.token_summary().startswith("10 of 75 prompt tokens used")
    # A prompt of two chunks: a start and an end token around each, nothing cut.
    start, end = "<|startoftext|>", "<|endoftext|>"
    assert words_of([start, "cat</w>", "a", end, start, "dog</w>", end]) == [
        Word("start", (0,), special=True),
        Word("cat", (1,)),
        Word("a", (2,)),  # a word cut by the end of its chunk
        Word("end", (3,), special=True),
        Word("start", (4,), special=True),
        Word("dog", (5,)),
        Word("end", (6,), special=True),
    ]
    prompt = " ".join(["cat"] * 80)
    tokens = ["<|startoftext|>", *["cat</w>"] * 75, "<|endoftext|>"]
    words = words_of(tokens)
    assert len(words) == 77
    assert dropped_text(prompt, words) == " ".join(["cat"] * 5)
    assert dropped_text("something else entirely", words) == ""  # no match: say nothing rather than guess


def test_timeline_and_budget(view):
    timeline = view.timeline
    assert list(timeline.columns) == ["step", "word", "mass", "concentration"]
    assert set(timeline.word) == {"a", "red", "cat", "sitting"}
    assert sorted(set(timeline.step)) == list(range(1, STEPS + 1))
    assert timeline.mass.between(0, 1).all() and timeline.concentration.between(0, 1).all()
    budget = view.budget
    assert list(budget.columns) == ["step", "part", "share"]
    assert set(budget.part) == {"start token", "words", "end + padding"}
    np.testing.assert_allclose(budget.groupby("step").share.sum(), 1, atol=2e-3)  # fp16 maps
    # The words' part of the budget is the sum of the words' masses.
    words = budget[budget.part == "words"].set_index("step").share
    np.testing.assert_allclose(timeline.groupby("step").mass.sum(), words, atol=1e-6)


def test_export_round_trips_into_the_view(view, run, tmp_path):
    replayed = replay_view(save_run(run, tmp_path / "run.safetensors"))
    assert replayed.words == view.words and replayed.run.recipe == run.recipe
    for step in range(STEPS):
        for settings in (HeatmapSettings(word=3), HeatmapSettings(word=2, shared=True, steps=(0, step))):
            original, again = view.draw(step, settings), replayed.draw(step, settings)
            for name, value in original.items():
                other = again[name]
                if isinstance(value, Image.Image):
                    assert np.array_equal(pixels(value), pixels(other)), name
                elif isinstance(value, list):
                    assert [c for _, c in value] == [c for _, c in other], name
                    pairs = zip(value, other, strict=True)
                    assert all(np.array_equal(pixels(a), pixels(b)) for (a, _), (b, _) in pairs), name
                else:
                    assert value == other, name
    assert view.timeline.equals(replayed.timeline) and view.budget.equals(replayed.budget)


def test_x0_can_be_decoded_with_the_vae_and_is_kept(run, manager):
    view = ExplainView(run)  # its own: decoding changes what the view draws
    decoded: list[Decoded] = []
    request = DecodeRequest(run.recipe.model, (1,), run.x0[[1]])
    assert decode_latents(manager, request, control=JobControl(on_step=decoded.append)) == 1 and decoded[0].step == 1
    view.keep_decoded(1, decoded[0].image)
    assert view.x0(1).size == view.size and not np.array_equal(pixels(view.x0(1)), pixels(ExplainView(run).x0(1)))
    assert np.array_equal(pixels(view.draw(1, HeatmapSettings())["x0"]), pixels(view.x0(1)))
    # Euler's last step lands exactly on x̂₀, so its decode is the final image.
    last = np.asarray(vae_decode(manager.model.pipe.vae, run.x0[-1]), dtype=int)
    assert np.abs(last - run.image).max() <= 1


def test_a_broken_upload_is_a_user_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError):
        replay_view(junk)


def test_without_guidance_there_is_no_negative_branch(manager):
    request = GenerationRequest(prompt="a cat", sampler="Euler", steps=2, seed=1, guidance_scale=1)
    panels = ExplainView(explain(manager, request)).draw(0, HeatmapSettings())
    assert panels["negative"] == [] and "no guidance" in panels["eps_note"]
    assert (pixels(panels["eps_uncond"]) == 128).all() and (pixels(panels["guidance"]) == 128).all()  # grey: zero


def test_img2img_says_where_strength_starts_the_schedule(manager):
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    request = GenerationRequest(
        task=Task.IMG2IMG, prompt="a red cat", sampler="Euler", steps=4, seed=1, image=source, strength=0.5
    )
    view = ExplainView(explain(manager, request))
    assert view.run.steps == 2 and view.run.first_step == 2
    assert "strength 0.5 starts the 4-step schedule at step 3: this is schedule step 4 of 4" in view.step_label(1)


def test_plms_labels_count_the_requested_steps_and_survive_a_replay(manager, tmp_path):
    """PLMS runs n + 1 UNet calls for n steps; the slider and its label count the n steps."""
    view = ExplainView(explain(manager, GenerationRequest(prompt="a red cat", sampler="PLMS", steps=5, seed=1)))
    labels = [view.step_label(step) for step in range(view.run.steps)]
    assert labels[0].startswith("**Step 1 of 5**") and labels[-1].startswith("**Step 5 of 5**")
    assert not any("None" in label or "strength" in label for label in labels)  # text-to-image has no strength
    assert "5 steps" in view.summary() and "6 UNet calls" in view.summary()
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    request = GenerationRequest(
        task=Task.IMG2IMG, prompt="a red cat", sampler="PLMS", steps=8, seed=1, image=source, strength=0.5
    )
    view = ExplainView(explain(manager, request))
    assert view.run.steps == 4
    assert view.step_label(0).startswith("**Step 1 of 4**")
    assert "strength 0.5 starts the 8-step schedule at step 5: this is schedule step 8 of 8" in view.step_label(3)
    replayed = replay_view(save_run(view.run, tmp_path / "plms.safetensors"))
    assert [replayed.step_label(s) for s in range(4)] == [view.step_label(s) for s in range(4)]


def test_a_text_to_image_label_never_names_a_strength(run):
    """Even a run whose steps fall short of its recipe (an old file) says nothing of a strength it did not have."""
    label = ExplainView(replace(run, first_step=-1)).step_label(0)
    assert "strength" not in label and "None" not in label


def test_inpaint_shows_the_mask_and_the_blend(manager):
    source = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64))
    mask.paste(255, (0, 0, 32, 64))
    request = GenerationRequest(
        task=Task.INPAINT,
        prompt="a cat",
        sampler="Euler",
        steps=3,
        seed=1,
        image=source,
        mask=mask,
        mask_blur=0,
        strength=1,
    )
    view = ExplainView(explain(manager, request))
    shown = pixels(view.mask())
    assert view.mask().size == view.size and shown[:, :100].min() == 255 and shown[:, 160:].max() == 0
    assert view.draw(0, HeatmapSettings())["blended"].size == view.size


def test_the_guidance_note_says_brighter_dimmer_or_true_scale():
    assert guidance_brightness(5.0) == "drawn ×5.0 brighter than the ε panels"
    assert guidance_brightness(0.2) == "drawn ×5.0 dimmer than the ε panels"  # not "×0.2 brighter"
    for gain in (1.0, 1.04, 0.96):  # would print as ×1.0
        assert guidance_brightness(gain) == "drawn at true scale (the ε panels' scale)"
    assert guidance_brightness(1.06) == "drawn ×1.1 brighter than the ε panels"


def test_the_eps_note_uses_the_guidance_wording(view):
    notes = [view.noise(step)[3] for step in range(STEPS)]
    assert all(any(w in note for w in ("brighter than", "dimmer than", "at true scale")) for note in notes), notes


def words(prompt: str) -> list[Word]:
    """A prompt split at spaces, with commas as words of their own, framed by the start and end tokens."""
    texts = prompt.replace(",", " , ").split()
    return [Word("start", (0,), True), *(Word(t, (i + 1,)) for i, t in enumerate(texts)), Word("end", (99,), True)]


@pytest.mark.parametrize(
    ("prompt", "first"),
    [
        ("a large red circle on the left on a gray background", "circle"),
        ("a watercolor painting of a lighthouse", "painting"),
        ("a red cat", "cat"),
        ("a small blue square", "square"),
        ("photo of an astronaut riding a horse", "photo"),
        ("portrait, oil painting", "portrait"),
        ("in a garden a cat sits", "garden"),
        ("a very large dog", "dog"),
        ("a cat is sleeping", "cat"),
        ("the the", "the"),  # no content word: the first real word
    ],
)
def test_the_first_word_shown_is_the_head_of_the_first_noun_phrase(prompt, first):
    listed = words(prompt)
    assert listed[content_word(listed)].text == first


def test_an_empty_prompt_starts_on_the_start_token():
    assert content_word(words("")) == 0


def test_chips_show_weights_and_chunks_and_the_summary_the_schedule(manager):
    request = GenerationRequest(prompt="a (red:1.3) [cat|dog] BREAK dog", sampler="Euler", steps=2, seed=1)
    view = ExplainView(explain(manager, request))
    labels = [label for label, _ in view.chips()]
    assert labels == ["⟨start⟩", "a", "red ×1.3", "cat", "⟨end⟩", "⟨start⟩ (2)", "dog", "⟨end⟩ (2)"]
    summary = view.token_summary()
    assert summary.startswith("4 prompt tokens in 2 chunks of up to 75")
    assert "changes during the run (to step 1: “a (red:1.3) cat BREAK dog”; to step 2: “a (red:1.3) dog" in summary


def test_captions_state_the_tiny_models_numbers(view, manager):
    tokenizer = manager.model.pipe.tokenizer
    facts = ModelFacts(vae_factor=8, latent_channels=4, text_positions=77, embedding_size=16, vocabulary=len(tokenizer))
    assert view.facts == facts == ModelFacts.of_pipeline(manager.model.pipe)
    texts = captions(view.facts)
    assert "each 8×8 patch of pixels into 4 numbers" in texts["x_t"].more
    assert "*token embedding* (16 numbers in this model)" in texts["tokens"].more
    assert f"vocabulary of {len(tokenizer):,}:" in texts["tokens"].more
    assert "padded to 77 positions, so it reads 75 tokens at a time" in texts["tokens"].more
    assert not any("{" in c.short + c.more for c in texts.values())  # every template filled


@pytest.fixture(scope="module")
def shapes_view(shapes) -> ExplainView:
    return ExplainView(explain(shapes, GenerationRequest(prompt="a red circle", sampler="Euler", steps=2, seed=1)))


def test_captions_state_the_bundled_models_numbers(shapes_view, tmp_path):
    facts = ModelFacts(vae_factor=4, latent_channels=4, text_positions=77, embedding_size=64, vocabulary=606)
    assert shapes_view.facts == facts
    texts = captions(replay_view(save_run(shapes_view.run, tmp_path / "run.safetensors")).facts)
    assert "each 4×4 patch of pixels into 4 numbers" in texts["x_t"].more and "8×8" not in texts["x_t"].more
    assert "covering a 4×4 patch of pixels" in texts["channels"].more
    assert "(64 numbers in this model)" in texts["tokens"].more and "vocabulary of 606:" in texts["tokens"].more
    assert "768" not in texts["tokens"].more and "49,000" not in texts["tokens"].more
    # A run saved before the facts were recorded: the VAE's come from its shapes, the text encoder's are SD's.
    old = ExplainView(replace(shapes_view.run, recipe=replace(shapes_view.run.recipe, model_facts=None))).facts
    assert old == ModelFacts(vae_factor=4, latent_channels=4)
    assert "(768 numbers for SD 1.x)" in captions(old)["tokens"].more


def test_timeline_chart_highlights_the_chosen_word_and_greys_the_rest(view):
    cat = word_index(view, "cat")
    chart = view.timeline_chart("concentration", cat)
    assert chart.size == CHART_SIZE
    shown = pixels(chart)
    values = {w: rows.concentration.to_numpy() for w, rows in view.timeline.groupby("word")}
    area = chart_area(STEPS, view.timeline.concentration.max())

    def colour(x: int, y: int) -> tuple:
        return tuple(int(c) for c in shown[y, x])

    for step, value in enumerate(values["cat"]):
        assert colour(area.x(step), area.y(value)) == CHOSEN_COLOUR
    apart = [
        (area.x(step), area.y(value))
        for word, series in values.items()
        if word != "cat"
        for step, value in enumerate(series)
        if abs(area.y(value) - area.y(values["cat"][step])) > 4  # not under the chosen word's thick line
    ]
    assert apart and all(colour(x, y) == OTHER_COLOUR for x, y in apart)
    # Inside the plot: only the background, the grid, grey lines and the chosen line.
    inside = shown[area.top : area.bottom - 2, area.left + 3 : area.right - 4].reshape(-1, 3)
    assert {tuple(int(c) for c in p) for p in np.unique(inside, axis=0)} <= {
        (255, 255, 255),
        GRID_COLOUR,
        OTHER_COLOUR,
        CHOSEN_COLOUR,
    }
    # Labels at the right: the chosen word's in its colour, the others in grey.
    margin = shown[:, area.right + 26 :].reshape(-1, 3)
    assert (margin == CHOSEN_COLOUR).all(-1).sum() > 20 and (margin == LABEL_COLOUR).all(-1).sum() > 20
    # Another word: another chart, with that word's line in colour.
    red = pixels(view.timeline_chart("concentration", word_index(view, "red")))
    assert not np.array_equal(red, shown)
    assert tuple(red[area.y(values["red"][1]), area.x(1)]) == CHOSEN_COLOUR


def test_line_labels_keep_apart_and_the_chosen_one_always_shows():
    ends = {"a": 100, "b": 101, "c": 102, "d": 300}
    rows = label_rows(ends, "b", gap=20, span=(50, 350))
    assert set(rows) == set(ends) and rows["d"] == 300  # room for all: every line named, near its end
    placed = sorted(rows.values())
    assert all(b - a >= 20 for a, b in zip(placed, placed[1:], strict=False))
    assert all(50 <= y <= 350 for y in placed)
    crowded = {f"w{i}": 100 + i for i in range(40)}  # more labels than rows: the chosen one still shows
    rows = label_rows(crowded, "w17", gap=20, span=(50, 350))
    assert rows["w17"] == 117 and len(rows) < len(crowded)


def test_words_are_summed_over_their_tokens(view):
    sitting = word_index(view, "sitting")
    tokens = list(view.words[sitting].tokens)
    assert len(tokens) > 1  # split into letters by the tiny tokenizer
    maps = view.word_maps(2, HeatmapSettings())
    np.testing.assert_allclose(maps[sitting], view._maps[2, tokens].sum(0), rtol=1e-6)
    assert len(maps) == len(view.words)


def test_many_words_cost_no_words_by_tokens_matrix():
    """10k one-token words once cost +393 MB: a dense [words, tokens] matrix. Memory now grows with the tokens."""
    run = synthetic_run(tokens=5_002)  # what a file could hold before tokens were capped at 77
    tracemalloc.start()
    try:
        view = ExplainView(run)
        rows = len(view.timeline)
        view.draw(0, HeatmapSettings(word=1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows == 5_000 and peak < 20 * 2**20  # the matrix alone was 100 MB


def test_decoding_stops_between_steps_on_stop_and_is_capped(run, manager):
    cancel, decoded = threading.Event(), []

    def stop_after_the_second(item: Decoded) -> None:
        decoded.append(item.step)
        if len(decoded) == 2:
            cancel.set()  # Stop pressed while the second step decodes

    steps = decode_order(run.steps, 2)
    request = DecodeRequest(run.recipe.model, tuple(steps), run.x0[steps])
    assert decode_latents(
        manager, request, control=JobControl(cancel=cancel, on_step=stop_after_the_second)
    ) == 2 and decoded == [2, 0]
    with pytest.raises(UserError, match="did not make this run"):
        decode_latents(manager, DecodeRequest("another model", (0,), run.x0[:1]))
    with pytest.raises(UserError, match="at most 30"):
        decode_latents(manager, DecodeRequest(run.recipe.model, tuple(range(31)), run.x0[[0] * 31]))
    # The step on screen first, then the others; a long run decodes `limit` steps spread over it.
    assert decode_order(4, 2, MAX_DECODED) == [2, 0, 1, 3]
    order = decode_order(150, 57, MAX_DECODED)
    assert order[0] == 57 and len(set(order)) == len(order) == MAX_DECODED and {0, 149} <= set(order)


def test_a_one_step_run_records_draws_and_replays(manager, tmp_path):
    """SD-Turbo's normal use. Gradio refuses a slider from 1 to 1: the step sliders are hidden instead."""
    run = explain(manager, GenerationRequest(prompt="a red cat", sampler="Euler", steps=1, seed=3))
    replayed = replay_view(save_run(run, tmp_path / "one.safetensors"))
    assert run.steps == replayed.run.steps == 1
    panels = replayed.draw(0, HeatmapSettings(word=2))
    assert panels["label"].startswith("**Step 1 of 1**") and panels["heatmap"].size == replayed.size
    assert replayed.timeline_chart("mass", 2).size == CHART_SIZE and len(replayed.budget) == 3
    scrubber, first, last = step_sliders(1)
    assert not any(s.visible for s in (scrubber, first, last)) and scrubber.value == first.value == last.value == 1
    scrubber, first, last = step_sliders(5)
    assert all(s.visible for s in (scrubber, first, last)) and (scrubber.maximum, scrubber.value, first.value) == (
        5,
        5,
        1,
    )


def test_the_run_summary_names_a_schedule_type_that_is_not_the_samplers_own(manager):
    karras = ExplainView(explain(manager, GenerationRequest(prompt="cat", sampler="Euler", schedule="Karras", steps=2)))
    assert "Text-to-Image · Euler · Karras · 2 steps" in karras.summary()
    automatic = ExplainView(explain(manager, GenerationRequest(prompt="cat", sampler="Euler", steps=2)))
    assert "Text-to-Image · Euler · 2 steps" in automatic.summary()
