"""The guided lesson: its data file (every stage in every language), its presets on the bundled model, every stage
drawn from a replayed file without its model, the "try this" comparisons, and its pictures against the model."""

import re
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from sdplay.compare.comparison import FIELDS, variant
from sdplay.explain.capture import explain
from sdplay.explain.decoding import vae_decode
from sdplay.explain.export import save_run
from sdplay.explain.render import FUNCTION_WORDS, ExplainView, replay_view
from sdplay.lesson.pictures import causal_reads, skip_pairs, value_counts
from sdplay.lesson.stages import (
    EXPLAIN,
    NEEDS,
    STAGES,
    LessonView,
    Moment,
    ask,
    draw_stage,
    language,
    lesson_data,
    lesson_view,
    preset_for,
    presets,
    run_request,
    setup_request,
    text,
    translations,
    try_setup,
)
from sdplay.lesson.ui import SENT, try_this
from sdplay.runtime.samplers import AUTOMATIC

UI = Path(__file__).resolve().parent.parent / "sdplay" / "lesson" / "ui.py"


@pytest.fixture(scope="module")
def recorded(shapes) -> LessonView:
    """The lesson's run on the bundled model, from its preset, with the model loaded and asked its questions."""
    model = shapes.model
    preset = preset_for(model.settings.vocabulary)
    run = explain(shapes, preset.request(model.settings, model.native_size))
    return ask(shapes, lesson_view(ExplainView(run), model.name, model.pipe.tokenizer, preset))


@pytest.fixture(scope="module")
def replayed(recorded, tmp_path_factory) -> LessonView:
    """The same run saved and replayed on a server whose model is another one: the file alone."""
    path = save_run(recorded.run, tmp_path_factory.mktemp("lesson") / "lesson.safetensors")
    return ask(None, lesson_view(replay_view(path), loaded_model="some-other-model"))  # asks nothing


@pytest.fixture(scope="module")
def older(recorded, tmp_path_factory) -> LessonView:
    """A file saved before sdplay recorded the prompt's ids and embeddings, replayed without its model."""
    run = replace(recorded.run, token_ids=None, token_embeddings=None, text_embeddings=None)
    path = save_run(run, tmp_path_factory.mktemp("lesson") / "older.safetensors")
    return lesson_view(replay_view(path), loaded_model="some-other-model")


def needed_keys() -> set[str]:
    """Every text the stages and the Lesson tab ask for."""
    keys = set()
    for stage in STAGES:
        keys |= {f"stage_{stage.id}_{part}" for part in ("title", "text", "try")}
        for panel in stage.panels:
            while panel is not None:  # the panel and each fallback it may show instead
                keys |= {f"panel_{panel.name}", f"panel_{panel.name}_caption"}
                panel = panel.fallback
    keys |= {text for _, text in NEEDS.values()}
    keys |= set(re.findall(r"""\b(?:t|text)\(["'](\w+)["']""", UI.read_text(encoding="utf-8")))
    return keys


def test_the_data_file_has_every_stage_in_every_language_with_the_same_keys() -> None:
    texts = translations()
    assert "en" in texts and len(texts) >= 2  # English and at least one more language
    english = set(texts["en"])
    assert len(STAGES) == 10
    missing = needed_keys() - english
    assert not missing, missing
    assert english - needed_keys() == set()  # no text that nothing shows
    for code, language_texts in texts.items():
        assert set(language_texts) == english, code
        empty = [key for key, value in language_texts.items() if not value.strip()]
        assert not empty, (code, empty)
    # The other languages are translations, not copies: every text a student reads differs from the English.
    for code in set(texts) - {"en"}:
        same = [key for key in english if texts[code][key] == texts["en"][key] and not key.startswith("panel_eps_pair")]
        assert same == [], (code, same)


