"""Train the bundled shapes model: a tiny Stable Diffusion (VAE, CLIP text encoder, UNet) on the synthetic world.

Run `python -m sdplay.shapes.train [--key=value ...]` (the keys are the fields of `Config`); it resumes from
`out_dir` and finally writes `final_dir`. With `--init_from=assets/shapes` it fine-tunes a trained model instead:
its VAE trains on for `vae_steps` (its GroupNorm statistics meet scenes it has not seen), then its text encoder and
UNet start the second phase (words new to the grammar start at the mean of the known words' embeddings).
Importing this module starts nothing: `main()` does.
"""

# ruff: noqa: E402  (the OpenMP setting must precede importing torch)
import os

# Passive OpenMP threads: on a busy 2-core machine, spinning threads made each step up to 20x slower. libgomp reads
# this when torch loads it, so it is set here, before the imports (it changes nothing where torch is loaded already).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import ast
import copy
import dataclasses
import json
import math
import pathlib
import sys
import time
from typing import TypeVar

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
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdplay.runtime.catalog import SETTINGS_FILE
from sdplay.runtime.tokenizer import build_clip_tokenizer
from sdplay.shapes.evaluate import measure, measure_objects
from sdplay.shapes.world import MASKS, RECOMMENDED_SETTINGS, VOCABULARY, Pair, Scene, paint, sample_pair, sample_scene


@dataclasses.dataclass
class Config:
    """Everything a run depends on; override any field with --key=value."""

    seed: int = 0
    threads: int = 2
    out_dir: str = "~/.cache/sdplay/shapes-run"  # checkpoints and cached latents, outside the repo
    final_dir: str = "assets/shapes"  # the diffusers folder the app loads
    init_from: str = ""  # a trained shapes model folder to fine-tune; empty: train from nothing
    checkpoint_minutes: float = 3.0
    # data
    resolution: int = 64
    num_scenes: int = 16_000  # one-object scenes, rendered once; a scene's prompt is redrawn every time it is used
    num_pairs: int = 16_000  # two-object scenes, as many: single objects must stay as good as they were
    phrase_drop: float = 0.2  # chance of leaving out each phrase but the shape (and a pair's positions)
    empty_prompt: float = 0.1  # chance of an empty prompt, for classifier-free guidance
    # VAE (4x downsampling: 64x64x3 images <-> 16x16x4 latents)
    vae_steps: int = 4000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_edge_weight: float = 1.0  # L1 on image gradients too, which keeps the edges of the shapes sharp
    vae_kl_weight: float = 1e-6
    # text encoder + UNet
    unet_steps: int = 6000
    unet_batch: int = 32
    unet_lr: float = 1.5e-3
    warmup_steps: int = 200
    ground_weight: float = 0.1  # TokenCompose-style grounding loss: each word's cross-attention -> its mask
    ema_decay: float = 0.999

    @classmethod
    def from_args(cls, args: list[str]) -> "Config":
        return config_from_args(cls, args)


AnyConfig = TypeVar("AnyConfig")


def config_from_args(cls: type[AnyConfig], args: list[str]) -> AnyConfig:
    """A `cls` dataclass with its defaults, then each `--key=value` of `args` (a Python literal, or a string)."""
    config, types = cls(), {field.name: field.type for field in dataclasses.fields(cls)}
    for arg in args:
        key, value = arg.removeprefix("--").split("=", 1)
        if key not in types:
            raise SystemExit(f"unknown config key {key}; the keys are {', '.join(types)}")
        setattr(config, key, types[key](value if types[key] is str else ast.literal_eval(value)))
    return config


