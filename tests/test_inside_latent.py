"""The Inside tab's latent space, against independent computations: the compression from the VAE's config and the
recorded latents' shape, PSNR by hand, a round trip done with diffusers' VAE calls directly, and the channel tiles."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sdplay.explain.captions import ModelFacts
from sdplay.explain.capture import explain
from sdplay.explain.render import ExplainView, run_facts
from sdplay.inside.latent import (
    CHANNEL_SCALE,
    Compression,
    RoundTripRequest,
    channel_sheet,
    compression,
    psnr,
    round_trip,
    vae_size,
)
from sdplay.inside.latent_ui import channels_at, compression_text
from sdplay.runtime.request import GenerationRequest, Limits


@pytest.fixture(scope="module")
def run(shapes):
    return explain(shapes, GenerationRequest(prompt="a large red circle on the left", sampler="Euler", steps=3, seed=1))


def test_stable_diffusion_compresses_512_pixels_48_times():
    sd15 = compression(ModelFacts(vae_factor=8, latent_channels=4), 512, 512)
    assert (sd15.pixel_values, sd15.latent_values, sd15.factor) == (786_432, 16_384, 48.0)
    assert "786,432 numbers" in sd15.describe() and "4 channels × 64×64 = 16,384 numbers" in sd15.describe()
    assert "48× fewer" in sd15.describe()


def test_the_compression_comes_from_the_models_vae_config_and_the_runs_size(shapes, run):
    vae = shapes.model.pipe.vae
    factor = 2 ** (len(vae.config.block_out_channels) - 1)  # each encoder block but the last halves the image
    facts = ModelFacts.of_pipeline(shapes.model.pipe)
    assert (facts.vae_factor, facts.latent_channels) == (factor, vae.config.latent_channels) == (4, 4)
    measured = compression(run_facts(run), run.recipe.width, run.recipe.height)
    assert measured == Compression(64, 64, 4, 4)
    assert measured.pixel_values == run.image.size and measured.latent_values == run.latents[0].numel()
    assert measured.factor == 12.0 and "12× fewer" in compression_text(ExplainView(run), shapes)


def test_psnr_is_the_hand_computed_one():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    assert psnr(a, a + 5) == pytest.approx(10 * math.log10(255**2 / 25))
    rng = np.random.default_rng(0)
    b, c = (rng.integers(0, 256, (8, 6, 3), dtype=np.uint8) for _ in range(2))
    mse = sum((int(x) - int(y)) ** 2 for x, y in zip(b.ravel(), c.ravel(), strict=True)) / b.size
    assert psnr(b, c) == pytest.approx(10 * math.log10(255**2 / mse))
    assert psnr(b, b) == math.inf


def test_images_are_sized_to_the_vae_factor_within_the_cap():
    assert vae_size(1000, 600, 8, 512) == (512, 304)  # 600 × 0.512 = 307.2 -> 304
    assert vae_size(70, 50, 4, 1024) == (68, 48)
    assert vae_size(3, 3, 8, 1024) == (8, 8)


def test_the_round_trip_is_diffusers_encode_then_decode(shapes, run):
    trip = round_trip(shapes, RoundTripRequest(run.image))
    assert np.array_equal(trip.original, run.image)  # 64×64: already a multiple of the factor 4
    vae = shapes.model.pipe.vae
    with torch.no_grad():
        pixels = torch.from_numpy(run.image.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
        mean = vae.encode(pixels).latent_dist.mean
        decoded = vae.decode(mean).sample[0]
    expected = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert torch.allclose(trip.latent, mean[0] * vae.config.scaling_factor)
    assert np.abs(trip.decoded.astype(int) - expected.astype(int)).max() <= 1
    error = np.mean((run.image.astype(float) - trip.decoded.astype(float)) ** 2)
    assert trip.psnr == pytest.approx(10 * math.log10(255**2 / error))
    assert trip.psnr > 25  # the bundled VAE rebuilds its own world's pictures closely
    assert f"PSNR {trip.psnr:.1f} dB" in trip.describe()
    error_map, gain = trip.error()
    assert error_map.size == (64, 64) and gain >= 1


def test_the_round_trip_resizes_an_upload_to_the_vae_and_the_servers_cap(shapes):
    upload = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    trip = round_trip(shapes, RoundTripRequest(upload), Limits(max_size=64))
    assert trip.original.shape == trip.decoded.shape == (44, 64, 3)  # 50·64/70 = 45.7 -> 44, a multiple of 4
    assert tuple(trip.latent.shape) == (4, 11, 16) and trip.compression.latent_size == (11, 16)


def find(sheet: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    """Where `tile` appears in `sheet` (both 2-D), found by its first row, then checked whole."""
    height, width = tile.shape
    found = []
    for y in range(sheet.shape[0] - height + 1):
        row = sheet[y]
        for x in np.flatnonzero(row[: len(row) - width + 1] == tile[0, 0]):
            if np.array_equal(sheet[y : y + height, x : x + width], tile):
                found.append((y, int(x)))
    return found


def test_channel_tiles_are_the_latent_on_a_fixed_grey_scale():
    latent = np.zeros((2, 3, 4), dtype=np.float32)
    latent[0] = np.linspace(-4, 4, 12).reshape(3, 4)  # beyond ±3 too: clipped
    latent[1, 1, 2] = 1.5
    sheet = np.asarray(channel_sheet([("x", latent)], "Test").convert("L"))
    expected = ((np.clip(latent / CHANNEL_SCALE, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    assert expected[0].min() == 0 and expected[0].max() == 255 and expected[1, 0, 0] == 128
    zoom = 160 // 4
    for channel in expected:
        tile = channel.repeat(zoom, 0).repeat(zoom, 1)
        assert len(find(sheet, tile)) == 1


def test_the_runs_channels_follow_the_explain_step(run):
    view = ExplainView(run)
    sheet = np.asarray(channels_at(view, 2).convert("L"))  # the slider is 1-based: step 2 is index 1
    zoom = 160 // 16
    for latents in (run.latents[1], run.x0[1]):
        grey = ((np.clip(latents.numpy() / CHANNEL_SCALE, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        assert len(find(sheet, grey[3].repeat(zoom, 0).repeat(zoom, 1))) == 1
    other = ((np.clip(run.latents[0, 3].numpy() / CHANNEL_SCALE, -1, 1) + 1) * 127.5).round().astype(np.uint8)
    assert not find(sheet, other.repeat(zoom, 0).repeat(zoom, 1))  # another step's x_t is not shown
    assert Image.fromarray(sheet).size[0] <= 760
