"""Train the bundled shapes model: a tiny Stable Diffusion (VAE, CLIP text encoder, UNet) on the synthetic world.

Run `python -m sdplay.shapes.train [--key=value ...]`; it resumes from `out_dir` and finally writes `final_dir`.
"""

# ruff: noqa: E402  (the OpenMP setting must precede importing torch)
import os

# Passive OpenMP threads: on a busy 2-core machine, spinning threads made each step up to 20x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import ast
import copy
import json
import math
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from sdplay.catalog import SETTINGS_FILE
from sdplay.shapes.evaluate import measure
from sdplay.shapes.world import POSITIONS, RECOMMENDED_SETTINGS, VOCABULARY, render, sample_scene
from sdplay.tokenizer import build_clip_tokenizer

# -----------------------------------------------------------------------------
# config: override any of these with --key=value
seed = 0
threads = 2
out_dir = "/root/.cache/sdplay/shapes-run"  # checkpoints and cached latents, outside the repo
final_dir = "assets/shapes"  # the diffusers folder the app loads
checkpoint_minutes = 3.0
# data
resolution = 64
num_scenes = 16_000  # rendered once; the prompt of each scene is redrawn every time it is used
phrase_drop = 0.2  # chance of leaving out each phrase but the shape, so short prompts work too
empty_prompt = 0.1  # chance of an empty prompt, for classifier-free guidance
# VAE (4x downsampling: 64x64x3 images <-> 16x16x4 latents)
vae_steps = 4000
vae_batch = 16
vae_lr = 2e-3
vae_edge_weight = 1.0  # L1 on image gradients too, which keeps the edges of the shapes sharp
vae_kl_weight = 1e-6
# text encoder + UNet
unet_steps = 6000
unet_batch = 32
unet_lr = 1.5e-3
warmup_steps = 200
ground_weight = 0.1  # TokenCompose-style grounding loss: each word's cross-attention -> its mask
ema_decay = 0.999
# -----------------------------------------------------------------------------
for arg in sys.argv[1:]:
    key, value = arg.removeprefix("--").split("=", 1)
    assert key in globals() and not key.startswith("_"), f"unknown config key {key}"
    globals()[key] = type(globals()[key])(ast.literal_eval(value) if not isinstance(globals()[key], str) else value)

torch.manual_seed(seed)
torch.set_num_threads(threads)
rng = np.random.default_rng(seed)
run = pathlib.Path(out_dir)
run.mkdir(parents=True, exist_ok=True)
checkpoint_path = run / "checkpoint.pt"

# -----------------------------------------------------------------------------
# data: a fixed pool of rendered scenes, with the masks of their words for the grounding loss
data_rng = np.random.default_rng(seed + 1)
scenes = [sample_scene(data_rng) for _ in range(num_scenes)]
rendered = [render(s, resolution) for s in scenes]
images = np.stack([image for image, _ in rendered])
objects = np.stack([masks[s.shape] for s, (_, masks) in zip(scenes, rendered, strict=True)])
regions = np.stack([masks[POSITIONS[s.position][0]] for s, (_, masks) in zip(scenes, rendered, strict=True)])
images = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # [-1, 1]
objects, regions = (torch.from_numpy(m).float()[:, None] for m in (objects, regions))
print(f"rendered {num_scenes} scenes at {resolution}x{resolution}")

tokenizer = build_clip_tokenizer(run / "tokenizer", VOCABULARY)
# Which mask a prompt token is grounded to (0: none). A position word's mask is the region it names, not the
# object: attending to "the left half" needs features that know where they are, which is what placing an object
# on the left needs too.
OBJECT, BACKGROUND, REGION = 1, 2, 3