class PhaseClock:
    """Each phase's wall time: `done(name)` records and prints the time since the previous phase ended."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.start = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name], self.start = now - self.start, now
        print(f"{name}: {self.timings[name]:.1f} s")


# v-prediction: at high noise the target is close to the clean latent, so the loss rewards getting the layout
# (position, size) right early; epsilon-prediction gives that almost no weight.
# beta_end 0.025 rather than SD's 0.012: at SD's last step 6.8 % of the clean latent is still in the "pure noise",
# enough for a small model to find the object in it during training. It then learned to place the object wherever
# the starting noise happened to hint, and ignored the position words (position accuracy at chance, and the same
# image for every position phrase at a fixed seed). Here 0.6 % remains: the layout has to come from the prompt.
# (Zero terminal SNR would remove it entirely, but half of the app's samplers cannot follow such a schedule.)
SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.025,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    steps_offset=1,
)


# -----------------------------------------------------------------------------
# data: a fixed pool of rendered scenes, with the masks of their words for the grounding loss


@dataclasses.dataclass
class Data:
    scenes: list[Scene | Pair]
    images: torch.Tensor  # (N, 3, H, W) in [-1, 1]
    masks: torch.Tensor  # (N, len(MASKS), H, W) bool; a one-object scene has no "object 2" or "region 2"


def render_data(config: Config) -> Data:
    rng = np.random.default_rng(config.seed + 1)
    scenes = [sample_scene(rng) for _ in range(config.num_scenes)] + [sample_pair(rng) for _ in range(config.num_pairs)]
    empty = np.zeros((config.resolution, config.resolution), bool)
    images, masks = [], []
    for scene in scenes:
        image, named = paint(scene, config.resolution)
        images.append(image)
        masks.append(np.stack([named.get(key, empty) for key in MASKS]))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    return Data(scenes, pixels, torch.from_numpy(np.stack(masks)))


def draw_prompts(
    data: Data, index: np.ndarray, tokenizer: CLIPTokenizer, rng: np.random.Generator, config: Config
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, 77) of freshly drawn prompts, and the mask each token is grounded to (B, 77): 0 for none,
    k for MASKS[k - 1]. A position word's mask is the region it names, not the object: attending to "the left
    half" needs features that know where they are, which is what placing an object on the left needs too."""
    prompts, grounding = [], torch.zeros(len(index), tokenizer.model_max_length, dtype=torch.long)
    for row, i in enumerate(index):
        words = [] if rng.random() < config.empty_prompt else data.scenes[i].tagged_words(rng, config.phrase_drop)
        for slot, (_, key) in enumerate(words, start=1):  # every grammar word is one token; slot 0 is BOS
            grounding[row, slot] = 0 if key is None else MASKS.index(key) + 1
        prompts.append(" ".join(word for word, _ in words))
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    return ids.input_ids, grounding


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


# -----------------------------------------------------------------------------
# models: exactly the Stable Diffusion classes, just small


def build_models(config: Config, tokenizer: CLIPTokenizer) -> tuple[AutoencoderKL, CLIPTextModel, UNet2DConditionModel]:
    resolution = config.resolution
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        # Few channels at full resolution: flat colours need little, and it is 4x faster.
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=resolution,
        mid_block_add_attention=False,  # 16x16 self-attention costs time; single shapes need no global context
    )
    # Start with a small posterior std: unit noise on the latents stalls the first hundreds of steps.
    with torch.no_grad():
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
    return vae, text_encoder, unet


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


