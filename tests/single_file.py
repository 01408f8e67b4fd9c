"""Test helper: write a diffusers SD 1.x folder as one original-layout (LDM) .safetensors checkpoint.

Adapted from diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py; block counts come from the configs.
"""

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_prefixes(config: dict) -> dict[str, str]:
    """Diffusers block prefixes -> LDM ones: input_blocks count every resnet and downsampler, output_blocks likewise."""
    per_block = config["layers_per_block"] + 1  # LDM gives each downsampler (and up block's extra resnet) a slot
    prefixes = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    for i, up_type in enumerate(config["up_block_types"]):
        for j in range(per_block - 1):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{1 + i * per_block + j}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{1 + i * per_block + j}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * per_block}.0.op."
        for j in range(per_block):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * per_block + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * per_block + j}.1."
        # The upsampler follows the last resnet, and its attention if the block has one.
        upsampler = 2 if up_type.startswith("CrossAttn") else 1
        prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * per_block + per_block - 1}.{upsampler}."
    return prefixes


def vae_prefixes(config: dict) -> dict[str, str]:
    """Diffusers VAE prefixes -> LDM ones; LDM numbers the decoder's up blocks in reverse."""
    prefixes = {"conv_norm_out.": "norm_out.", "mid_block.attentions.0.": "mid.attn_1."}
    prefixes |= {f"mid_block.resnets.{j}.": f"mid.block_{j + 1}." for j in range(2)}
    blocks = len(config["block_out_channels"])
    for i in range(blocks):
        for j in range(config["layers_per_block"] + 1):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"down.{i}.block.{j}."
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"up.{blocks - 1 - i}.block.{j}."
        prefixes[f"down_blocks.{i}.downsamplers.0."] = f"down.{i}.downsample."
        prefixes[f"up_blocks.{i}.upsamplers.0."] = f"up.{blocks - 1 - i}.upsample."
    return prefixes


def rename(key: str, prefixes: dict[str, str], inner: dict[str, str]) -> str:
    """Swap the block prefix of `key`; inside the block, rename the layer with `inner`."""
    for old, new in prefixes.items():
        if key.startswith(old):
            rest = key.removeprefix(old)
            for old_layer, new_layer in inner.items():
                if rest.startswith(old_layer + "."):
                    rest = new_layer + rest.removeprefix(old_layer)
            return new + rest
    return key


def convert_unet(weights: dict[str, Tensor], config: dict) -> dict[str, Tensor]:
    prefixes = unet_prefixes(config)
    return {rename(k, prefixes, UNET_RESNET if ".resnets." in k else {}): v for k, v in weights.items()}


def convert_vae(weights: dict[str, Tensor], config: dict) -> dict[str, Tensor]:
    prefixes = vae_prefixes(config)
    converted = {}
    for key, value in weights.items():
        part, rest = key.split(".", 1) if key.startswith(("encoder.", "decoder.")) else ("", key)
        if ".attentions." in rest:
            value = value.reshape(*value.shape, 1, 1) if value.ndim == 2 else value  # LDM uses 1×1 convolutions
            rest = rename(rest, prefixes, VAE_ATTENTION)
        else:
            rest = rename(rest, prefixes, VAE_RESNET if ".resnets." in rest else {})
        converted[f"{part}.{rest}" if part else rest] = value
    return converted


def save_original_checkpoint(diffusers_folder: Path, out_file: Path) -> None:
    """Save the UNet, VAE and CLIP text encoder of `diffusers_folder` under SD 1.x's original key names."""

    def part(name: str, weights_file: str) -> tuple[dict[str, Tensor], dict]:
        folder = Path(diffusers_folder) / name
        return load_file(folder / weights_file), json.loads((folder / "config.json").read_text())

    unet = convert_unet(*part("unet", "diffusion_pytorch_model.safetensors"))
    vae = convert_vae(*part("vae", "diffusion_pytorch_model.safetensors"))
    text_encoder, _ = part("text_encoder", "model.safetensors")
    checkpoint = {f"model.diffusion_model.{k}": v for k, v in unet.items()}
    checkpoint |= {f"first_stage_model.{k}": v for k, v in vae.items()}
    # transformers >= 5.6 saves CLIPTextModel without its `text_model.` level; the original layout has it.
    checkpoint |= {
        f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}": v for k, v in text_encoder.items()
    }
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, out_file)
