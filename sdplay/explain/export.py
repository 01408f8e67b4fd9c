"""An Explain run as one .safetensors file that works without the model: for a class to replay, or a notebook.

Contract: tensors `image` uint8 [H,W,3], `latents` and `x0` float [S,C,h,w], `attention` float [S,T,h,w] (start to
end token, conditional branch, averaged over heads and layers); string metadata `tokens` and `recipe` (JSON).
The rest (per-block maps, ε, the negative branch, the schedule) is what the view needs to redraw every panel.
"""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from sdplay.errors import UserError
from sdplay.explain.capture import ExplainRun

FORMAT = "sdplay-explain/1"
STEP_TENSORS = ["latents", "x0", "eps_cond", "eps_uncond", "guidance", "timesteps", "sigmas"]


def save_run(run: ExplainRun, path: str | Path) -> Path:
    tensors = {name: getattr(run, name).contiguous() for name in STEP_TENSORS}
    tensors["image"] = torch.from_numpy(run.image.copy())
    tensors["attention"] = run.averaged_attention().half()
    tensors["latent_rgb"] = run.latent_rgb
    for block, maps in run.attention.items():
        tensors[f"attention.{block}"] = maps
    for block, maps in run.negative_attention.items():
        tensors[f"negative_attention.{block}"] = maps
    if run.mask is not None:
        tensors["mask"], tensors["blended"] = run.mask, run.blended
    metadata = {
        "format": FORMAT,
        "tokens": json.dumps(run.tokens, ensure_ascii=False),
        "negative_tokens": json.dumps(run.negative_tokens, ensure_ascii=False),
        "recipe": json.dumps(run.recipe, ensure_ascii=False),
        "layers": json.dumps(run.layers),
        "unet_calls": str(run.unet_calls),
        "first_step": str(run.first_step),
    }
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(path), metadata=metadata)
    return Path(path)


def load_run(path: str | Path) -> ExplainRun:
    """Read a file written by `save_run`; anything else is a `UserError` (uploads are untrusted)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise UserError(f"This is not an sdplay Explain file (format {metadata.get('format')!r}).")
        tensors = load_file(str(path))
        layers = json.loads(metadata["layers"])
        run = ExplainRun(
            image=tensors["image"].numpy(),
            tokens=json.loads(metadata["tokens"]),
            negative_tokens=json.loads(metadata["negative_tokens"]),
            recipe=json.loads(metadata["recipe"]),
            attention={block: tensors[f"attention.{block}"] for block in layers},
            negative_attention={
                b: tensors[f"negative_attention.{b}"] for b in layers if f"negative_attention.{b}" in tensors
            },
            layers=layers,
            latent_rgb=tensors["latent_rgb"],
            unet_calls=int(metadata["unet_calls"]),
            first_step=int(metadata["first_step"]),
            mask=tensors.get("mask"),
            blended=tensors.get("blended"),
            **{name: tensors[name] for name in STEP_TENSORS},
        )
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as error:
        if isinstance(error, UserError):
            raise
        raise UserError(f"Could not read this Explain file: {error.__class__.__name__}: {error}") from error
    _check(run)
    return run


def _check(run: ExplainRun) -> None:
    """Shapes must agree, or the view would fail later with an obscure error."""
    steps = run.steps
    for name in ("latents", "x0", "eps_cond", "eps_uncond", "guidance"):
        if getattr(run, name).ndim != 4 or len(getattr(run, name)) != steps:
            raise UserError(f"Explain file: {name} does not have {steps} steps of [C, h, w] latents.")
    for block, maps in run.attention.items():
        if maps.ndim != 4 or maps.shape[:2] != (steps, len(run.tokens) + 1):
            raise UserError(f"Explain file: the attention of {block} does not match {len(run.tokens)} tokens.")
    if run.image.ndim != 3 or run.image.shape[-1] != 3:
        raise UserError("Explain file: the image is not [H, W, 3].")
