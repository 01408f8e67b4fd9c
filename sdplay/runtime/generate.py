"""Running one generation request: validate, seed, report each step (with a preview now and then), paste
inpainting back, write metadata.

`generate()` is plain and synchronous (CPU objects in and out); sdplay/runtime/executor.py runs it behind the one
executor boundary, so that a UI can show previews and stop it between steps, locally or on ZeroGPU.
"""

import math
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from sdplay.runtime.conditioning import encode_prompts
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobControl
from sdplay.runtime.images import (
    blur_mask,
    check_mask,
    fit_within,
    masked_region,
    open_image,
    paste_back,
)
from sdplay.runtime.metadata import format_infotext, with_infotext
from sdplay.runtime.models import LoadedModel, ModelManager
from sdplay.runtime.predictions import Prediction, watch_predictions
from sdplay.runtime.previews import latents_to_rgb
from sdplay.runtime.request import MAX_SEED, GenerationRequest, Limits, Task, validated
from sdplay.runtime.samplers import AUTOMATIC, check_steps

# Seconds between two previews after the first. A preview is cheap to compute but is encoded, sent and drawn by the
# browser: on a fast GPU a step takes tens of milliseconds, and a preview per step would cost more than the steps.
PREVIEW_EVERY = 0.25


class Recorder(Protocol):
    """Something that watches a run from inside (the Explain capture): attached for one request only."""

    tensor_inputs: list[str]  # extra tensors the pipeline should hand to `step_ended` ("mask", ...)

    def attached(self, pipe: DiffusionPipeline) -> AbstractContextManager[None]:
        """Attach to `pipe` for the run; detach on exit, also on errors and Stop."""

    def step_ended(self, step: int, tensors: dict[str, torch.Tensor]) -> None: ...


@dataclass(frozen=True)
class StepUpdate:
    """Progress after a denoising step; when a preview was due, a cheap one of x̂₀ for each image of the batch."""

    step: int
    total: int
    seconds_per_step: float  # this run's mean so far (the first step also encodes the prompt)
    previews: list[Image.Image]  # latent-sized (a browser scales them up); empty when no preview was due
    stopped: bool = False  # the job was stopped here: the last update it makes

    @property
    def seconds_left(self) -> float:
        return (self.total - self.step) * self.seconds_per_step

    def describe(self) -> str:
        """The progress line a UI shows: "Step 7/20 · about 3 s left"."""
        return f"Step {self.step}/{self.total} · {about(self.seconds_left)} left"


def about(seconds: float) -> str:
    """A rounded-up duration for people: "about 3 s", "about 2 min 5 s"."""
    seconds = math.ceil(seconds)
    minutes, rest = divmod(seconds, 60)
    return f"about {minutes} min {rest} s" if minutes else f"about {rest} s"


class Cancelled(Exception):
    """The job was stopped between two denoising steps; `update` says where, with a preview if one was watched."""

    def __init__(self, update: StepUpdate | None = None) -> None:
        where = f" at step {update.step} of {update.total}" if update else " before the first step"
        super().__init__(f"Stopped{where}.")
        self.update = update

    def __reduce__(self):  # pickled with its update (it crosses ZeroGPU's boundary), not with its message
        return Cancelled, (self.update,)


@dataclass(frozen=True)
class GenerationResult:
    images: list[Image.Image]  # each carries its A1111 infotext in info["parameters"]
    infotexts: list[str]
    seeds: list[int]
    warnings: list[str] = field(default_factory=list)
    # Each image's settings as it ran (validated; its own seed and size; no input image): what "Send to" copies.
    requests: list[GenerationRequest] = field(default_factory=list)


@dataclass(frozen=True)
class _Plan:
    """A validated request turned into pipeline arguments, and how to finish its images afterwards."""

    size: tuple[int, int]
    pipe_kwargs: dict
    finish: Callable[[Image.Image], Image.Image] = lambda image: image


