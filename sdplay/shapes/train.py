"""Train the bundled shapes model: a tiny Stable Diffusion (VAE, CLIP text encoder, UNet) on the synthetic world.

Run `python -m sdplay.shapes.train [--key=value ...]`; it resumes from `out_dir` and finally writes `final_dir`.
With `--init_from=assets/shapes` it fine-tunes a trained model instead: its VAE is kept, and its text encoder and
UNet start the second phase (words new to the grammar start at the mean of the known words' embeddings).
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
from sdplay.shapes.evaluate import measure, measure_objects
from sdplay.shapes.world import MASKS, RECOMMENDED_SETTINGS, VOCABULARY, paint, sample_pair, sample_scene
from sdplay.tokenizer import build_clip_tokenizer

# -----------------------------------------------------------------------------
# config: override any of these with --key=value
seed = 0
threads = 2
out_dir = "/root/.cache/sdplay/shapes-run"  # checkpoints and cached latents, outside the repo
final_dir = "assets/shapes"  # the diffusers folder the app loads
init_from = ""  # a trained shapes model folder to fine-tune (skips the VAE phase); empty: train from nothing
checkpoint_minutes = 3.0
# data
resolution = 64
num_scenes = 16_000  # one-object scenes, rendered once; a scene's prompt is redrawn every time it is used
num_pairs = 16_000  # two-object scenes, as many: single objects must stay as good as they were
phrase_drop = 0.2  # chance of leaving out each phrase but the shape (and a pair's positions), so short prompts work
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
scenes = [sample_scene(data_rng) for _ in range(num_scenes)] + [sample_pair(data_rng) for _ in range(num_pairs)]
painted = [paint(s, resolution) for s in scenes]
images = np.stack([image for image, _ in painted])
# Every scene's masks in the order of MASKS; a one-object scene has no "object 2" or "region 2" (all False).
empty = np.zeros((resolution, resolution), bool)
masks = np.stack([np.stack([named.get(key, empty) for key in MASKS]) for _, named in painted])
images = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # [-1, 1]
masks = torch.from_numpy(masks)  # (N, len(MASKS), H, W) bool
del painted
print(f"rendered {num_scenes} one-object and {num_pairs} two-object scenes at {resolution}x{resolution}")

tokenizer = build_clip_tokenizer(run / "tokenizer", VOCABULARY)


def draw_prompts(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, 77) of freshly drawn prompts, and the mask each token is grounded to (B, 77): 0 for none,
    k for MASKS[k - 1]. A position word's mask is the region it names, not the object: attending to "the left
    half" needs features that know where they are, which is what placing an object on the left needs too."""
    prompts, grounding = [], torch.zeros(len(index), tokenizer.model_max_length, dtype=torch.long)
    for row, i in enumerate(index):
        words = [] if rng.random() < empty_prompt else scenes[i].tagged_words(rng, phrase_drop)
        for slot, (_, key) in enumerate(words, start=1):  # every grammar word is one token; slot 0 is BOS
            grounding[row, slot] = 0 if key is None else MASKS.index(key) + 1
        prompts.append(" ".join(word for word, _ in words))
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    return ids.input_ids, grounding


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