class Checkpoint:
    """The run's state on disk, written atomically (a kill during the save leaves the previous one intact), with
    the random generators' states so that a resumed run draws what the uninterrupted one would have."""

    def __init__(self, folder: pathlib.Path, rng: np.random.Generator) -> None:
        self.path, self.rng = folder / "checkpoint.pt", rng

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        state = torch.load(self.path, weights_only=False)
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        return state

    def save(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(state | {"rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, tmp)
        tmp.replace(self.path)


def fine_tuned_start(folder: pathlib.Path, tokenizer: CLIPTokenizer) -> dict:
    """The VAE, text encoder and UNet of a trained model, as a state that starts training from them: the VAE phase
    first, then the second phase from its text encoder and UNet, with its latent scale."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    text = pipe.text_encoder.state_dict()
    known = pipe.tokenizer.get_vocab()
    embedding = next(key for key in text if key.endswith("token_embedding.weight"))
    table = text[embedding]
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    text[embedding] = torch.stack([table[known[token]] if token in known else table.mean(0) for token, _ in by_id])
    start = {"phase": "vae", "step": 0, "vae": pipe.vae.state_dict(), "init_text": text}
    return start | {"init_unet": pipe.unet.state_dict(), "scaling_factor": pipe.vae.config.scaling_factor}


# -----------------------------------------------------------------------------
# phase 1: the VAE, on the rendered images


def train_vae(config: Config, vae: AutoencoderKL, data: Data, state: dict, checkpoint: Checkpoint) -> dict:
    """Train the VAE from `state`'s step on; return the state that starts the next phase."""
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    if "vae_opt" in state:
        opt.load_state_dict(state["vae_opt"])
    vae.train()
    last_save = time.time()
    steps = config.vae_steps
    bar = tqdm(range(state["step"], steps), initial=state["step"], total=steps, desc="vae", mininterval=5)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, config.vae_lr, config.warmup_steps)
        index = checkpoint.rng.integers(0, len(data.scenes), config.vae_batch)
        x, obj = data.images[index], (~data.masks[index, MASKS.index("background"), None]).float()
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        # The objects and the background weigh the same in every image: with a plain mean, a small shape is a few
        # percent of the loss, and its colour and corners were the first things the VAE gave up.
        area = obj[0].numel()
        balance = (obj / obj.sum((2, 3), keepdim=True) + (1 - obj) / (1 - obj).sum((2, 3), keepdim=True)) * area / 2
        l1 = ((recon - x).abs() * balance).mean()
        edges = sum((recon.diff(dim=d) - x.diff(dim=d)).abs().mean() for d in (2, 3))
        loss = l1 + config.vae_edge_weight * edges + config.vae_kl_weight * posterior.kl().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        psnr = 10 * math.log10(4 / F.mse_loss(recon.detach(), x).item())
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr:.1f}")
        if time.time() - last_save > config.checkpoint_minutes * 60:
            checkpoint.save(
                state | {"phase": "vae", "step": step + 1, "vae": vae.state_dict(), "vae_opt": opt.state_dict()}
            )
            last_save = time.time()
    state = {key: value for key, value in state.items() if key != "vae_opt"}
    state |= {"phase": "latents", "step": 0, "vae": vae.state_dict()}
    checkpoint.save(state)
    return state


def encode_latents(vae: AutoencoderKL, data: Data, folder: pathlib.Path) -> torch.Tensor:
    """The posterior means of every image, cached once: the UNet phase never runs the VAE."""
    path = folder / "latents.pt"
    vae.eval()
    if path.exists() and len(latents := torch.load(path)) == len(data.images):
        return latents
    with torch.no_grad():
        latents = torch.cat([vae.encode(x).latent_dist.mean for x in tqdm(data.images.split(256), desc="encode")])
    torch.save(latents, path)
    return latents


def decoded(vae: AutoencoderKL, latents: torch.Tensor) -> np.ndarray:
    """Scaled latents decoded to uint8 images (N, H, W, 3)."""
    with torch.no_grad():
        images = torch.cat([vae.decode(z / vae.config.scaling_factor).sample for z in latents.split(128)])
    return images.add(1).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def report_round_trip(vae: AutoencoderKL, latents: torch.Tensor, data: Data, config: Config) -> None:
    """The evaluation's segmentation on reconstructions of training scenes: an upper bound on what the UNet can
    score."""
    singles = min(512, config.num_scenes)
    recon = decoded(vae, latents[:singles])
    real = data.images[:singles].add(1).mul(127.5).round().permute(0, 2, 3, 1).numpy()
    psnr = 10 * math.log10(255**2 / np.mean((recon.astype(float) - real) ** 2))
    print(f"VAE reconstruction PSNR {psnr:.2f} dB, latent scaling factor {vae.config.scaling_factor:.3f}")
    read_back = [(measure(image), scene) for image, scene in zip(recon, data.scenes, strict=False)]
    scores = ", ".join(
        f"{name} {np.mean([getattr(got, name) == getattr(scene, name) for got, scene in read_back]):.2f}"
        for name in ("color", "background", "shape", "size", "position")
    )
    print(f"VAE round trip, read back by the evaluation: {scores}")
    if config.num_pairs:
        pairs = data.scenes[config.num_scenes :][:512]
        recon = decoded(vae, latents[config.num_scenes :][: len(pairs)])
        found = [{(got.color, got.shape) for got in measure_objects(image)} for image in recon]
        bound = np.mean([got == {(o.color, o.shape) for o in p.objects} for got, p in zip(found, pairs, strict=True)])
        print(f"VAE round trip of two-object scenes: both objects read back with their colour and shape {bound:.2f}")


# -----------------------------------------------------------------------------
# phase 2: the text encoder and the UNet together, on cached latents


def save_pipeline(
    folder: str | pathlib.Path,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer,
    unet: UNet2DConditionModel,
    scheduler: SchedulerMixin | None = None,
    settings: dict | None = None,
) -> None:
    """A plain diffusers folder (the attention processors are not part of the saved model) and its settings; by
    default this model's: DPM++ 2M and the world's recommended settings."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler or DPMSolverMultistepScheduler(timestep_spacing="trailing", **SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    (pathlib.Path(folder) / SETTINGS_FILE).write_text(json.dumps(settings or RECOMMENDED_SETTINGS, indent=2) + "\n")


def train_unet(
    config: Config,
    models: tuple[AutoencoderKL, CLIPTextModel, UNet2DConditionModel],
    tokenizer: CLIPTokenizer,
    data: Data,
    latents: torch.Tensor,
    state: dict,
    checkpoint: Checkpoint,
) -> tuple[CLIPTextModel, UNet2DConditionModel]:
    """Train the text encoder and the UNet together from `state`; return their EMA weights."""
    vae, text_encoder, unet = models
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=0.01)
    if "init_unet" in state:
        unet.load_state_dict(state["init_unet"])
        text_encoder.load_state_dict(state["init_text"])
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    if state["phase"] == "unet":
        models = {"unet": unet, "text": text_encoder, "ema_unet": ema_unet, "ema_text": ema_text, "opt": opt}
        for key, module in models.items():
            module.load_state_dict(state[key])
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, **SCHEDULER_CONFIG)
    maps: list[torch.Tensor] = []
    unet.set_attn_processor(
        {name: GroundedCrossAttention(maps) if "attn2" in name else p for name, p in unet.attn_processors.items()}
    )
    unet.train()
    text_encoder.train()
    last_save = time.time()
    start, steps = (state["step"] if state["phase"] == "unet" else 0), config.unet_steps
    for step in (bar := tqdm(range(start, steps), initial=start, total=steps, desc="unet", mininterval=5)):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, config.unet_lr, config.warmup_steps)
        index = checkpoint.rng.integers(0, len(data.scenes), config.unet_batch)
        ids, grounding = draw_prompts(data, index, tokenizer, checkpoint.rng, config)
        z0 = latents[index]
        noise = torch.randn_like(z0)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (config.unet_batch,))
        maps.clear()
        prediction = unet(noise_scheduler.add_noise(z0, noise, t), t, text_encoder(ids).last_hidden_state).sample
        diffusion = F.mse_loss(prediction, noise_scheduler.get_velocity(z0, noise, t))
        ground = grounding_loss(maps, grounding, data.masks[index].float())
        loss = diffusion + config.ground_weight * ground
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        decay = min(config.ema_decay, (1 + step) / (10 + step))  # short warmup: early EMA weights are mostly init
        with torch.no_grad():
            for ema, model in [(ema_unet, unet), (ema_text, text_encoder)]:
                for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                    p_ema.lerp_(p, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}", v=f"{diffusion.item():.4f}", ground=f"{ground.item():.3f}")
        if time.time() - last_save > config.checkpoint_minutes * 60 or step + 1 == steps:
            models = {"unet": unet, "text": text_encoder, "ema_unet": ema_unet, "ema_text": ema_text, "opt": opt}
            scale = vae.config.scaling_factor
            checkpoint.save(
                {"phase": "unet", "step": step + 1, "vae": vae.state_dict(), "scaling_factor": scale}
                | {key: module.state_dict() for key, module in models.items()}
            )
            # The model so far, for a look or `bench/shapes_eval.py --model` mid-run.
            save_pipeline(checkpoint.path.parent / "preview", vae, ema_text, tokenizer, ema_unet)
            last_save = time.time()
    return ema_text, ema_unet


def start_run(config) -> tuple[pathlib.Path, Checkpoint, PhaseClock]:
    """A run's start (training or distilling): `config`'s seed and thread count set, its output folder made, its
    checkpoint and a clock for its phases."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    folder = pathlib.Path(config.out_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder, Checkpoint(folder, np.random.default_rng(config.seed)), PhaseClock()


def main(args: list[str] | None = None) -> dict[str, float]:
    """Train as `args` (or the command line) say; return each phase's wall time in seconds (render, vae, latents,
    unet, save), which it also prints."""
    config = Config.from_args(sys.argv[1:] if args is None else args)
    folder, checkpoint, clock = start_run(config)

    data = render_data(config)
    print(f"rendered {config.num_scenes} one-object and {config.num_pairs} two-object scenes at {config.resolution}²")
    tokenizer = build_clip_tokenizer(folder / "tokenizer", VOCABULARY)
    vae, text_encoder, unet = build_models(config, tokenizer)
    sizes = [
        f"{n} {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M"
        for n, m in [("vae", vae), ("unet", unet), ("text", text_encoder)]
    ]
    print("parameters: " + ", ".join(sizes))

    state = checkpoint.load()
    if state is None and config.init_from:
        state = fine_tuned_start(pathlib.Path(config.init_from), tokenizer)
        print(f"fine-tuning {config.init_from}")
    state = state or {"phase": "vae", "step": 0}
    if "vae" in state:
        vae.load_state_dict(state["vae"])
    print(f"starting at phase {state['phase']}, step {state['step']}")
    clock.done("render")
    if state["phase"] == "vae":
        state = train_vae(config, vae, data, state, checkpoint)
    clock.done("vae")

    latents = encode_latents(vae, data, folder)
    # Unit variance; a fine-tuned model keeps its own factor, which its UNet was trained with.
    vae.register_to_config(scaling_factor=state.get("scaling_factor", 1 / latents.std().item()))
    latents = latents * vae.config.scaling_factor
    report_round_trip(vae, latents, data, config)
    clock.done("latents")

    ema_text, ema_unet = train_unet(config, (vae, text_encoder, unet), tokenizer, data, latents, state, checkpoint)
    clock.done("unet")
    save_pipeline(config.final_dir, vae, ema_text, tokenizer, ema_unet)
    print(f"saved the model to {config.final_dir}")
    clock.done("save")
    return clock.timings


if __name__ == "__main__":
    main()
