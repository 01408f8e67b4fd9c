"""Distil the shapes model for 4 steps: latent consistency distillation (LCD; Luo et al. 2023, "Latent Consistency
Models"), sampled by diffusers' `LCMScheduler`.

Run `python -m sdplay.shapes.distill [--key=value ...]` (the keys are the fields of `Config`); it resumes from
`out_dir` and finally gives `final_dir` (by default the teacher's own folder, assets/shapes) its fast path: the
distilled UNet in `unet-lcm/` and a `fast` entry in its sdplay.json (LCM, 4 steps; see catalog.FastPath). The app
then runs that UNet whenever the LCM sampler is chosen, beside the teacher's own. Importing it starts nothing.

The method, the paper's Algorithm 1 as diffusers' `examples/consistency_distillation/train_lcm_distill_sd_wds.py`
runs it:
- Three UNets: the teacher (the 20-step model, frozen), the student (trained) and the target (an EMA of the student,
  the paper's mu = 0.95). A UNet's output (here v) is read as a consistency function
  f(x_t, t) = c_skip(t) x_t + c_out(t) x̂0 with LCMScheduler's c_skip and c_out: the identity at t = 0, x̂0 elsewhere.
- Each step: a clean latent z0, one of the solver's 50 timesteps t (k = 20 apart) and noise give x_t; the teacher,
  guided with a CFG scale s, takes one DDIM step from x_t to x_{t-k}; the loss pulls the student's f(x_t, t) to the
  target's f(x_{t-k}, t-k). Consistent along the teacher's guided trajectories, f maps a noisy latent to the end of
  its trajectory, which is what LCMScheduler's few steps need. The saved UNet is the target (the smoother one).

Guidance is embedded, not fixed. The student is the teacher's UNet with `time_cond_proj_dim` set (an embedding of w
added to the timestep embedding; its projection starts at zero, so the student starts as exactly the teacher),
trained on CFG scales drawn in [guidance_min, guidance_max]. That is how LCM models are sampled: for such a UNet,
diffusers' pipeline embeds `guidance_scale - 1` and runs no unconditional pass. So each step is one UNet call, and
the CFG slider keeps its meaning on the fast model (a lesson can still show what guidance does). A fixed w would
keep the architecture but leave the slider a trap (CFG 1 gets the distilled guidance; anything else guides twice).
The range is narrow, the model card's 3-5, so the tiny UNet spends no capacity on scales nobody uses.

The data are the teacher's: the same rendered scenes with freshly drawn prompts (train.py's functions), encoded by
the teacher's VAE and cached in `out_dir`; a different teacher needs a new `out_dir`.

Cost: a step runs the student forward and backward, the teacher on two batches (with and without the prompt) and the
target once, about 1.6 s at batch 32 on a quiet 2-core CPU (a step of train.py's UNet phase: 0.9 s). The checkpoint
keeps the run's wall time over all its sessions, which the end prints.
"""

# ruff: noqa: E402  (the OpenMP setting must precede importing torch)
import os

# Passive OpenMP threads, as in train.py (see there): set before torch is imported, which ruff's import order would
# otherwise do first via train.py's own imports.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import copy
import dataclasses
import inspect
import json
import pathlib
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tqdm import tqdm

from sdplay.runtime.catalog import SETTINGS_FILE, FastPath
from sdplay.shapes import train
from sdplay.shapes.world import RECOMMENDED_SETTINGS

FAST_UNET = FastPath.unet  # the subfolder of the model's folder that holds the distilled UNet


