"""What sdplay knows about models: the Hub catalog, and the settings each model works best with.

A model's recommended settings come from, in order: an `sdplay.json` file in its folder (the bundled model ships
one), the catalog below (Hub models), or its own saved scheduler config (anything else).
"""

import json
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from sdplay.runtime.errors import UserError
from sdplay.runtime.samplers import AUTOMATIC, DEFAULT_SAMPLER, SIGMA_SWITCHES, resolve

SETTINGS_FILE = "sdplay.json"
SD_EXAMPLES = (
    "a watercolor painting of a lighthouse at dawn, soft light",
    "a photo of a red fox in a snowy forest, golden hour",
    "an isometric illustration of a tiny island with a castle",
)


@dataclass(frozen=True)
class FastPath:
    """A UNet distilled from the model's own for few steps (latent consistency distillation), kept in a subfolder
    of the model's folder. The LCM sampler runs it: one UNet call a step, the CFG scale read as an input. The
    generation tabs start on it; Explain, the Lesson and Compare keep the model's own UNet and its longer story."""

    unet: str = "unet-lcm"  # the subfolder, a plain name
    steps: int = 4
    guidance_scale: float = 4.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[\w-][\w.-]*", self.unet) or self.unet.startswith(".."):
            raise ValueError(f"fast.unet must name a subfolder of the model's folder, not {self.unet!r}")


@dataclass(frozen=True)
class ModelSettings:
    """The settings a model works best with, shown and applied when it loads; `size` 0 is the native size.

    `vocabulary`, when given, lists every word the model was trained on: others get a warning. `fast`, when given,
    is a few-step UNet beside the model's own (see `FastPath`).
    """

    sampler: str = DEFAULT_SAMPLER
    schedule: str = AUTOMATIC
    steps: int = 20
    guidance_scale: float = 7.0
    size: int = 0
    examples: tuple[str, ...] = SD_EXAMPLES
    vocabulary: tuple[str, ...] = ()
    note: str = ""
    fast: FastPath | None = None

    @property
    def generation(self) -> "ModelSettings":
        """What the generation tabs start with: the fast path's sampler, steps and CFG when the model has one."""
        if self.fast is None:
            return self
        fast = self.fast
        return replace(self, sampler="LCM", schedule=AUTOMATIC, steps=fast.steps, guidance_scale=fast.guidance_scale)

    def summary(self, native: int) -> str:
        """One line for the UI: "DPM++ 2M · Karras · 25 steps · CFG 7 · 512×512"."""
        size = self.size or native
        schedule = "" if self.schedule == AUTOMATIC else f" · {self.schedule}"
        cfg = f"{self.guidance_scale:g}"
        return f"{self.sampler}{schedule} · {self.steps} steps · CFG {cfg} · {size}×{size}"


CATALOG: dict[str, ModelSettings] = {
    # The settings each model's authors or model card recommend.
    "stable-diffusion-v1-5/stable-diffusion-v1-5": ModelSettings("DPM++ 2M", AUTOMATIC, 25, 7.0),
    "stabilityai/stable-diffusion-2-1-base": ModelSettings("DPM++ 2M", AUTOMATIC, 25, 7.0),
    # Distilled for 1–4 steps without guidance: "num_inference_steps=1, guidance_scale=0.0" (its model card).
    "stabilityai/sd-turbo": ModelSettings(
        "Euler", AUTOMATIC, 1, 0.0, note="SD-Turbo is distilled for 1–4 steps with CFG 0 (no negative prompt)."
    ),
    "stable-diffusion-v1-5/stable-diffusion-inpainting": ModelSettings(
        "DPM++ 2M", AUTOMATIC, 25, 7.0, note="An inpainting checkpoint: use it in the Inpaint tab."
    ),
}
HUB_MODELS = list(CATALOG)

# diffusers scheduler classes as A1111 sampler names, for models outside the catalog. PNDM is absent on purpose:
# SD 1.x configs name it because it was diffusers' first default, not as a recommendation; they get A1111's default.
_SAMPLER_OF_CLASS = {
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DDIMScheduler": "DDIM",
    "LMSDiscreteScheduler": "LMS",
    "HeunDiscreteScheduler": "Heun",
    "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM",
}
_SCHEDULE_OF_SWITCH = {
    "use_karras_sigmas": "Karras",
    "use_exponential_sigmas": "Exponential",
    "use_beta_sigmas": "Beta",
}


def settings_from_scheduler(scheduler: Any) -> ModelSettings:
    """Defaults for an unknown model: the sampler and schedule its own saved scheduler describes."""
    name, config = type(scheduler).__name__, scheduler.config
    schedule = next((_SCHEDULE_OF_SWITCH[s] for s in SIGMA_SWITCHES if config.get(s)), "Uniform")
    if name == "DPMSolverMultistepScheduler":
        sampler = "DPM++ 2M SDE" if config.get("algorithm_type") == "sde-dpmsolver++" else "DPM++ 2M"
    elif name in _SAMPLER_OF_CLASS:
        sampler = _SAMPLER_OF_CLASS[name]
    else:
        sampler, schedule = "DPM++ 2M", AUTOMATIC
    try:
        sampler, schedule = resolve(sampler, schedule)
    except UserError:
        sampler, schedule = resolve(sampler, AUTOMATIC)
    if sampler == "LCM":  # LCM-distilled models: few steps, little guidance
        return ModelSettings(sampler, schedule, 6, 1.5)
    return ModelSettings(sampler, schedule)


def read_settings_file(folder: Path) -> ModelSettings | None:
    """A model folder's `sdplay.json`, checked; None if the folder has none."""
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in fields(ModelSettings)}
        if not isinstance(data, dict) or not set(data) <= known:
            raise ValueError(f"keys must be among {sorted(known)}")
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        if "fast" in data:
            if not isinstance(data["fast"], dict):
                raise ValueError("fast must be an object: unet, steps, guidance_scale")
            data["fast"] = FastPath(**data["fast"])
        settings = ModelSettings(**data)
        resolve(settings.sampler, settings.schedule)
    except (ValueError, TypeError) as error:
        raise UserError(f"The model's {SETTINGS_FILE} is not valid: {error}") from None
    return settings


def model_settings(source: str, folder: Path | None, scheduler: Any) -> ModelSettings:
    """The recommended settings of a model loaded from `source` (`folder` if it is a local diffusers folder), whose
    pipeline came with `scheduler`."""
    from_file = read_settings_file(folder) if folder is not None else None
    return from_file or CATALOG.get(source) or settings_from_scheduler(scheduler)


def unknown_words(prompt: str, vocabulary: tuple[str, ...]) -> list[str]:
    """The words of `prompt` that a model with this closed `vocabulary` never saw (none for an open one)."""
    if not vocabulary:
        return []
    known = {word.lower() for word in vocabulary}
    # BREAK (in capitals) is prompt syntax, not a word the model reads.
    words = re.findall(r"[^\W\d_]+", re.sub(r"\bBREAK\b", " ", prompt).lower())
    return list(dict.fromkeys(word for word in words if word not in known))
