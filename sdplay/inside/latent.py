"""The Inside tab's latent space: how much the VAE compresses an image, an encode → decode round trip of any image
with its error map and PSNR, and a latent's channels as images.

The compression and the run's channels need no model; the round trip runs the loaded model's VAE, as a job.
"""

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sdplay.compare.comparison import difference_gain, difference_image
from sdplay.explain.captions import Caption, ModelFacts
from sdplay.explain.decoding import vae_decode
from sdplay.runtime.executor import JobControl
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import Limits

# The section's text for students.
INTRO = Caption(
    "Stable Diffusion does not paint pixels: a VAE squeezes the image into a small latent, the UNet denoises that "
    "latent, and the VAE's decoder turns the last one back into pixels.",
    "A **VAE** (variational autoencoder) is two networks trained together: an encoder that shrinks an image to a "
    "grid of a few numbers per patch of pixels, and a decoder that rebuilds the image from them, as faithfully as "
    "it can. Its latent keeps what matters for the look of the image (shapes, colours, layout) and drops exact "
    "pixel detail. Diffusion then happens on this latent, which is far cheaper than on pixels: that is the "
    "*latent* of Latent Diffusion, the paper behind Stable Diffusion. **PSNR** (peak signal-to-noise ratio) "
    "measures a round trip's error: 10·log10(255² / the mean squared error of the pixels), in decibels; higher is "
    "closer, and every 6 dB halves the typical error.",
)
CAPTIONS = {
    "compression": "How many numbers the image has, and how many its latent keeps.",
    "channels": "The latent at this step, channel by channel (grey 0, black -3, white +3): x_t and the guess x̂₀.",
    "round_trip": "Your image encoded to a latent and decoded back: left as the VAE read it, right as it came back.",
    "error": "What the round trip lost: |original − decoded| per pixel, amplified; black is no error.",
    "latent": "Your image's latent, channel by channel, on the same grey scale as the run's.",
}
# Latents are drawn on one fixed grey scale, so that steps, runs and the round trip compare: the VAE's scaling
# factor is chosen to give an image's latent about unit variance, so ±3 holds nearly all of it (x_t too: it mixes
# that latent with unit noise). Beyond it, black or white.
CHANNEL_SCALE = 3.0
TILE = 160  # pixels per channel tile, at most
FONT = 18
TEXT = (40, 40, 40)