@dataclasses.dataclass
class Config:
    """Everything a run depends on; override any field with --key=value."""

    seed: int = 0
    threads: int = 2
    teacher: str = "assets/shapes"  # the model to distil (a diffusers folder)
    out_dir: str = "~/.cache/sdplay/shapes-fast-run"  # checkpoints and cached latents, outside the repo
    final_dir: str = "assets/shapes"  # the model folder that gets the fast UNet (another folder gets a teacher copy)
    checkpoint_minutes: float = 3.0
    log_every: int = 100  # steps per line of the loss curve
    # data: the teacher's world, as train.Config draws it
    resolution: int = 64
    num_scenes: int = 16_000
    num_pairs: int = 16_000
    phrase_drop: float = 0.2
    empty_prompt: float = 0.05  # a few empty prompts, so that the empty prompt still samples unconditionally
    # distillation
    steps: int = 2000
    batch: int = 32
    lr: float = 2e-4  # constant after the warmup (as the reference script): `--steps=N` extends a run seamlessly
    warmup_steps: int = 100
    ddim_steps: int = 50  # the teacher's solver: DDIM on 50 of the 1000 timesteps, skipping k = 20 at a time
    guidance_min: float = 3.0  # the CFG scales the student learns
    guidance_max: float = 5.0
    guidance_dim: int = 64  # width of the guidance embedding (the UNet's time_cond_proj_dim)
    loss: str = "l2"  # or "huber": the pseudo-Huber sqrt(d² + c²) - c
    huber_c: float = 0.001
    target_decay: float = 0.95  # EMA rate of the target network
    sample_steps: int = 4  # what the folder's sdplay.json recommends

    @classmethod
    def from_args(cls, args: list[str]) -> "Config":
        return train.config_from_args(cls, args)

    def world(self) -> train.Config:
        """The data settings as train.py's Config, whose data functions this script shares."""
        names = ("seed", "resolution", "num_scenes", "num_pairs", "phrase_drop", "empty_prompt")
        return train.Config(**{name: getattr(self, name) for name in names})


# -----------------------------------------------------------------------------
# the noise schedule as LCD sees it


class ConsistencySchedule:
    """The teacher's noise schedule: the solver's timesteps, noising, a UNet output read as (x̂0, ε̂), and the
    consistency function. Built from the LCMScheduler the result is sampled with, so training and sampling share
    the betas, the timestep grid and c_skip/c_out."""

    def __init__(self, scheduler_config: dict, ddim_steps: int) -> None:
        # Only the keys LCMScheduler takes (the saved folder's config stays readable), and no clipping of x̂0 to
        # [-1, 1], which some configs ask for: that range is the pixels', not the latents'.
        known = inspect.signature(LCMScheduler.__init__).parameters
        config = {key: value for key, value in scheduler_config.items() if key in known}
        self.lcm = LCMScheduler(**config | {"original_inference_steps": ddim_steps, "clip_sample": False})
        self.prediction_type = self.lcm.config.prediction_type
        self.skip = self.lcm.config.num_train_timesteps // ddim_steps  # the paper's k
        # k - 1, 2k - 1, ..., 999: the grid LCMScheduler draws its few timesteps from.
        self.timesteps = torch.arange(1, ddim_steps + 1) * self.skip - 1

    def _alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_bar = self.lcm.alphas_cumprod[t].view(-1, 1, 1, 1)
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self._alpha_sigma(t)
        return alpha * x0 + sigma * eps

    def split(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean latent and the noise that a UNet `output` at (x_t, t) predicts."""
        alpha, sigma = self._alpha_sigma(t)
        if self.prediction_type == "v_prediction":  # v = alpha ε - sigma x0
            return alpha * x_t - sigma * output, alpha * output + sigma * x_t
        if self.prediction_type == "epsilon":
            return (x_t - sigma * output) / alpha, output
        raise ValueError(f"cannot distil a {self.prediction_type} model")

    def consistency(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x_t, t) = c_skip x_t + c_out x̂0, as LCMScheduler.step denoises."""
        c_skip, c_out = self.lcm.get_scalings_for_boundary_condition_discrete(t)
        return c_skip.view(-1, 1, 1, 1) * x_t + c_out.view(-1, 1, 1, 1) * self.split(output, x_t, t)[0]


# -----------------------------------------------------------------------------
# the three UNets and the loss


@dataclasses.dataclass
class Unets:
    teacher: UNet2DConditionModel  # frozen
    student: UNet2DConditionModel  # trained
    target: UNet2DConditionModel  # EMA of the student, makes the targets


def student_from(teacher: UNet2DConditionModel, guidance_dim: int) -> UNet2DConditionModel:
    """The teacher's UNet with a guidance embedding: its weights, and the new projection of w at zero."""
    student = UNet2DConditionModel.from_config(teacher.config, time_cond_proj_dim=guidance_dim)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if missing != ["time_embedding.cond_proj.weight"] or unexpected:
        raise ValueError(f"the teacher's UNet does not fit the student: {missing=}, {unexpected=}")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def guided_ddim_step(
    teacher: UNet2DConditionModel,
    schedule: ConsistencySchedule,
    x_t: torch.Tensor,
    t: torch.Tensor,
    t_prev: torch.Tensor,
    embeddings: tuple[torch.Tensor, torch.Tensor],
    scale: torch.Tensor,
) -> torch.Tensor:
    """One DDIM step of the teacher's CFG-guided ODE, from x_t at t to t_prev; `embeddings`: (prompt, empty)."""
    both = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat(embeddings)).sample
    with_prompt, without = both.chunk(2)
    # CFG on the output is CFG on x̂0 and ε̂ alike: both are linear in it.
    guided = without + scale.view(-1, 1, 1, 1) * (with_prompt - without)
    x0, eps = schedule.split(guided, x_t, t)
    return schedule.noised(x0, eps, t_prev)  # DDIM: the predicted clean latent, noised again with the predicted ε


