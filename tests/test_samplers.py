"""Samplers and schedule types: A1111 1.9+ names, its reading of old combined names, fresh schedulers per request."""

import numpy as np
import pytest
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

from sdplay.runtime.errors import UserError
from sdplay.runtime.random_models import SD15_SCHEDULER
from sdplay.runtime.samplers import (
    AUTOMATIC,
    SAMPLERS,
    SCHEDULES,
    build_scheduler,
    effective_schedule,
    resolve,
    sampler_names,
    schedule_names,
)

# A1111 1.9's sampler names (modules/sd_samplers_kdiffusion.py, sd_samplers_timesteps.py, sd_samplers_lcm.py).
A1111_NAMES = ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DDIM", "UniPC", "LMS", "PLMS", "Heun", "LCM"]
SAVED = dict(PNDMScheduler(**SD15_SCHEDULER).config)


def test_the_registry_has_the_a1111_names_and_schedule_types():
    assert set(A1111_NAMES) == set(SAMPLERS)
    assert {"Uniform", "Karras", "Exponential", "SGM Uniform"} <= set(SCHEDULES)


@pytest.mark.parametrize("name", A1111_NAMES)
def test_each_sampler_builds_a_fresh_scheduler_that_keeps_the_model_noise_schedule(name):
    first, second = build_scheduler(name, SAVED), build_scheduler(name, SAVED)
    assert first is not second
    assert isinstance(first, SAMPLERS[name].scheduler_class)
    assert first.config.beta_schedule == "scaled_linear" and first.config.beta_end == 0.012
    first.set_timesteps(10)
    second.set_timesteps(30)
    assert len(first.timesteps) != len(second.timesteps)  # no state shared between requests


# What A1111 1.9+'s get_sampler_and_scheduler makes of the names that 1.6 and 1.9+ write.
A1111_READINGS = [
    (("DPM++ 2M Karras", None), ("DPM++ 2M", AUTOMATIC)),  # 1.6: Karras is DPM++ 2M's default since 1.9
    (("DPM++ 2M", "Karras"), ("DPM++ 2M", AUTOMATIC)),  # 1.9+
    (("DPM++ 2M", None), ("DPM++ 2M", AUTOMATIC)),  # 1.9+ reads a bare name as Automatic
    (("DPM++ 2M", "Uniform"), ("DPM++ 2M", "Uniform")),
    (("DPM++ 2M SDE Karras", None), ("DPM++ 2M SDE", "Karras")),  # its default is Exponential
    (("DPM++ 2M SDE", "Exponential"), ("DPM++ 2M SDE", AUTOMATIC)),
    (("Euler a", "Automatic"), ("Euler a", AUTOMATIC)),
    (("Euler", "Karras"), ("Euler", "Karras")),
    (("LMS Karras", None), ("LMS", "Karras")),
    (("Euler", "sgm_uniform"), ("Euler", "SGM Uniform")),  # A1111 also takes a schedule's lower-case name
    (("PLMS", None), ("PLMS", AUTOMATIC)),
    (("PNDM", None), ("PLMS", AUTOMATIC)),  # sdplay's old name
    (("DDIM", "SGM Uniform"), ("DDIM", "SGM Uniform")),
]


@pytest.mark.parametrize(("given", "expected"), A1111_READINGS)
def test_resolve_reads_names_as_a1111_19_does(given, expected):
    assert resolve(*given) == expected


def test_automatic_is_each_samplers_a1111_default():
    assert effective_schedule("DPM++ 2M", AUTOMATIC) == "Karras"
    assert effective_schedule("DPM++ 2M SDE", AUTOMATIC) == "Exponential"
    assert effective_schedule("Euler", AUTOMATIC) == "Uniform"
    assert effective_schedule("Euler", "Karras") == "Karras"


def sigmas(sampler: str, schedule: str, steps: int = 10) -> np.ndarray:
    scheduler = build_scheduler(sampler, SAVED, schedule)
    scheduler.set_timesteps(steps)
    return np.asarray(scheduler.sigmas)


def test_schedule_types_change_the_noise_levels_and_automatic_equals_the_default():
    assert np.array_equal(sigmas("DPM++ 2M", AUTOMATIC), sigmas("DPM++ 2M", "Karras"))
    assert not np.array_equal(sigmas("DPM++ 2M", "Karras"), sigmas("DPM++ 2M", "Uniform"))
    assert not np.array_equal(sigmas("Euler", "Karras"), sigmas("Euler", "Exponential"))
    karras = build_scheduler("DPM++ 2M SDE Karras", SAVED)
    assert isinstance(karras, DPMSolverMultistepScheduler)
    assert karras.config.use_karras_sigmas and karras.config.algorithm_type == "sde-dpmsolver++"
    ddim = build_scheduler("DDIM", SAVED, "SGM Uniform")
    assert isinstance(ddim, DDIMScheduler) and ddim.config.clip_sample is False
    assert ddim.config.timestep_spacing == "trailing"


def test_a_schedule_type_overrides_the_models_saved_one():
    saved_karras = dict(EulerDiscreteScheduler.from_config(SAVED, use_karras_sigmas=True).config)
    uniform = build_scheduler("Euler", saved_karras, "Uniform")
    assert not uniform.config.use_karras_sigmas
    assert build_scheduler("Euler", saved_karras, "Exponential").config.use_exponential_sigmas


def test_schedules_offered_are_those_diffusers_has_for_the_sampler():
    assert schedule_names("DPM++ 2M")[0] == AUTOMATIC
    assert "Karras" in schedule_names("DPM++ 2M") and "Karras" not in schedule_names("DDIM")
    assert schedule_names("Euler a") == [AUTOMATIC, "Uniform", "SGM Uniform"]
    with pytest.raises(UserError, match="Euler a sampler has no Karras schedule"):
        resolve("Euler a", "Karras")


def test_lcm_is_offered_only_for_models_that_allow_it():
    assert "LCM" not in sampler_names(allow_lcm=False)
    assert sampler_names(allow_lcm=True)[-1] == "LCM"


def test_unknown_names_are_user_errors_that_list_the_valid_ones():
    with pytest.raises(UserError, match="Unknown sampler 'k_euler'.*Euler a"):
        build_scheduler("k_euler", SAVED)
    with pytest.raises(UserError, match="Unknown sampler 'DPM\\+\\+ SDE Karras'"):
        resolve("DPM++ SDE Karras")  # A1111 has it; diffusers has no such solver
    with pytest.raises(UserError, match="Unknown schedule type 'Align Your Steps'"):
        resolve("Euler", "Align Your Steps")
