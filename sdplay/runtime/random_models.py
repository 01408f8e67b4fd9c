"""Random-weight Stable Diffusion pipelines built in code: tiny ones for tests, SD 1.5-sized ones for benchmarks.

Nothing is downloaded; each is saved as a normal diffusers folder (safetensors) that the model manager loads.
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sdplay.runtime.tokenizer import build_clip_tokenizer

# Stable Diffusion 1.5's own scheduler config (its model_index.json names PNDM).
SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    skip_prk_steps=True,
    steps_offset=1,
    set_alpha_to_one=False,
)


def _text_encoder(tokenizer, hidden_size: int, layers: int, heads: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _save(folder: Path, unet, vae, text_encoder, tokenizer) -> Path:
    """Assemble the components with SD 1.5's scheduler and save them as a diffusers folder (safetensors)."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def tiny_pipeline(folder: Path, inpainting: bool = False, seed: int = 0) -> Path:
    """A ~1 MB pipeline with SD's layout (VAE factor 8, cross-attention UNet) and native size 64×64."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(Path(folder) / "tokenizer", words=["cat", "dog", "red"])
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9 if inpainting else 4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = _vae((4, 4, 4, 4), layers_per_block=1, sample_size=64, norm_num_groups=2)
    return _save(folder, unet, vae, _text_encoder(tokenizer, hidden_size=16, layers=2, heads=2), tokenizer)


def _vae(channels: tuple[int, ...], layers_per_block: int, sample_size: int, **options) -> AutoencoderKL:
    """A VAE of SD's shape (four levels, 4 latent channels) with `channels` per level."""
    return AutoencoderKL(
        block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=layers_per_block,
        sample_size=sample_size,
        **options,
    )


def sd15_pipeline(folder: Path, seed: int = 0) -> Path:
    """Stable Diffusion 1.5's architecture (860 M-parameter UNet, full VAE, 12-layer text encoder), random weights."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(Path(folder) / "tokenizer")
    unet = UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
    )
    vae = _vae((128, 256, 512, 512), layers_per_block=2, sample_size=512)
    return _save(folder, unet, vae, _text_encoder(tokenizer, hidden_size=768, layers=12, heads=12), tokenizer)