def consistency_loss(
    config: Config,
    pipe: StableDiffusionPipeline,
    unets: Unets,
    schedule: ConsistencySchedule,
    z0: torch.Tensor,
    embeddings: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The LCD loss on clean latents `z0`; `embeddings`: their prompts' and the empty prompt's (batch, 77, width)."""
    n = len(z0)
    t = schedule.timesteps[torch.randint(0, len(schedule.timesteps), (n,))]
    t_prev = (t - schedule.skip).clamp(min=0)  # the first solver step lands on 0, where f is the identity
    x_t = schedule.noised(z0, torch.randn_like(z0), t)
    scale = torch.empty(n).uniform_(config.guidance_min, config.guidance_max)
    # The pipeline's own embedding of `guidance_scale - 1`, so training feeds w exactly as sampling will.
    w = pipe.get_guidance_scale_embedding(scale - 1, embedding_dim=config.guidance_dim)
    prediction = unets.student(x_t, t, embeddings[0], timestep_cond=w).sample
    prediction = schedule.consistency(prediction, x_t, t)
    with torch.no_grad():
        x_prev = guided_ddim_step(unets.teacher, schedule, x_t, t, t_prev, embeddings, scale)
        target = unets.target(x_prev, t_prev, embeddings[0], timestep_cond=w).sample
        target = schedule.consistency(target, x_prev, t_prev)
    if config.loss == "huber":
        return (torch.sqrt((prediction - target) ** 2 + config.huber_c**2) - config.huber_c).mean()
    return F.mse_loss(prediction, target)


# -----------------------------------------------------------------------------
# training


def prompt_embeddings(pipe: StableDiffusionPipeline, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return pipe.text_encoder(ids).last_hidden_state


def distill(
    config: Config,
    pipe: StableDiffusionPipeline,
    unets: Unets,
    schedule: ConsistencySchedule,
    data: train.Data,
    latents: torch.Tensor,
    state: dict,
    checkpoint: train.Checkpoint,
) -> float:
    """Train the student from `state`'s step on, checkpointing every few minutes and at the end; return the
    distillation's wall time in seconds over all the sessions of the run (the checkpoint keeps the sum)."""
    student, target, world = unets.student, unets.target, config.world()
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.01)
    if state["step"]:
        student.load_state_dict(state["student"])
        target.load_state_dict(state["target"])
        opt.load_state_dict(state["opt"])
    empty = pipe.tokenizer([""], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt")
    uncond = prompt_embeddings(pipe, empty.input_ids).expand(config.batch, -1, -1)
    last_save, losses, session = time.time(), [], time.perf_counter()
    start, steps = state["step"], config.steps
    for step in (bar := tqdm(range(start, steps), initial=start, total=steps, desc="distill", mininterval=5)):
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup_steps)
        index = checkpoint.rng.integers(0, len(data.scenes), config.batch)
        ids, _ = train.draw_prompts(data, index, pipe.tokenizer, checkpoint.rng, world)
        embeddings = (prompt_embeddings(pipe, ids), uncond)
        loss = consistency_loss(config, pipe, unets, schedule, latents[index], embeddings)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p_target, p in zip(target.parameters(), student.parameters(), strict=True):
                p_target.lerp_(p, 1 - config.target_decay)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.5f}")
        if (step + 1) % config.log_every == 0:
            tqdm.write(f"step {step + 1}: loss {np.mean(losses):.5f} (mean of the last {len(losses)} steps)")
            losses.clear()
        if time.time() - last_save > config.checkpoint_minutes * 60 or step + 1 == steps:
            modules = {"student": student, "target": target, "opt": opt}
            seconds = state.get("seconds", 0.0) + time.perf_counter() - session
            checkpoint.save(
                {"step": step + 1, "seconds": seconds} | {key: module.state_dict() for key, module in modules.items()}
            )
            # The model so far, to look at (or evaluate) mid-run.
            save_fast_model(checkpoint.path.parent / "preview", config, target)
            last_save = time.time()
    return state.get("seconds", 0.0) + time.perf_counter() - session


