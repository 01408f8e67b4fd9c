"""What the UNet predicts at each call: the noise for each guidance branch and the clean latents x̂₀ it implies.

diffusers' step callback sees only the latents, so we listen on the UNet itself (a forward hook, removed afterwards).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline


@dataclass(frozen=True)
class Prediction:
    """One UNet call. Latent tensors are [batch, C, h, w]; `eps_uncond` is None when guidance is off."""

    call: int  # counts UNet calls, not steps: Heun-type samplers call twice per step
    timestep: float
    alpha_bar: float  # ᾱ_t: the share of signal variance left at this timestep
    x_t: torch.Tensor  # the noisy latent the UNet saw (variance-preserving scale)
    eps_cond: torch.Tensor
    eps_uncond: torch.Tensor | None
    eps: torch.Tensor  # the guided prediction the sampler uses
    x0: torch.Tensor  # predicted clean latent


def alpha_bar_at(alphas_cumprod: torch.Tensor, timestep: float) -> float:
    """ᾱ at a possibly fractional timestep (Karras-sigma samplers), interpolated in log σ as they do."""
    log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log()
    t = min(max(float(timestep), 0.0), len(alphas_cumprod) - 1.0)
    low = int(t)
    high = min(low + 1, len(alphas_cumprod) - 1)
    log_sigma = torch.lerp(log_sigmas[low], log_sigmas[high], t - low)
    return float(1 / (1 + log_sigma.exp() ** 2))


def clean_latents(x_t: torch.Tensor, output: torch.Tensor, alpha_bar: float, prediction_type: str) -> torch.Tensor:
    """x̂₀ from the UNet output, for each way a model can be trained to predict."""
    if prediction_type == "epsilon":
        return (x_t - (1 - alpha_bar) ** 0.5 * output) / alpha_bar**0.5
    if prediction_type == "v_prediction":
        return alpha_bar**0.5 * x_t - (1 - alpha_bar) ** 0.5 * output
    return output  # "sample": the model predicts x̂₀ itself


@contextmanager
def watch_predictions(pipe: DiffusionPipeline, on_prediction: Callable[[Prediction], None]) -> Iterator[None]:
    """Call `on_prediction` after every UNet call of `pipe` while the block runs; the hook is always removed."""
    alphas_cumprod = pipe.scheduler.alphas_cumprod.float()
    prediction_type = pipe.scheduler.config.prediction_type
    latent_channels = pipe.vae.config.latent_channels
    calls = 0

    def hook(module, args, kwargs, output) -> None:
        nonlocal calls
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        timestep = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        # Inpainting UNets also see the mask and masked image: the latent is the first channels.
        x_t = sample[:, :latent_channels].float()
        out = (output[0] if isinstance(output, tuple) else output.sample).float()
        eps_uncond = None
        if pipe.do_classifier_free_guidance:
            x_t = x_t.chunk(2)[1]
            eps_uncond, eps_cond = out.chunk(2)
            eps = eps_uncond + pipe.guidance_scale * (eps_cond - eps_uncond)
        else:
            eps_cond = eps = out
        alpha_bar = alpha_bar_at(alphas_cumprod, timestep)
        x0 = clean_latents(x_t, eps, alpha_bar, prediction_type)
        on_prediction(Prediction(calls, timestep, alpha_bar, x_t, eps_cond, eps_uncond, eps, x0))
        calls += 1

    handle = pipe.unet.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
