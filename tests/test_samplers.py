"""The sampler registry: A1111 names, fresh schedulers from the saved config, LCM only where it fits."""

import pytest
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

from sdplay.errors import UserError
from sdplay.random_models import SD15_SCHEDULER
from sdplay.samplers import SAMPLERS, build_scheduler, sampler_names

A1111_NAMES = ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE Karras", "DDIM", "UniPC", "LMS"]
A1111_NAMES += ["PNDM", "Heun", "LCM"]
SAVED = dict(PNDMScheduler(**SD15_SCHEDULER).config)


def test_the_registry_has_the_a1111_names():
    assert set(A1111_NAMES) <= set(SAMPLERS)


@pytest.mark.parametrize("name", A1111_NAMES)
def test_each_sampler_builds_a_fresh_scheduler_that_keeps_the_model_noise_schedule(name):
    first, second = build_scheduler(name, SAVED), build_scheduler(name, SAVED)
    assert first is not second
    assert isinstance(first, SAMPLERS[name].scheduler_class)
    assert first.config.beta_schedule == "scaled_linear" and first.config.beta_end == 0.012
    first.set_timesteps(10)
    second.set_timesteps(30)
    assert len(first.timesteps) != len(second.timesteps)  # no state shared between requests


def test_overrides_make_the_a1111_variants():
    karras = build_scheduler("DPM++ 2M SDE Karras", SAVED)
    assert isinstance(karras, DPMSolverMultistepScheduler)
    assert karras.config.use_karras_sigmas and karras.config.algorithm_type == "sde-dpmsolver++"
    assert not build_scheduler("DPM++ 2M", SAVED).config.use_karras_sigmas
    ddim = build_scheduler("DDIM", SAVED)
    assert isinstance(ddim, DDIMScheduler) and ddim.config.clip_sample is False


def test_lcm_is_offered_only_for_models_that_allow_it():
    assert "LCM" not in sampler_names(allow_lcm=False)
    assert sampler_names(allow_lcm=True)[-1] == "LCM"


def test_unknown_sampler_is_a_user_error():
    with pytest.raises(UserError, match="Unknown sampler"):
        build_scheduler("k_euler", SAVED)