def save_fast_model(folder: str | pathlib.Path, config: Config, unet: UNet2DConditionModel) -> None:
    """Make `folder` the teacher with a fast path: the teacher's files (copied, unless `folder` is the teacher's own),
    the student in `folder/unet-lcm`, and `fast` in its sdplay.json, which the app reads (catalog.FastPath)."""
    folder, teacher = pathlib.Path(folder), pathlib.Path(config.teacher)
    if config.ddim_steps != LCMScheduler().config.original_inference_steps:
        # The app samples the fast UNet with LCMScheduler built from the teacher's scheduler config.
        raise SystemExit(f"--ddim_steps={config.ddim_steps}: the app's LCM sampler assumes LCMScheduler's 50")
    if not folder.exists() or not folder.samefile(teacher):
        shutil.copytree(teacher, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(FAST_UNET))
    unet.save_pretrained(folder / FAST_UNET, safe_serialization=True)
    path = folder / SETTINGS_FILE
    settings = json.loads(path.read_text()) if path.exists() else dict(RECOMMENDED_SETTINGS)
    low, high = config.guidance_min, config.guidance_max
    guidance = min(max(settings.get("guidance_scale", low), low), high)  # the teacher's choice, if it was learnt
    settings["fast"] = {"unet": FAST_UNET, "steps": config.sample_steps, "guidance_scale": guidance}
    path.write_text(json.dumps(settings, indent=2) + "\n")


def main(args: list[str] | None = None) -> dict[str, float]:
    """Distil as `args` (or the command line) say; return each phase's wall time in seconds (render, latents,
    distill, save), which it also prints."""
    config = Config.from_args(sys.argv[1:] if args is None else args)
    folder, checkpoint, clock = train.start_run(config)

    data = train.render_data(config.world())
    print(f"rendered {config.num_scenes} one-object and {config.num_pairs} two-object scenes at {config.resolution}²")
    clock.done("render")
    pipe = StableDiffusionPipeline.from_pretrained(config.teacher, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.requires_grad_(False)
    latents = train.encode_latents(pipe.vae, data, folder) * pipe.vae.config.scaling_factor
    clock.done("latents")

    schedule = ConsistencySchedule(pipe.scheduler.config, config.ddim_steps)
    student = student_from(pipe.unet, config.guidance_dim)
    unets = Unets(teacher=pipe.unet, student=student, target=copy.deepcopy(student).requires_grad_(False))
    state = checkpoint.load() or {"step": 0}  # after every random initialisation: a resumed run draws the same
    if state["step"] > config.steps:  # it would save a longer run's student as this shorter one's
        raise SystemExit(
            f"The checkpoint in {config.out_dir} is at step {state['step']}, past --steps={config.steps}: give "
            f"--steps={state['step']} or more to go on with it, or another --out_dir to start afresh."
        )
    print(f"distilling {config.teacher}: starting at step {state['step']} of {config.steps}")
    seconds = distill(config, pipe, unets, schedule, data, latents, state, checkpoint)
    clock.done("distill")
    print(f"distillation wall time over all sessions of this run: {seconds / 60:.1f} min")
    save_fast_model(config.final_dir, config, unets.target)
    print(f"saved the model to {config.final_dir}")
    clock.done("save")
    return clock.timings


if __name__ == "__main__":
    main()
