"""The sampler registry: A1111's sampler names mapped to diffusers schedulers.

Every request builds a fresh scheduler from the model's saved config, because schedulers keep state per run.
"""

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

from sdplay.errors import UserError


@dataclass(frozen=True)
class Sampler:
    """A named scheduler recipe: the class and the config overrides that make it behave like A1111's sampler."""

    name: str
    scheduler_class: type[SchedulerMixin]
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def build(self, saved_config: Mapping[str, Any]) -> SchedulerMixin:
        """A new scheduler from the model's saved config (betas, prediction type, spacing) plus our overrides."""
        return self.scheduler_class.from_config(saved_config, **self.overrides)


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in [
        Sampler("Euler", EulerDiscreteScheduler),
        Sampler("Euler a", EulerAncestralDiscreteScheduler),
        Sampler(
            "DPM++ 2M",
            DPMSolverMultistepScheduler,
            {"algorithm_type": "dpmsolver++", "solver_order": 2},
        ),
        Sampler(
            "DPM++ 2M Karras",
            DPMSolverMultistepScheduler,
            {
                "algorithm_type": "dpmsolver++",
                "solver_order": 2,
                "use_karras_sigmas": True,
            },
        ),
        Sampler(
            "DPM++ 2M SDE Karras",
            DPMSolverMultistepScheduler,
            {
                "algorithm_type": "sde-dpmsolver++",
                "solver_order": 2,
                "use_karras_sigmas": True,
            },
        ),
        # DDIM defaults to clipping x0 to [-1, 1], right for pixels, wrong for latents; SD's configs turn it off.
        Sampler("DDIM", DDIMScheduler, {"clip_sample": False}),
        Sampler("UniPC", UniPCMultistepScheduler),
        Sampler("LMS", LMSDiscreteScheduler),
        # Stable Diffusion's own PNDM config skips the Runge-Kutta warm-up; keep that for every model.
        Sampler("PNDM", PNDMScheduler, {"skip_prk_steps": True}),
        Sampler("Heun", HeunDiscreteScheduler),
        Sampler("LCM", LCMScheduler),
    ]
}

DEFAULT_SAMPLER = "Euler a"


def sampler_names(allow_lcm: bool) -> list[str]:
    """The names to offer in the UI: LCM only for models distilled for it (it gives noise on others)."""
    return [name for name in SAMPLERS if name != "LCM" or allow_lcm]


def build_scheduler(name: str, saved_config: Mapping[str, Any]) -> SchedulerMixin:
    """A fresh scheduler for one request; unknown names are a user error listing the valid ones."""
    if name not in SAMPLERS:
        raise UserError(f"Unknown sampler {name!r}. Choose one of: {', '.join(SAMPLERS)}.")
    return SAMPLERS[name].build(saved_config)
