"""Explain's "Decode x̂₀": the exact images of a run's predicted clean latents, decoded with the model's VAE.

The decoding runs the model, so it is a job like a generation: `decode_latents` goes through the executor (the job
thread here, the GPU worker on ZeroGPU), one job at a time, stopped by its session's Stop between two latents.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobControl, JobSpec
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import Limits

if TYPE_CHECKING:
    from sdplay.explain.capture import ExplainRun
    from sdplay.explain.render import ExplainView

# VAE decodes per press of "Decode x̂₀" (each costs more than a UNet step): longer runs get this many, spread out.
MAX_DECODED = 30
# Explain decodes x̂₀ by itself after a run when one decode costs less than this, in decoder parameters × output
# pixels (a proxy for its work): the bundled shapes model's VAE at 64² is 1.7e9 (15 ms a decode on a 2-core CPU),
# and its linear preview is a poor likeness (brown for red, a blue halo). SD's VAE at 512² is 1.3e13: a press.
AUTO_DECODE_WORK = 1e10


@dataclass(frozen=True)
class DecodeRequest:
    """Latents of one Explain run to decode (picklable: it crosses the executor boundary)."""

    model: str  # the model that made the run: another model's VAE would decode it wrongly
    steps: tuple[int, ...]  # the run's step of each latent
    latents: torch.Tensor  # [len(steps), C, h, w] on the CPU, in the UNet's scaled space


@dataclass(frozen=True)
class Decoded:
    """One decoded latent, as the job streams it."""

    step: int
    image: Image.Image


def decode_order(steps: int, first: int, limit: int = MAX_DECODED) -> list[int]:
    """The steps to decode, `first` (the one on screen) first: all of them, or `limit` spread over the run."""
    spread = range(steps) if steps <= limit else np.linspace(0, steps - 1, limit).round().astype(int).tolist()
    return [first, *(step for step in spread if step != first)][:limit]


def cheap_to_decode(vae, pixels: int) -> bool:
    """Whether decoding x̂₀ of every step of a run of `pixels` output pixels is cheap enough to do unasked."""
    decoder = sum(parameter.numel() for parameter in vae.decoder.parameters())  # the meta device's too (Ray's front)
    return decoder * pixels <= AUTO_DECODE_WORK


def decodes_unasked(manager: ModelManager, run: ExplainRun) -> bool:
    """Whether x̂₀ of `run` is decoded without a press: the loaded model made it, and its VAE is cheap."""
    model = manager.model
    pixels = run.image.shape[0] * run.image.shape[1]
    return run.recipe.model == model.name and cheap_to_decode(model.pipe.vae, pixels)


def decode_x0_if_cheap(manager: ModelManager, view: ExplainView, limits: Limits, owner: str | None) -> None:
    """Decode `view`'s x̂₀s where `decodes_unasked` says so, waiting for them; an error keeps the linear preview."""
    if decodes_unasked(manager, view.run):
        with suppress(UserError):
            for _ in decode_x0(manager, view, view.run.steps - 1, limits, owner):
                pass


def decode_x0(manager: ModelManager, view: ExplainView, first: int, limits: Limits, owner: str | None) -> Iterator[int]:
    """Decode the x̂₀s of `view`'s run (`decode_order`, from the 0-based step `first`) as one job on the manager's
    executor, `owner`'s to stop; keep each image in the view, and yield its step."""
    run = view.run
    order = decode_order(run.steps, first)
    request = DecodeRequest(run.recipe.model, tuple(order), run.x0[order])
    for item in manager.executor.run(JobSpec(decode_latents, request, limits, owner)):
        if isinstance(item, Decoded):
            view.keep_decoded(item.step, item.image)
            yield item.step


def vae_decode(vae, latents: torch.Tensor) -> Image.Image:
    """Decode one [C, h, w] latent (in the UNet's scaled space) with a diffusers VAE: the exact x̂₀ image."""
    parameter = next(vae.parameters())
    with torch.no_grad():
        scaled = latents[None].to(parameter.device, parameter.dtype) / vae.config.scaling_factor
        pixels = vae.decode(scaled).sample[0].float().cpu()
    array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def decode_latents(
    manager: ModelManager, request: DecodeRequest, limits: Limits = Limits(), control: JobControl = JobControl()
) -> int:
    """Decode each latent of `request` with the loaded model's VAE, handing each image to `control.on_step` as it is
    done; return how many were decoded. A Stop (its cancel flag, or `manager.interrupt(owner)`) ends it before the
    next one."""
    if len(request.steps) > MAX_DECODED or len(request.steps) != len(request.latents):
        raise UserError(f"Decode at most {MAX_DECODED} steps, one latent each.")
    with manager.job(control) as job:
        model = manager.model
        if model.name != request.model:
            raise UserError(f"The loaded model ({model.name}) did not make this run: x̂₀ keeps the linear preview.")
        done = 0
        for step, latents in zip(request.steps, request.latents, strict=True):
            if job.cancel.is_set():
                break
            decoded = Decoded(step, vae_decode(model.pipe.vae, latents))
            if control.on_step is not None:
                control.on_step(decoded)
            done += 1
        return done
