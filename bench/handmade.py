"""Explain runs and files made by hand, not by a model: a small run in the export's contract, safetensors files
written or edited byte by byte, and a PNG whose header lies about its size.

The tests that refuse hostile uploads build them here, and bench/classroom.py's hostile client sends the same ones.
"""

import io
import json
import struct
import zlib

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from sdplay.explain.capture import ExplainRun, Recipe


def synthetic_run(steps: int = 1, tokens: int = 3, latent: tuple[int, int, int] = (4, 2, 2)) -> ExplainRun:
    """A small run built in memory, in the export's contract, with `tokens` tokens from start to end token."""
    channels, h, w = latent
    names = ["<|startoftext|>", *[f"w{i}</w>" for i in range(tokens - 2)], "<|endoftext|>"]
    shape = (steps, channels, h, w)
    recipe = Recipe(
        task="txt2img", prompt="w", negative_prompt="", sampler="Euler", schedule="Automatic", steps=steps,
        guidance_scale=7.0, seed=1, width=8 * w, height=8 * h, model="tiny",
        model_facts={"vae_factor": 8, "latent_channels": channels},
    )  # fmt: skip
    return ExplainRun(
        image=np.zeros((8 * h, 8 * w, 3), dtype=np.uint8), tokens=names, negative_tokens=names[:1] + names[-1:],
        recipe=recipe, timesteps=torch.arange(steps, 0, -1).float(), sigmas=torch.ones(steps),
        latents=torch.zeros(shape), x0=torch.zeros(shape), eps_cond=torch.zeros(shape), eps_uncond=torch.zeros(shape),
        guidance=torch.zeros(shape),
        attention={"mid_block": torch.full((steps, tokens + 1, 1, 1), 1 / (tokens + 1)).half()},
        negative_attention={}, layers={"mid_block": 1}, latent_rgb=torch.ones(channels + 1, 3), unet_calls=steps,
        first_step=0,
    )  # fmt: skip


def write_safetensors(path, header: dict, data: bytes = b"") -> str:
    """A safetensors file written by hand: 8 bytes of header length, the JSON header, the data."""
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return str(path)


def edited(path, **metadata: str) -> str:
    """The file at `path` with some metadata entries replaced, its tensors unchanged."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        old = f.metadata()
    save_file(tensors, str(path), metadata=old | metadata)
    return str(path)


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1×1 PNG whose IHDR says width×height: Pillow sees the size before decoding any pixel data."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # Signature (8 bytes), then the IHDR chunk: length, b"IHDR", width, height, 5 more bytes, CRC over type+data.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(data[12:29]))
    return bytes(data)
