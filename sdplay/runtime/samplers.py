"""Samplers and schedule types, named as in AUTOMATIC1111 1.9+ and mapped to diffusers schedulers.

A sampler is the solver (Euler, DPM++ 2M, ...); its schedule type says which noise levels it visits (Karras, ...).
"Automatic" is the sampler's own default, as in A1111: Karras for DPM++ 2M, Exponential for DPM++ 2M SDE, Uniform
otherwise. Every request builds a fresh scheduler from the model's saved config, because schedulers keep state.
"""

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from sdplay.runtime.errors import UserError

AUTOMATIC = "Automatic"
# The switches that reshape a scheduler's noise levels; a schedule type sets at most one and clears the others, so
# that a model whose saved config turns one on still runs the schedule that was asked for.
SIGMA_SWITCHES = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


@dataclass(frozen=True)
class Schedule:
    """A schedule type: the scheduler config it sets. A1111 also reads its lower-case `key` (`sgm_uniform`)."""

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.name.lower().replace(" ", "_")

    def supported_by(self, scheduler_class: type[SchedulerMixin]) -> bool:
        """diffusers supports a schedule for a scheduler class when the class takes every switch it sets."""
        return set(self.overrides) <= set(inspect.signature(scheduler_class.__init__).parameters)


SCHEDULES: dict[str, Schedule] = {
    s.name: s
    for s in [
        # Evenly spaced timesteps, spaced as the model's own scheduler config says ("leading" for SD 1.5).
        Schedule("Uniform"),
        Schedule("Karras", {"use_karras_sigmas": True}),
        Schedule("Exponential", {"use_exponential_sigmas": True}),
        Schedule("Beta", {"use_beta_sigmas": True}),
        # Evenly spaced timesteps that include the last one (diffusers' "trailing"), as SDXL/SGM samples.
        Schedule("SGM Uniform", {"timestep_spacing": "trailing"}),
    ]
}


@dataclass(frozen=True)
class Sampler:
    """A named scheduler recipe: the class, the config overrides that make it behave like A1111's sampler, the
    schedule type that "Automatic" means for it, and other names it is known by."""

    name: str
    scheduler_class: type[SchedulerMixin]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    automatic: str = "Uniform"
    aliases: tuple[str, ...] = ()

    @property
    def schedules(self) -> list[str]:
        """The schedule types diffusers supports for this sampler, "Automatic" first."""
        return [AUTOMATIC, *(name for name, s in SCHEDULES.items() if s.supported_by(self.scheduler_class))]

    def build(self, saved_config: Mapping[str, Any], schedule: str = AUTOMATIC) -> SchedulerMixin:
        """A new scheduler from the model's saved config (betas, prediction type, spacing) plus our overrides."""
        chosen = SCHEDULES[self.automatic if schedule == AUTOMATIC else schedule]
        parameters = inspect.signature(self.scheduler_class.__init__).parameters
        cleared = {switch: False for switch in SIGMA_SWITCHES if switch in parameters}
        return self.scheduler_class.from_config(saved_config, **{**self.overrides, **cleared, **chosen.overrides})


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in [
        Sampler("Euler", EulerDiscreteScheduler),
        Sampler("Euler a", EulerAncestralDiscreteScheduler),
        Sampler(
            "DPM++ 2M", DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}, "Karras"
        ),
        Sampler(
            "DPM++ 2M SDE",
            DPMSolverMultistepScheduler,
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
            "Exponential",
        ),
        # DDIM defaults to clipping x0 to [-1, 1], right for pixels, wrong for latents; SD's configs turn it off.
        Sampler("DDIM", DDIMScheduler, {"clip_sample": False}),
        Sampler("UniPC", UniPCMultistepScheduler),
        Sampler("LMS", LMSDiscreteScheduler),
        # A1111 calls PNDM without its Runge-Kutta warm-up "PLMS", as SD's own PNDM config runs it.
        Sampler("PLMS", PNDMScheduler, {"skip_prk_steps": True}, aliases=("PNDM",)),
        Sampler("Heun", HeunDiscreteScheduler),
        Sampler("LCM", LCMScheduler),
    ]
}
_BY_NAME = {name.lower(): s for s in SAMPLERS.values() for name in (s.name, *s.aliases)}
_SCHEDULE_BY_NAME = {name.lower(): s for s in SCHEDULES.values() for name in (s.name, s.key)}