def grounding_loss(maps: list[torch.Tensor], grounding: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """KL(mask || attention) per grounded token: pulls a word's attention onto its mask, spread over all of it.

    In a two-object scene each object's words have their own object's mask, so "red" is pulled to the red object
    and away from the other one: the maps show which object each word went to.
    """
    losses = []
    grounded = grounding > 0
    for probs in maps:  # (B, pixels, tokens)
        side = math.isqrt(probs.shape[1])
        pooled = F.adaptive_avg_pool2d(masks, side).flatten(2)  # (B, masks, pixels)
        pooled = torch.cat([torch.zeros_like(pooled[:, :1]), pooled], dim=1)  # index 0: no mask
        target = torch.gather(pooled, 1, grounding[:, :, None].expand(-1, -1, pooled.shape[2])).transpose(1, 2)
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


def fine_tuned_start(folder: pathlib.Path) -> dict:
    """The VAE, text encoder and UNet of a trained model, as a state that starts training from them: the VAE phase
    first (`vae_steps` more steps: its GroupNorm statistics meet scenes it has not seen), then the second phase."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    text = pipe.text_encoder.state_dict()
    known = pipe.tokenizer.get_vocab()
    embedding = next(key for key in text if key.endswith("token_embedding.weight"))
    table = text[embedding]
    rows = [
        table[known[token]] if token in known else table.mean(0)
        for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    ]
    text[embedding] = torch.stack(rows)
    unet, vae = pipe.unet.state_dict(), pipe.vae.state_dict()
    start = {"phase": "vae", "step": 0, "vae": vae, "init_text": text, "init_unet": unet}
    return start | {"scaling_factor": pipe.vae.config.scaling_factor}


if checkpoint_path.exists():
    state = torch.load(checkpoint_path, weights_only=False)
elif init_from:
    state = fine_tuned_start(pathlib.Path(init_from))
    print(f"fine-tuning {init_from}")
else:
    state = {"phase": "vae", "step": 0}
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
        index = rng.integers(0, len(scenes), vae_batch)
        x, obj = images[index], (~masks[index, MASKS.index("background"), None]).float()
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
                state | {"phase": "vae", "step": step + 1, "vae": vae.state_dict(), "vae_opt": vae_opt.state_dict()}
            )
            last_save = time.time()
    state = {key: value for key, value in state.items() if key != "vae_opt"}
    state |= {"phase": "latents", "step": 0, "vae": vae.state_dict()}
    save_checkpoint(state)

# cache the latents once: the UNet phase never runs the VAE
latents_path = run / "latents.pt"
vae.eval()
if latents_path.exists() and len(latents := torch.load(latents_path)) == len(images):
    pass
else:
    with torch.no_grad():
        chunks = [vae.encode(x).latent_dist.mean for x in tqdm(images.split(256), desc="encode latents")]
    latents = torch.cat(chunks)
    torch.save(latents, latents_path)
# Unit variance; a fine-tuned model keeps its own factor, which its UNet was trained with.
scaling_factor = state.get("scaling_factor", 1 / latents.std().item())
vae.register_to_config(scaling_factor=scaling_factor)
latents = latents * scaling_factor
with torch.no_grad():
    recon = torch.cat([vae.decode(z / scaling_factor).sample for z in latents[: min(512, num_scenes)].split(128)])
psnr = 10 * math.log10(4 / F.mse_loss(recon, images[: len(recon)]).item())
print(f"VAE reconstruction PSNR {psnr:.2f} dB, latent scaling factor {scaling_factor:.3f}")
# The evaluation's segmentation on reconstructions of real scenes: an upper bound on what the UNet can score.
read_back = [
    measure(image) for image in recon.add(1).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
]
read_back = list(zip(read_back, scenes[: len(recon)], strict=True))
print(
    "VAE round trip, read back by the evaluation: "
    + ", ".join(
        f"{name} {np.mean([getattr(got, name) == getattr(scene, name) for got, scene in read_back]):.2f}"
        for name in ("color", "background", "shape", "size", "position")
    )
)
if num_pairs:
    with torch.no_grad():
        recon = torch.cat([vae.decode(z / scaling_factor).sample for z in latents[num_scenes:][:512].split(128)])
    found = [
        {(got.color, got.shape) for got in measure_objects(image)}
        for image in recon.add(1).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    ]
    truth = [{(o.color, o.shape) for o in s.objects} for s in scenes[num_scenes:][:512]]
    bound = np.mean([got == want for got, want in zip(found, truth, strict=True)])
    print(f"VAE round trip of two-object scenes: both objects read back with their colour and shape {bound:.2f}")

# -----------------------------------------------------------------------------
# phase 2: the text encoder and the UNet together, on cached latents
params = [*unet.parameters(), *text_encoder.parameters()]
opt = torch.optim.AdamW(params, lr=unet_lr, weight_decay=0.01)
ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
if "init_unet" in state:
    unet.load_state_dict(state["init_unet"])
    text_encoder.load_state_dict(state["init_text"])
    ema_unet.load_state_dict(state["init_unet"])
    ema_text.load_state_dict(state["init_text"])
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
    index = rng.integers(0, len(scenes), unet_batch)
    ids, grounding = draw_prompts(index)
    z0 = latents[index]
    noise = torch.randn_like(z0)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (unet_batch,))
    maps.clear()
    prediction = unet(noise_scheduler.add_noise(z0, noise, t), t, text_encoder(ids).last_hidden_state).sample
    diffusion = F.mse_loss(prediction, noise_scheduler.get_velocity(z0, noise, t))
    ground = grounding_loss(maps, grounding, masks[index].float())
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
            {"phase": "unet", "step": step + 1, "vae": vae.state_dict(), "scaling_factor": scaling_factor}
            | {k: m.state_dict() for k, m in models.items()}
        )
        save_pipeline(run / "preview")  # the model so far, for a look or `bench/shapes_eval.py --model` mid-run
        last_save = time.time()

# -----------------------------------------------------------------------------
save_pipeline(final_dir)
print(f"saved the model to {final_dir}")
