"""Per-model recommended settings: from the model folder's sdplay.json, the Hub catalog, or the scheduler config."""

import json

import pytest
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler

from sdplay.page import model_notes
from sdplay.runtime.catalog import (
    CATALOG,
    SETTINGS_FILE,
    model_settings,
    read_settings_file,
    settings_from_scheduler,
    unknown_words,
)
from sdplay.runtime.errors import UserError
from sdplay.runtime.models import LoadedModel
from sdplay.runtime.random_models import SD15_SCHEDULER
from sdplay.runtime.request import GenerationRequest, Limits
from sdplay.runtime.samplers import resolve
from sdplay.shapes.world import RECOMMENDED_SETTINGS, VOCABULARY
from sdplay.ui.common import warnings_before
from tests.helpers import SHAPES

SD15 = {k: v for k, v in SD15_SCHEDULER.items() if k not in ("skip_prk_steps", "set_alpha_to_one")}


def test_the_bundled_model_ships_the_settings_its_training_script_writes():
    # train.py writes the recommended settings; distill.py adds the fast path (its UNet in unet-lcm/).
    fast = {"unet": "unet-lcm", "steps": 4, "guidance_scale": 4.0}
    assert json.loads((SHAPES / SETTINGS_FILE).read_text()) == RECOMMENDED_SETTINGS | {"fast": fast}
    settings = read_settings_file(SHAPES)
    assert settings.generation.summary(64) == "LCM · 4 steps · CFG 4 · 64×64"
    assert (settings.sampler, settings.schedule, settings.steps, settings.guidance_scale) == (
        "DPM++ 2M",
        "Uniform",
        20,
        4,
    )
    assert settings.vocabulary == VOCABULARY
    for example in settings.examples:  # every example is inside the model's grammar
        assert unknown_words(example, settings.vocabulary) == []


def test_catalog_models_have_valid_settings_and_sd_turbo_runs_one_step_without_guidance():
    for settings in CATALOG.values():
        assert resolve(settings.sampler, settings.schedule) == (settings.sampler, settings.schedule)
        assert settings.examples and not settings.vocabulary
    turbo = CATALOG["stabilityai/sd-turbo"]
    assert (turbo.steps, turbo.guidance_scale) == (1, 0.0)
    assert model_settings("stabilityai/sd-turbo", None, EulerDiscreteScheduler()) is turbo


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        (DPMSolverMultistepScheduler(**SD15, use_karras_sigmas=True), ("DPM++ 2M", "Automatic", 20, 7.0)),
        (DPMSolverMultistepScheduler(**SD15), ("DPM++ 2M", "Uniform", 20, 7.0)),
        (DPMSolverMultistepScheduler(**SD15, algorithm_type="sde-dpmsolver++"), ("DPM++ 2M SDE", "Uniform", 20, 7.0)),
        (EulerDiscreteScheduler(**SD15, timestep_spacing="trailing"), ("Euler", "Automatic", 20, 7.0)),
        (LCMScheduler(**SD15), ("LCM", "Automatic", 6, 1.5)),
    ],
)
def test_models_outside_the_catalog_get_their_own_schedulers_settings(scheduler, expected):
    settings = settings_from_scheduler(scheduler)
    assert (settings.sampler, settings.schedule, settings.steps, settings.guidance_scale) == expected


def test_a_folders_settings_file_wins_and_a_bad_one_is_a_clear_error(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"sampler": "Euler", "steps": 30, "examples": ["a dog"]}))
    settings = model_settings("stabilityai/sd-turbo", tmp_path, EulerDiscreteScheduler())
    assert (settings.sampler, settings.steps, settings.examples) == ("Euler", 30, ("a dog",))
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"sampler": "Euler", "colour": "red"}))
    with pytest.raises(UserError, match="sdplay.json is not valid") as error:
        read_settings_file(tmp_path)
    assert str(tmp_path) not in str(error.value)
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"sampler": "DDIM", "schedule": "Karras"}))
    with pytest.raises(UserError, match="DDIM sampler has no Karras"):
        read_settings_file(tmp_path)


def test_unknown_words_of_a_closed_vocabulary():
    prompt = "a watercolor painting of a lighthouse, Red circle"
    assert unknown_words(prompt, VOCABULARY) == ["watercolor", "painting", "of", "lighthouse"]
    assert unknown_words(prompt, ()) == []  # an open vocabulary (CLIP's) knows every word
    assert unknown_words("a (red:1.2) [circle:hexagon:0.5] BREAK on the left", VOCABULARY) == ["hexagon"]


def test_the_manager_attaches_the_settings_to_the_loaded_model(manager):
    settings = manager.model.settings  # the tiny model: SD 1.5's PNDM config, outside the catalog
    assert (settings.sampler, settings.schedule) == ("DPM++ 2M", "Automatic")  # A1111's default, as Karras
    assert "DPM++ 2M · 20 steps · CFG 7" in settings.summary(manager.model.native_size)


@pytest.fixture
def shapes_model(shapes) -> LoadedModel:
    """The bundled model itself, as conftest's manager has it loaded."""
    return shapes.model


def test_the_ui_names_the_bundled_models_settings_and_words(shapes_model):
    notes = model_notes(shapes_model)
    assert "DPM++ 2M · Uniform · 20 steps · CFG 4 · 64×64" in notes
    assert f"only these {len(VOCABULARY)} words" in notes and "triangle" in notes


def test_warnings_before_a_run_name_unknown_words_and_odd_sizes(shapes_model):
    request = GenerationRequest(prompt="a watercolor painting of a lighthouse", width=1024, height=64)
    (unknown,) = [w for w in warnings_before(shapes_model, request, Limits()) if "never seen" in w]
    assert "'watercolor', 'painting', 'of', 'lighthouse'" in unknown
    warnings = warnings_before(shapes_model, request, Limits())
    assert any("1024×64 is far from this model's native 64×64" in w for w in warnings)
    fine = GenerationRequest(prompt="a large red circle on the left on a gray background")
    assert warnings_before(shapes_model, fine, Limits()) == []


@pytest.mark.parametrize("unet", ["../shapes", "/etc", "a/b", "", ".."])
def test_a_fast_path_names_a_subfolder_of_the_models_folder_only(tmp_path, unet):
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"fast": {"unet": unet}}))
    with pytest.raises(UserError, match="subfolder"):
        read_settings_file(tmp_path)