def test_the_bundled_model_gets_its_preset_and_the_lesson_starts_on_a_content_word(shapes, recorded) -> None:
    model = shapes.model
    preset = preset_for(model.settings.vocabulary)
    assert preset.name == "shapes" and preset.closed_vocabulary
    assert set(re.findall(r"[a-z]+", preset.prompt)) <= set(model.settings.vocabulary)  # words the model knows
    request = preset.request(model.settings, model.native_size)
    assert (request.steps, request.guidance_scale, request.seed, request.width) == (12, 4.0, 1, 64)
    assert request.sampler == model.settings.sampler  # what the preset leaves out is the model's recommended one

    run = recorded.run
    assert run.recipe.seed == 1 and run.steps == 12 and run.image.shape == (64, 64, 3)
    word = recorded.view.words[recorded.start.word]
    assert word.text == "circle" and word.text not in FUNCTION_WORDS
    assert recorded.start.step == run.steps - 1
    assert recorded.preset == preset  # the run is the preset's: its "try this" values fit its prompt


def test_an_open_vocabulary_model_gets_the_stable_diffusion_preset(manager) -> None:
    """The tiny random model of conftest knows every word (no vocabulary list), as SD 1.5 does."""
    preset = preset_for(())
    assert preset.name == "stable-diffusion" and not preset.closed_vocabulary
    assert (preset.steps, preset.guidance_scale, preset.seed) == (25, 7.0, 42)
    assert preset_for(("a", "cat")) == preset  # a closed vocabulary without the shapes preset's words
    model = manager.model
    request = replace(preset.request(model.settings, model.native_size), steps=2)  # fast on the CPU
    view = ExplainView(explain(manager, request))
    assert view.words[lesson_view(view, model.name).start.word].text == "fox"


def drawn_everywhere(lesson: LessonView) -> dict[str, tuple[list[str], str | None]]:
    """Draw every stage at the first and last step with two words; check each panel is a picture. Returns, per
    stage, the panels shown and what the stage said was missing."""
    steps = lesson.run.steps
    words = [i for i, w in enumerate(lesson.view.words) if not w.special]
    shown_panels = {}
    for stage in STAGES:
        for moment in (Moment(0, words[0]), Moment(steps - 1, lesson.start.word)):
            shown = draw_stage(stage, lesson, moment)
            assert 1 <= len(shown.images) <= 2
            for panel, image in zip(shown.panels, shown.images, strict=True):
                pixels = np.asarray(image.convert("RGB"))
                assert min(image.size) >= 64, (stage.id, panel.name, image.size)
                assert pixels.std() > 1, (stage.id, panel.name)  # a picture, not an empty panel
        shown_panels[stage.id] = ([panel.name for panel in shown.panels], shown.missing)
    return shown_panels


def test_with_its_model_the_lesson_shows_every_stage_in_full(recorded: LessonView) -> None:
    shown = drawn_everywhere(recorded)
    assert all(missing is None for _, missing in shown.values()), shown
    assert [panels for panels, _ in shown.values()] == [[panel.name for panel in s.panels] for s in STAGES]


def test_a_replayed_file_drives_every_stage_without_its_model(replayed: LessonView) -> None:
    assert not replayed.model_loaded and replayed.preset is None
    assert replayed.token_ids == replayed.run.token_ids.tolist()  # the file's own ids
    shown = drawn_everywhere(replayed)
    # What needs the model (its vocabulary's nearest tokens, the live causal test) says so and shows the file's
    # similarities and movement instead; everything else is the file's.
    assert shown["token_embeddings"] == (["static", "similarity"], "lesson_needs_model")
    assert shown["contextual"] == (["causal", "movement"], "lesson_needs_model")
    assert shown["unet"] == (["eps", "levels"], "lesson_needs_model")  # the recorded ε and attention per block
    assert shown["self_attention"] == (["positions", "heatmap"], "lesson_needs_model")
    assert {stage for stage, (_, missing) in shown.items() if missing} == {
        "token_embeddings", "contextual", "unet", "self_attention",
    }  # fmt: skip


def test_an_older_file_without_embeddings_still_gives_every_stage(older: LessonView) -> None:
    assert older.embeddings is None and older.token_ids is None
    shown = drawn_everywhere(older)
    assert shown["tokens"] == (["tokens"], "lesson_needs_model")  # the ids need the model's tokenizer
    assert shown["token_embeddings"] == (["tokens", "tokens"], "lesson_needs_model")
    assert shown["contextual"][0] == ["causal", "tokens"]


