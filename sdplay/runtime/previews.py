"""Free previews of latents: a linear map from latent channels to RGB, fitted to the model's own VAE.

A1111 ships hand-fitted coefficients for SD 1.x; fitting at load time gives the same for any VAE, ours included.
"""

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image


def fit_latent_rgb(vae: AutoencoderKL, size: int = 128, seed: int = 0) -> torch.Tensor:
    """A [C+1, 3] least-squares map from scaled latents (plus a bias) to RGB in [-1, 1].

    It encodes one image of random colour blocks and regresses each latent pixel on the colour of its patch.
    """
    generator = torch.Generator().manual_seed(seed)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    blocks = torch.rand(1, 3, size // 16, size // 16, generator=generator) * 2 - 1
    image = torch.nn.functional.interpolate(blocks, size=(size, size), mode="nearest")
    parameter = next(vae.parameters())
    with torch.no_grad():
        latents = vae.encode(image.to(parameter.device, parameter.dtype)).latent_dist.mean
    latents = latents.float().cpu() * vae.config.scaling_factor
    target = torch.nn.functional.avg_pool2d(image, factor)
    x = torch.cat([latents[0].flatten(1), torch.ones(1, latents[0, 0].numel())]).T
    y = target[0].flatten(1).T
    return torch.linalg.lstsq(x, y).solution


def latents_to_rgb(latents: torch.Tensor, latent_rgb: torch.Tensor) -> Image.Image:
    """A preview of one latent [C, h, w] as an h×w RGB image.

    It stays at latent size: scaled up 8 times it took longer to encode as PNG than a GPU takes for a step, and a
    browser scales an image up for free.
    """
    # Weights and bias apart: a concatenated bias row made torch split this tiny einsum over threads (slow when busy).
    rgb = torch.einsum("chw,cr->hwr", latents.float().cpu(), latent_rgb[:-1]) + latent_rgb[-1]
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))