def generate(
    manager: ModelManager,
    request: GenerationRequest,
    limits: Limits = Limits(),
    control: JobControl = JobControl(),
    *,
    recorder: Recorder | None = None,
    preview_every: float = PREVIEW_EVERY,
) -> GenerationResult:
    """Run `request` on the loaded model, beside other jobs; `UserError` for bad input, `Cancelled` if stopped.

    `control.on_step` hears every step; its previews come at the first step, then once every `preview_every` seconds,
    and never at the last (the final image follows at once).
    """
    request = validated(request, limits)
    with manager.job(control, alone=False) as job:  # it uses the model through its view only
        model = manager.model
        if model.is_inpainting and request.task != Task.INPAINT:
            raise UserError(f"{model.name} is an inpainting checkpoint: use the Inpaint tab with it.")
        pipe = manager.pipeline(request.task, request.sampler, request.schedule)
        check_steps(pipe.scheduler, request.steps, request.strength if request.task != Task.TXT2IMG else 1.0)
        # A1111 prompt syntax; long prompts are encoded in chunks of 75 tokens, never cut.
        conditioning = encode_prompts(pipe, request.prompt, request.negative_prompt, request.steps)
        plan = _plan(request, model, limits)
        first_seed = random.randint(0, MAX_SEED) if request.seed == -1 else request.seed
        seeds = [(first_seed + i) % (MAX_SEED + 1) for i in range(request.batch_size)]
        latest: dict[str, Prediction] = {}
        last_preview = -math.inf  # when the last preview was made
        # Image-to-image and inpainting run the last `strength` of the schedule (diffusers rounds down).
        steps_run = request.steps
        if request.task != Task.TXT2IMG:
            steps_run = max(1, min(int(request.steps * request.strength), request.steps))

        def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            nonlocal last_preview
            if recorder is not None:
                recorder.step_ended(step, tensors)
            stopping = job.cancel.is_set()
            if control.on_step is None and not stopping:
                return {}
            now = time.perf_counter()
            # The callback runs once per UNet call, which is more often than once a step for Heun (2n - 1 calls)
            # and PLMS (n + 1): count in the steps the user asked for.
            done = (step + 1) / pipe.num_timesteps * steps_run
            # On Stop, the preview of this step is the one the UI keeps.
            due = stopping or (step + 1 < pipe.num_timesteps and now - last_preview >= preview_every)
            previews = []
            if due and latest:
                previews = [latents_to_rgb(x0, model.latent_rgb) for x0 in latest["prediction"].x0]
                last_preview = now
            update = StepUpdate(min(steps_run, math.ceil(done)), steps_run, (now - started) / done, previews)
            if stopping:
                raise Cancelled(replace(update, stopped=True))
            control.on_step(update)
            return {}

        if job.cancel.is_set():
            raise Cancelled()
        started = time.perf_counter()
        watch = watch_predictions(pipe, lambda p: latest.update(prediction=p)) if control.on_step else nullcontext()
        with watch, recorder.attached(pipe) if recorder else nullcontext():
            output = pipe(
                **conditioning.pipe_kwargs(),
                num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale,
                num_images_per_prompt=request.batch_size,
                generator=[torch.Generator().manual_seed(seed) for seed in seeds],
                callback_on_step_end=conditioning.switching(on_step_end, request.batch_size),
                callback_on_step_end_tensor_inputs=["latents", *_tensor_inputs(pipe, recorder)],
                **plan.pipe_kwargs,
            )
    infotexts = [_infotext(request, model, plan.size, seed) for seed in seeds]
    images = [with_infotext(plan.finish(image), text) for image, text in zip(output.images, infotexts, strict=True)]
    width, height = plan.size
    ran = [replace(request, seed=seed, width=width, height=height, image=None, mask=None) for seed in seeds]
    return GenerationResult(images, infotexts, seeds, requests=ran)


def _tensor_inputs(pipe: DiffusionPipeline, recorder: Recorder | None) -> list[str]:
    """The extra step tensors a recorder wants that this pipeline offers (only inpainting has a "mask")."""
    return [name for name in (recorder.tensor_inputs if recorder else []) if name in pipe._callback_tensor_inputs]


def _plan(request: GenerationRequest, model: LoadedModel, limits: Limits) -> _Plan:
    """Pipeline arguments for the request's task; img2img and inpaint take the input's size unless one is set."""
    native = model.native_size
    if request.task == Task.TXT2IMG:
        size = (request.width or native, request.height or native)
        return _Plan(size, {"width": size[0], "height": size[1]})
    image = open_image(request.image)
    chosen = (request.width, request.height) if request.width and request.height else None
    if request.task == Task.IMG2IMG:
        size = chosen or fit_within(image.size, limits.max_size)
        init = image.resize(size, Image.Resampling.LANCZOS)
        return _Plan(size, {"image": init, "strength": request.strength})
    check_mask(request.mask, image.size)
    mask = blur_mask(request.mask, request.mask_blur)
    if request.only_masked:
        # Generate the region around the mask at full resolution, then paste it back at its place.
        size = chosen or (native, native)
        box = masked_region(mask, request.padding, size[0] / size[1])
    else:
        size = chosen or fit_within(image.size, limits.max_size)
        box = (0, 0, image.width, image.height)
    region = image.crop(box).resize(size, Image.Resampling.LANCZOS)
    region_mask = mask.crop(box).resize(size, Image.Resampling.LANCZOS)
    kwargs = {
        "image": region,
        "mask_image": region_mask,
        "width": size[0],
        "height": size[1],
    }
    kwargs["strength"] = request.strength
    return _Plan(size, kwargs, lambda generated: paste_back(image, generated, mask, box))


def _infotext(request: GenerationRequest, model: LoadedModel, size: tuple[int, int], seed: int) -> str:
    params: dict[str, object] = {
        "Steps": request.steps,
        "Sampler": request.sampler,
        # A1111 1.9+ reads a missing schedule type as the sampler's default ("Automatic"), as we write it.
        "Schedule type": None if request.schedule == AUTOMATIC else request.schedule,
        "CFG scale": request.guidance_scale,
        "Seed": seed,
        "Size": f"{size[0]}x{size[1]}",
        "Model": model.name,
    }
    if request.task != Task.TXT2IMG:
        params["Denoising strength"] = request.strength
    if request.task == Task.INPAINT:
        params["Mask blur"] = request.mask_blur
        if request.only_masked:
            params["Inpaint area"] = "Only masked"
            params["Masked area padding"] = request.padding
    return format_infotext(request.prompt, request.negative_prompt, params)