def draw_prompts(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, 77) of freshly drawn prompts, and each token's grounding role (B, 77)."""
    prompts, roles = [], torch.zeros(len(index), tokenizer.model_max_length, dtype=torch.long)
    for row, i in enumerate(index):
        scene = scenes[i]
        prompt = "" if rng.random() < empty_prompt else scene.prompt(rng, phrase_drop)
        grounded = {scene.size: OBJECT, scene.color: OBJECT, scene.shape: OBJECT, POSITIONS[scene.position][0]: REGION}
        grounded |= {scene.background: BACKGROUND, "background": BACKGROUND}
        for slot, word in enumerate(prompt.split(), start=1):  # every grammar word is one token; slot 0 is BOS
            roles[row, slot] = grounded.get(word, 0)
        prompts.append(prompt)
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    return ids.input_ids, roles


def cosine_lr(step: int, total: int, peak: float) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total - warmup_steps))))


# -----------------------------------------------------------------------------
# models: exactly the Stable Diffusion classes, just small
vae = AutoencoderKL(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),  # few channels at full resolution: flat colours need little, and it is 4x faster
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=resolution,
    mid_block_add_attention=False,  # 16x16 self-attention costs time; single shapes need no global context
)
with torch.no_grad():  # start with a small posterior std: unit noise on the latents stalls the first hundreds of steps
    vae.quant_conv.bias[vae.config.latent_channels :] = -8.0
text_encoder = CLIPTextModel(
    CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        # One layer: each word's output stays close to its own embedding (strong residual), so a word's
        # cross-attention means that word, and the causal mask cannot route the whole prompt into the end token.
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
)
unet = UNet2DConditionModel(
    sample_size=resolution // 4,
    # Four levels, down to 2x2 like SD's 64 -> 8. There, zero padding tells each pixel which quadrant it is in,
    # so the mid block's cross-attention can read "left" into the left pixels: that is where the layout is made.
    # Without it (cross-attention at 16x16 and 8x8 only) position words had no effect at all.
    # 64 channels at 16x16, where a small shape is 4-5 latent pixels wide and its outline is drawn: with 32 the
    # squares came out as wobbly blobs (shape accuracy 0.70, squares 4 of 19).
    block_out_channels=(64, 96, 96, 96),
    layers_per_block=1,
    # The other cross-attention layers at 16x16 and 8x8, which keep the Explain view's maps sharp.
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=64,
    attention_head_dim=4,  # diffusers reads this as the number of heads
    norm_num_groups=16,
)
# v-prediction: at high noise the target is close to the clean latent, so the loss rewards getting the layout
# (position, size) right early; epsilon-prediction gives that almost no weight.
# beta_end 0.025 rather than SD's 0.012: at SD's last step 6.8 % of the clean latent is still in the "pure noise",
# enough for a small model to find the object in it during training. It then learned to place the object wherever
# the starting noise happened to hint, and ignored the position words (position accuracy at chance, and the same
# image for every position phrase at a fixed seed). Here 0.6 % remains: the layout has to come from the prompt.
# (Zero terminal SNR would remove it entirely, but half of the app's samplers cannot follow such a schedule.)
scheduler_config = dict(
    beta_start=0.00085,
    beta_end=0.025,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    steps_offset=1,
)
noise_scheduler = DDPMScheduler(num_train_timesteps=1000, **scheduler_config)
print(
    "parameters: "
    + ", ".join(
        f"{n} {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M"
        for n, m in [("vae", vae), ("unet", unet), ("text", text_encoder)]
    )
)


class GroundedCrossAttention:
    """Cross-attention processor that keeps its attention probabilities (with gradients) for the grounding loss."""

    def __init__(self, store: list[torch.Tensor]):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, None)  # (batch * heads, pixels, tokens)
        self.store.append(probs.unflatten(0, (-1, attn.heads)).mean(1))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