@dataclass(frozen=True)
class Compression:
    """An image of width × height RGB pixels and its latent of channels × (height / f) × (width / f) numbers."""

    width: int
    height: int
    vae_factor: int  # pixels per latent position along each side
    channels: int  # numbers per latent position

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of the latent."""
        return self.height // self.vae_factor, self.width // self.vae_factor

    @property
    def pixel_values(self) -> int:
        return self.width * self.height * 3

    @property
    def latent_values(self) -> int:
        h, w = self.latent_size
        return self.channels * h * w

    @property
    def factor(self) -> float:
        """How many times fewer numbers the latent has: 48 for Stable Diffusion at 512×512."""
        return self.pixel_values / self.latent_values

    def describe(self) -> str:
        """Markdown: both counts and the factor, worked out."""
        h, w = self.latent_size
        return (
            f"**{self.width}×{self.height} pixels × 3 colours = {self.pixel_values:,} numbers** → the VAE's latent: "
            f"**{self.channels} channels × {h}×{w} = {self.latent_values:,} numbers**, {self.factor:.3g}× fewer. "
            f"Each latent position stands for a {self.vae_factor}×{self.vae_factor} patch of pixels "
            f"({self.vae_factor**2 * 3} numbers) and holds {self.channels}. Every denoising step runs on the "
            "latent, not on the pixels: that is why Stable Diffusion fits on one consumer GPU."
        )


def compression(facts: ModelFacts, width: int, height: int) -> Compression:
    """The compression of a `width` × `height` image by the VAE whose numbers `facts` gives (from the loaded model's
    config, or recorded with a run)."""
    return Compression(width, height, facts.vae_factor, facts.latent_channels)


def vae_size(width: int, height: int, factor: int, cap: int) -> tuple[int, int]:
    """An image's size for the VAE: shrunk to fit `cap` × `cap` (aspect kept), each side cut to a multiple of the
    VAE's `factor` (its encoder halves the image that many times over), at least one factor."""
    scale = min(1.0, cap / max(width, height))
    return tuple(max(factor, int(side * scale) // factor * factor) for side in (width, height))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB: 10·log10(255² / mean squared error); inf if equal."""
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if error == 0 else 10 * math.log10(255**2 / error)


@dataclass(frozen=True)
class RoundTripRequest:
    """An image to encode and decode with the loaded model's VAE (picklable: it crosses the executor boundary)."""

    image: np.ndarray  # uint8 [H, W, 3], at most the server's max size on each side


@dataclass(frozen=True)
class RoundTrip:
    model: str
    original: np.ndarray  # uint8 [H, W, 3]: the image as the VAE read it (resized to a multiple of its factor)
    decoded: np.ndarray  # uint8 [H, W, 3]
    latent: torch.Tensor  # [C, h, w]: the encoder's mean, scaled into the UNet's space
    compression: Compression

    @property
    def psnr(self) -> float:
        return psnr(self.original, self.decoded)

    def error(self) -> tuple[Image.Image, int]:
        """The error map (|original − decoded|, the largest of its channels, amplified) and its amplification."""
        gain = difference_gain(self.original, self.decoded)
        return difference_image(self.original, self.decoded, gain), gain

    def describe(self) -> str:
        """Markdown: the PSNR, what it means, and the size the VAE read."""
        error = np.abs(self.original.astype(np.int16) - self.decoded.astype(np.int16))
        height, width = self.original.shape[:2]
        return (
            f"**PSNR {self.psnr:.1f} dB** · mean error {error.mean():.1f} of 255 · {width}×{height} through "
            f"{self.model}'s VAE ({self.compression.factor:.3g}× fewer numbers in the latent). Above about 30 dB the "
            "two look alike; what a VAE loses is mostly fine detail, texture and small text."
        )


def round_trip(
    manager: ModelManager, request: RoundTripRequest, limits: Limits = Limits(), control: JobControl = JobControl()
) -> RoundTrip:
    """Encode the image with the loaded model's VAE (the mean of its latent distribution: no sampling noise) and
    decode it back, as the pipeline decodes its final latent."""
    with manager.job(control):
        model = manager.model
        pipe = model.pipe
        facts = ModelFacts.of_pipeline(pipe)
        image = Image.fromarray(request.image).convert("RGB")
        size = vae_size(image.width, image.height, facts.vae_factor, limits.max_size)
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        original = np.array(image)  # a copy: torch refuses read-only arrays
        vae = pipe.vae
        parameter = next(vae.parameters())
        pixels = torch.from_numpy(original).permute(2, 0, 1).float() / 127.5 - 1
        with torch.no_grad():
            encoded = vae.encode(pixels[None].to(parameter.device, parameter.dtype)).latent_dist.mode()
        latent = (encoded[0] * vae.config.scaling_factor).float().cpu()
        decoded = np.asarray(vae_decode(vae, latent))
        return RoundTrip(model.name, original, decoded, latent, compression(facts, *size))


@functools.cache
def loaded_font(size: int) -> ImageFont.FreeTypeFont:
    """The default font at `size` pixels, loaded once: the sheet is redrawn at every step the slider stops at."""
    return ImageFont.load_default(size)


def channel_sheet(rows: list[tuple[str, np.ndarray]], title: str) -> Image.Image:
    """Latents [C, h, w] as grey tiles, one row per latent and one column per channel (mid-grey 0, black −3, white
    +3 and beyond), each latent position a square, with their names: channel by channel, what the UNet works on."""
    channels, height, width = rows[0][1].shape
    zoom = max(1, min(TILE, 640 // channels) // max(height, width))
    font, small = loaded_font(FONT), loaded_font(15)
    left = int(max(font.getlength(name) for name, _ in rows)) + 16
    gap, top = 8, 58
    tile_w, tile_h = width * zoom, height * zoom
    sheet = Image.new("RGB", (left + channels * (tile_w + gap), top + len(rows) * (tile_h + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), title, fill=TEXT, font=font)
    for c in range(channels):
        draw.text(
            (left + c * (tile_w + gap) + tile_w // 2, top - 6), f"channel {c + 1}", fill=TEXT, font=small, anchor="mb"
        )
    for r, (name, latent) in enumerate(rows):
        y = top + r * (tile_h + gap)
        draw.text((left - 10, y + tile_h // 2), name, fill=TEXT, font=font, anchor="rm")
        grey = ((np.clip(latent / CHANNEL_SCALE, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        for c in range(channels):
            tile = Image.fromarray(grey[c].repeat(zoom, 0).repeat(zoom, 1))
            sheet.paste(tile, (left + c * (tile_w + gap), y))
    return sheet
