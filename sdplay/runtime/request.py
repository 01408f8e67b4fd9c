"""Generation requests as plain data, and the one place where they are validated.

The UI, the API and the tests build a `GenerationRequest` and call `validated()`; nothing else checks input.
"""

import math
import re
from dataclasses import dataclass, replace
from enum import StrEnum

from PIL import Image

from sdplay.runtime.errors import UserError
from sdplay.runtime.images import ImageSource
from sdplay.runtime.samplers import AUTOMATIC, DEFAULT_SAMPLER, resolve

MAX_SEED = 2**32 - 1
# Tokenising is cheap, but a megabyte of text per request is abuse, not a prompt.
MAX_PROMPT_CHARS = 10_000
SURROGATE = re.compile(r"[\ud800-\udfff]")


class Task(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"


@dataclass(frozen=True)
class Limits:
    """Server-side caps (configurable from the command line)."""

    max_size: int = 1024
    max_steps: int = 150
    max_batch: int = 8


@dataclass(frozen=True)
class PlotLimits:
    """Caps checked before a plot runs (`--max-plot-cells`, `--max-plot-megapixels`).

    64 cells is A1111-sized and, on the bundled model, about a minute of CPU. 64 megapixels of cell images is 64
    cells of 1024² (the largest size `--max-size` allows by default): the grid PNG then takes ~200 MB of memory.
    """

    max_cells: int = 64
    max_megapixels: float = 64.0


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """Everything one generation needs. `width`/`height` of 0 mean "the default": the model's native size for
    text-to-image, the input image's size for image-to-image and inpainting.

    Fields are keyword-only, so that reordering them can never silently swap two of the same type.
    """

    task: Task = Task.TXT2IMG
    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = DEFAULT_SAMPLER
    schedule: str = AUTOMATIC  # A1111's "Schedule type"; "Automatic" is the sampler's own default
    steps: int = 20
    guidance_scale: float = 7.0
    seed: int = -1
    width: int = 0
    height: int = 0
    batch_size: int = 1
    image: ImageSource | None = None  # decoded (safely) when the job runs
    strength: float = 0.75
    mask: Image.Image | None = None  # mode "L": 255 = repaint, 0 = keep
    mask_blur: int = 4
    only_masked: bool = False
    padding: int = 32


def _number(name: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise UserError(f"{name} must be a finite number, got {value!r}.")
    return number


def _integer(name: str, value: object, low: int, high: int) -> int:
    number = round(_number(name, value))
    if not low <= number <= high:
        raise UserError(f"{name} must be between {low} and {high}, got {value!r}.")
    return number


def _size(name: str, value: object, limits: Limits) -> int:
    """0 keeps "the default"; anything else is rounded to a multiple of 8 (sliders do not enforce their step)."""
    number = _integer(name, value, 0, limits.max_size)
    if number == 0:
        return 0
    if number < 64:
        raise UserError(f"{name} must be at least 64 pixels (or 0 for the default), got {value!r}.")
    return min(limits.max_size // 8 * 8, round(number / 8) * 8)


def validated(request: GenerationRequest, limits: Limits = Limits()) -> GenerationRequest:
    """The request with numbers rounded to what the pipeline accepts, or a `UserError` saying what is wrong."""
    for name in ("prompt", "negative_prompt"):
        text = getattr(request, name)
        if not isinstance(text, str):
            raise UserError(f"{name} must be text.")
        if len(text) > MAX_PROMPT_CHARS:
            raise UserError(f"{name} is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}.")
        # A lone surrogate (half of a UTF-16 pair, as a broken JSON escape "\ud800" gives) is no character: the
        # tokenizer fails on it.
        if broken := SURROGATE.search(text):
            raise UserError(
                f"{name} has an invalid character at position {broken.start() + 1} (U+{ord(broken.group()):04X}, "
                "half of a UTF-16 pair): remove it or paste the text again."
            )
    sampler, schedule = resolve(request.sampler, request.schedule)
    guidance = _number("guidance_scale", request.guidance_scale)
    if not 0 <= guidance <= 30:
        raise UserError(f"guidance_scale (CFG scale) must be between 0 and 30, got {request.guidance_scale!r}.")
    strength = _number("strength", request.strength)
    if request.task != Task.TXT2IMG:
        if not 0 < strength <= 1:
            raise UserError(f"strength (denoising strength) must be above 0 and at most 1, got {request.strength!r}.")
        if request.image is None:
            raise UserError("Upload an image first.")
    if request.task == Task.INPAINT and request.mask is None:
        raise UserError("Paint over the part of the image to repaint, or upload a mask.")
    return replace(
        request,
        sampler=sampler,
        schedule=schedule,
        steps=_integer("steps", request.steps, 1, limits.max_steps),
        guidance_scale=guidance,
        seed=_integer("seed", request.seed, -1, MAX_SEED),
        width=_size("width", request.width, limits),
        height=_size("height", request.height, limits),
        batch_size=_integer("batch_size", request.batch_size, 1, limits.max_batch),
        strength=strength,
        mask_blur=_integer("mask_blur", request.mask_blur, 0, 64),
        padding=_integer("padding", request.padding, 0, 256),
    )


def size_warnings(request: GenerationRequest, native: int, limits: Limits = Limits()) -> list[str]:
    """What validation changes about the asked size, and a size far from the model's native one, in words.

    Called before a run, so that a user hears why the image is not the size typed or why it takes long. A size out
    of range raises the same `UserError` as `validated`.
    """
    asked = {"width": request.width, "height": request.height}
    used = {name: _size(name, value, limits) for name, value in asked.items()}
    warnings = [
        f"{name.capitalize()} {asked[name]} was rounded to {used[name]}: Stable Diffusion pipelines take sides in "
        "multiples of 8."
        for name in asked
        if used[name] and used[name] != _number(name, asked[name])
    ]
    default = native if request.task == Task.TXT2IMG else 0
    width, height = used["width"] or default, used["height"] or default
    if width and height and not (native / 2 <= width <= native * 2 and native / 2 <= height <= native * 2):
        work = width * height / native**2
        warnings.append(
            f"{width}×{height} is far from this model's native {native}×{native}, the size it learned: expect "
            f"repeated, stretched or cut-off subjects, and {work:.1f}× the work per step."
        )
    return warnings