DEFAULT_SAMPLER = "Euler a"


def sampler_names(allow_lcm: bool) -> list[str]:
    """The names to offer in the UI: LCM only for models distilled for it (it gives noise on others)."""
    return [name for name in SAMPLERS if name != "LCM" or allow_lcm]


def schedule_names(sampler: str) -> list[str]:
    """The schedule types to offer with `sampler` ("Automatic" first); all of them for an unknown sampler."""
    known = _BY_NAME.get(str(sampler).lower())
    return known.schedules if known else [AUTOMATIC, *SCHEDULES]


def resolve(sampler: str, schedule: str | None = AUTOMATIC) -> tuple[str, str]:
    """Canonical (sampler, schedule type) names, as A1111's `get_sampler_and_scheduler` reads them.

    A combined pre-1.9 name (`DPM++ 2M Karras`) is split; aliases (`PNDM`) become A1111's names (`PLMS`); a schedule
    equal to the sampler's default becomes "Automatic". Unknown names, and schedules diffusers does not offer for
    the sampler, are a `UserError` that lists the valid ones.
    """
    sampler, schedule = str(sampler).strip(), str(schedule or AUTOMATIC).strip()
    if sampler.lower() not in _BY_NAME:
        for suffix, candidate in _SCHEDULE_BY_NAME.items():
            base = sampler[: -len(suffix) - 1]
            if sampler.lower().endswith(" " + suffix) and base.lower() in _BY_NAME:
                sampler, schedule = base, candidate.name
                break
    found = _BY_NAME.get(sampler.lower())
    if found is None:
        raise UserError(f"Unknown sampler {sampler!r}. Choose one of: {', '.join(SAMPLERS)}.")
    if schedule.lower() != AUTOMATIC.lower() and schedule.lower() not in _SCHEDULE_BY_NAME:
        raise UserError(f"Unknown schedule type {schedule!r}. Choose one of: {', '.join([AUTOMATIC, *SCHEDULES])}.")
    chosen = AUTOMATIC if schedule.lower() == AUTOMATIC.lower() else _SCHEDULE_BY_NAME[schedule.lower()].name
    if chosen not in found.schedules:
        raise UserError(
            f"The {found.name} sampler has no {chosen} schedule in diffusers. "
            f"Choose one of: {', '.join(found.schedules)}."
        )
    return found.name, AUTOMATIC if chosen == found.automatic else chosen


def effective_schedule(sampler: str, schedule: str) -> str:
    """The schedule type a canonical (sampler, schedule) pair runs: "Automatic" made concrete."""
    return SAMPLERS[sampler].automatic if schedule == AUTOMATIC else schedule


def build_scheduler(sampler: str, saved_config: Mapping[str, Any], schedule: str = AUTOMATIC) -> SchedulerMixin:
    """A fresh scheduler for one request; any name `resolve` accepts works (`DPM++ 2M Karras` too)."""
    name, schedule = resolve(sampler, schedule)
    return SAMPLERS[name].build(saved_config, schedule)


def check_steps(scheduler: SchedulerMixin, steps: int, strength: float = 1.0) -> None:
    """LCM draws its steps from the `original_inference_steps` it was distilled on (50 for LCM models): asking for
    more than that share of them is a `UserError`, not diffusers' ValueError mid-job."""
    if not isinstance(scheduler, LCMScheduler):
        return
    distilled = scheduler.config.original_inference_steps
    most = int(distilled * strength)
    if steps > most:
        within = "" if strength == 1 else f" at denoising strength {strength:g}"
        raise UserError(
            f"The LCM sampler runs at most {most} steps{within} (it samples the {distilled} steps it was distilled "
            f"on): {steps} asked. Lower the steps, or choose another sampler."
        )