def grounding_loss(
    maps: list[torch.Tensor], roles: torch.Tensor, objects: torch.Tensor, regions: torch.Tensor
) -> torch.Tensor:
    """KL(mask || attention) per grounded token: pulls a word's attention onto its mask, spread over all of it."""
    losses = []
    grounded = roles > 0
    for probs in maps:  # (B, pixels, tokens)
        side = math.isqrt(probs.shape[1])
        obj = F.adaptive_avg_pool2d(objects, side).flatten(1)[:, :, None]  # (B, pixels, 1)
        place = F.adaptive_avg_pool2d(regions, side).flatten(1)[:, :, None]
        role = roles[:, None, :]
        target = torch.where(role == OBJECT, obj, torch.where(role == REGION, place, 1 - obj))
        target = target / target.sum(1, keepdim=True).clamp_min(1e-6)
        attention = probs / probs.sum(1, keepdim=True)
        kl = (target * (torch.log(target + 1e-8) - torch.log(attention + 1e-8))).sum(1)  # (B, tokens)
        losses.append(kl[grounded].mean() if grounded.any() else kl.sum() * 0)
    return torch.stack(losses).mean()


def save_checkpoint(state: dict) -> None:
    """Write atomically, so a kill during the save leaves the previous checkpoint intact."""
    tmp = checkpoint_path.with_suffix(".tmp")
    torch.save(state | {"rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, tmp)
    tmp.replace(checkpoint_path)


state = torch.load(checkpoint_path, weights_only=False) if checkpoint_path.exists() else {"phase": "vae", "step": 0}
if "rng" in state:
    rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"])
if "vae" in state:
    vae.load_state_dict(state["vae"])
print(f"starting at phase {state['phase']}, step {state['step']}")

# -----------------------------------------------------------------------------
# phase 1: the VAE, on the rendered images
vae_opt = torch.optim.AdamW(vae.parameters(), lr=vae_lr, weight_decay=0.0)
if state["phase"] == "vae":
    if "vae_opt" in state:
        vae_opt.load_state_dict(state["vae_opt"])
    vae.train()
    last_save = time.time()
    bar = tqdm(range(state["step"], vae_steps), initial=state["step"], total=vae_steps, desc="vae", mininterval=5)
    for step in bar:
        for group in vae_opt.param_groups:
            group["lr"] = cosine_lr(step, vae_steps, vae_lr)
        index = rng.integers(0, num_scenes, vae_batch)
        x, obj = images[index], objects[index]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        # The object and the background weigh the same in every image: with a plain mean, a small shape is a few
        # percent of the loss, and its colour and corners were the first things the VAE gave up.
        area = obj[0].numel()
        balance = (obj / obj.sum((2, 3), keepdim=True) + (1 - obj) / (1 - obj).sum((2, 3), keepdim=True)) * area / 2
        l1 = ((recon - x).abs() * balance).mean()
        edges = sum((recon.diff(dim=d) - x.diff(dim=d)).abs().mean() for d in (2, 3))
        loss = l1 + vae_edge_weight * edges + vae_kl_weight * posterior.kl().mean()
        loss.backward()
        vae_opt.step()
        vae_opt.zero_grad(set_to_none=True)
        psnr = 10 * math.log10(4 / F.mse_loss(recon.detach(), x).item())
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr:.1f}")
        if time.time() - last_save > checkpoint_minutes * 60:
            save_checkpoint(
                {"phase": "vae", "step": step + 1, "vae": vae.state_dict(), "vae_opt": vae_opt.state_dict()}
            )
            last_save = time.time()
    state = {"phase": "latents", "step": 0, "vae": vae.state_dict()}
    save_checkpoint(state)

# cache the latents once: the UNet phase never runs the VAE
latents_path = run / "latents.pt"
vae.eval()
if latents_path.exists():
    latents = torch.load(latents_path)
else:
    with torch.no_grad():
        chunks = [vae.encode(x).latent_dist.mean for x in tqdm(images.split(256), desc="encode latents")]
    latents = torch.cat(chunks)
    torch.save(latents, latents_path)
scaling_factor = 1 / latents.std().item()
vae.register_to_config(scaling_factor=scaling_factor)
latents = latents * scaling_factor
with torch.no_grad():
    recon = torch.cat([vae.decode(z / scaling_factor).sample for z in latents[:512].split(128)])
psnr = 10 * math.log10(4 / F.mse_loss(recon, images[:512]).item())
print(f"VAE reconstruction PSNR {psnr:.2f} dB, latent scaling factor {scaling_factor:.3f}")
# The evaluation's segmentation on reconstructions of real scenes: an upper bound on what the UNet can score.
read_back = [
    measure(image) for image in recon.add(1).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
]
pairs = list(zip(read_back, scenes[:512], strict=True))
print(
    "VAE round trip, read back by the evaluation: "
    + ", ".join(
        f"{name} {np.mean([getattr(got, name) == getattr(scene, name) for got, scene in pairs]):.2f}"
        for name in ("color", "background", "shape", "size", "position")
    )
)

# -----------------------------------------------------------------------------
# phase 2: the text encoder and the UNet together, on cached latents
params = [*unet.parameters(), *text_encoder.parameters()]
opt = torch.optim.AdamW(params, lr=unet_lr, weight_decay=0.01)
ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
if state["phase"] == "unet":
    for module, key in [
        (unet, "unet"),
        (text_encoder, "text"),
        (ema_unet, "ema_unet"),
        (ema_text, "ema_text"),
        (opt, "opt"),
    ]:
        module.load_state_dict(state[key])


def save_pipeline(folder: str | pathlib.Path) -> None:
    """The EMA weights as a plain diffusers folder (the attention processors are not part of the saved model)."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=ema_text,
        tokenizer=tokenizer,
        unet=ema_unet,
        scheduler=DPMSolverMultistepScheduler(timestep_spacing="trailing", **scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    (pathlib.Path(folder) / SETTINGS_FILE).write_text(json.dumps(RECOMMENDED_SETTINGS, indent=2) + "\n")


maps: list[torch.Tensor] = []
unet.set_attn_processor(
    {name: GroundedCrossAttention(maps) if "attn2" in name else proc for name, proc in unet.attn_processors.items()}
)
unet.train()
text_encoder.train()
last_save = time.time()
start = state["step"] if state["phase"] == "unet" else 0
bar = tqdm(range(start, unet_steps), initial=start, total=unet_steps, desc="unet", mininterval=5)
for step in bar:
    for group in opt.param_groups:
        group["lr"] = cosine_lr(step, unet_steps, unet_lr)
    index = rng.integers(0, num_scenes, unet_batch)
    ids, roles = draw_prompts(index)
    z0 = latents[index]
    noise = torch.randn_like(z0)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (unet_batch,))
    maps.clear()
    prediction = unet(noise_scheduler.add_noise(z0, noise, t), t, text_encoder(ids).last_hidden_state).sample
    diffusion = F.mse_loss(prediction, noise_scheduler.get_velocity(z0, noise, t))
    ground = grounding_loss(maps, roles, objects[index], regions[index])
    loss = diffusion + ground_weight * ground
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    decay = min(ema_decay, (1 + step) / (10 + step))  # short warmup: early EMA weights would be mostly random init
    with torch.no_grad():
        for ema, model in [(ema_unet, unet), (ema_text, text_encoder)]:
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
    bar.set_postfix(loss=f"{loss.item():.4f}", v=f"{diffusion.item():.4f}", ground=f"{ground.item():.3f}")
    if time.time() - last_save > checkpoint_minutes * 60 or step + 1 == unet_steps:
        models = {"unet": unet, "text": text_encoder, "ema_unet": ema_unet, "ema_text": ema_text, "opt": opt}
        save_checkpoint(
            {"phase": "unet", "step": step + 1, "vae": vae.state_dict()}
            | {k: m.state_dict() for k, m in models.items()}
        )
        save_pipeline(run / "preview")  # the model so far, for a look or `bench/shapes_eval.py --model` mid-run
        last_save = time.time()

# -----------------------------------------------------------------------------
save_pipeline(final_dir)
print(f"saved the model to {final_dir}")