def test_with_its_model_loaded_the_lesson_asks_it(shapes, recorded) -> None:
    """The ids are the tokenizer's; the nearest tokens are the embedding table's (cosine, computed here again)."""
    tokenizer = shapes.model.pipe.tokenizer
    expected = tokenizer(recorded.run.recipe.prompt).input_ids  # start, the prompt's tokens, end
    assert recorded.token_ids == expected
    table = shapes.model.pipe.text_encoder.get_input_embeddings().weight.detach().float()
    circle = next(item for item in recorded.neighbours if item.token == "circle</w>")
    unit = table / table.norm(dim=1, keepdim=True)
    similarity = unit @ unit[tokenizer.convert_tokens_to_ids("circle</w>")]
    for name, score in circle.nearest:
        assert score == pytest.approx(float(similarity[tokenizer.convert_tokens_to_ids(name)]), abs=1e-5)
    scores = [score for _, score in circle.nearest]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5
    assert recorded.causal is not None and recorded.causal.causal  # the live test: CLIP reads left to right
    # One UNet call at the UNet stage's step reproduces the recorded noise prediction there.
    step = next(stage for stage in STAGES if stage.id == "unet").step_at(recorded.run.steps) - 1
    assert recorded.inside.step == step
    torch.testing.assert_close(recorded.inside.output.eps_cond, recorded.run.eps_cond[step], atol=1e-4, rtol=1e-4)
    # Self-attention is asked where the lesson's word looks most, at the last step: its map sums to 1.
    attention = recorded.attention
    peak = recorded.view.word_maps(recorded.run.steps - 1, recorded.settings(recorded.start))[recorded.start.word]
    row, column = np.unravel_index(int(np.argmax(peak)), peak.shape)
    scale = attention.grid[0] / peak.shape[0]
    assert attention.cell == (int(row * scale), int(column * scale))
    assert attention.self_map().sum() == pytest.approx(1, abs=1e-4)


def test_with_its_model_loaded_the_lesson_shows_x0_decoded(shapes, recorded, replayed) -> None:
    """The bundled model's VAE is cheap: every step's x̂₀ is its decode, not the linear preview (a replay without the
    model keeps the preview)."""
    steps = recorded.run.steps
    assert recorded.view.decoded_steps == frozenset(range(steps)) and replayed.view.decoded_steps == frozenset()
    decoded = vae_decode(shapes.model.pipe.vae, recorded.run.x0[3]).resize(recorded.view.size, Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(recorded.view.x0(3)), np.asarray(decoded))
    assert not np.array_equal(np.asarray(replayed.view.x0(3)), np.asarray(decoded))


def test_the_causal_mask_drawn_is_the_text_encoders_own(shapes, recorded) -> None:
    """Change one token and see which positions' outputs change: exactly those the panel says read it."""
    encoder = shapes.model.pipe.text_encoder
    ids = torch.tensor([recorded.token_ids])
    with torch.no_grad():
        base = encoder(ids).last_hidden_state[0]
        count = ids.shape[1]
        changed = np.zeros((count, count), dtype=bool)
        for column in range(count):
            edited = ids.clone()
            edited[0, column] = (edited[0, column] + 7) % encoder.config.vocab_size
            changed[:, column] = (encoder(edited).last_hidden_state[0] - base).abs().amax(-1).numpy() > 1e-6
    np.testing.assert_array_equal(changed, causal_reads(count))


def test_the_compression_and_the_unets_skips_are_the_models(shapes, recorded) -> None:
    pipe = shapes.model.pipe
    pixels, values = value_counts(recorded.view)
    assert pixels == 64 * 64 * 3
    side = 64 // pipe.vae_scale_factor
    assert values == pipe.vae.config.latent_channels * side * side
    # Skip connections join down block i and up block n-1-i of the UNet (diffusers' UNet2DConditionModel).
    blocks = recorded.view.blocks
    resolution = {block: int(recorded.run.attention[block].shape[-2]) for block in blocks}
    n = len(pipe.unet.config.down_block_types)
    pairs = skip_pairs(blocks, resolution)
    assert pairs and all(up == f"up_blocks.{n - 1 - int(down.split('.')[1])}" for down, up in pairs)


def test_each_try_this_sets_up_a_comparison_that_runs(recorded, replayed) -> None:
    """With the preset's run its own comparisons; with any other run ones that any run allows. Each is what Compare
    (or Explain) accepts: B differs from A in exactly the one field."""
    for lesson in (recorded, replayed):
        for stage in STAGES:
            setup = try_setup(stage, lesson)
            a = setup_request(setup)
            assert (setup.tab == EXPLAIN) == (stage.attempt.field == EXPLAIN), stage.id  # the button's label
            if setup.tab == EXPLAIN:
                assert a.prompt and a.seed == lesson.run.recipe.seed
                continue
            b = variant(a, FIELDS[setup.field], setup.value)
            assert b != a, stage.id
            assert setup.describe() == f"{setup.field}: {setup.value}"
    assert try_setup(STAGES[6], recorded).value == "left -> right"  # the preset's
    assert try_setup(STAGES[6], replayed).field == "Negative prompt"  # any run's: the chosen word
    assert try_setup(STAGES[6], replayed).value == "circle"
    for preset in presets():
        assert set(preset.tries) == {stage.id for stage in STAGES}, preset.name


def test_try_this_sends_the_runs_recipe_as_one_request(recorded) -> None:
    """The run's recipe becomes one request (a file without a schedule ran the sampler's own); "try this" puts its
    values in the tab it opens, leaves the other tab's controls as they are, and without a run says so in the
    browser's language."""
    recipe = recorded.run.recipe
    request = run_request(recorded)
    names = (*SENT, "schedule")
    assert [getattr(request, name) for name in names] == [getattr(recipe, name) for name in names]
    older = replace(recorded.run, recipe=replace(recipe, schedule=None))
    assert run_request(lesson_view(ExplainView(older), None)).schedule == AUTOMATIC

    sent = len(SENT) + 1  # the controls of one tab, its schedule last
    for stage in STAGES:
        setup = try_setup(stage, recorded)
        values = try_this(stage, recorded, None)
        compare, explained, (differs, b_value, tab) = values[:sent], values[sent : 2 * sent], values[2 * sent :]
        filled, skipped = (explained, compare) if setup.tab == EXPLAIN else (compare, explained)
        assert filled[:-1] == [getattr(setup.request, name) for name in SENT] and filled[-1].value == request.schedule
        assert all(value == gr.skip() for value in skipped) and tab.selected == setup.tab
        assert [differs, b_value] == ([setup.field, setup.value] if setup.tab == "compare" else [gr.skip()] * 2)
    french = type("Request", (), {"headers": {"accept-language": "fr-FR,fr;q=0.9"}})()
    with pytest.raises(gr.Error, match=re.escape(text("lesson_no_run", "fr"))):
        try_this(STAGES[0], None, french)


def test_a_stage_starts_at_its_step() -> None:
    starts = {stage.id: stage.step_at(12) for stage in STAGES}
    assert starts["latent"] == 1  # x_t is pure noise
    assert starts["cross_attention"] == starts["decode"] == 12
    assert starts["tokens"] is None  # the slider stays where it is
    assert all(stage.step_at(1) in (None, 1) for stage in STAGES)


def test_the_language_of_a_browser() -> None:
    assert language("fr-CH,fr;q=0.9,en;q=0.8") == "fr"
    assert language("de-DE,de;q=0.9") == "en"  # not offered: English
    assert language("es;q=0.5,fr;q=0.4,en;q=0.1") == "fr"
    assert language(None) == language("") == language("en-GB") == "en"
    assert language("fr;q=abc") == "en"
    assert text("lesson_no_run", "fr") == lesson_data()["texts"]["fr"]["lesson_no_run"]
    assert text("lesson_no_run", "xx") == translations()["en"]["lesson_no_run"]
