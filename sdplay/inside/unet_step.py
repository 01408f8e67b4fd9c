"""One UNet call at a recorded step of an Explain run, with hooks: the machinery of the Inside tab's UNet views.

The run kept x_t and the timestep of every step, so one call on them, with the prompt encoded again by the same model,
reproduces that step's noise prediction: nothing is re-run from the start, and nothing is kept unless a view asks.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline

from sdplay.explain.capture import ExplainRun
from sdplay.runtime.conditioning import encode_prompts
from sdplay.runtime.errors import UserError
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import Task


@dataclass(frozen=True)
class StepInput:
    """What one UNet call at a recorded step needs, as picklable CPU data (it crosses the executor boundary)."""

    model: str  # the model that made the run: another model's UNet would read its latents wrongly
    sampler: str  # the run's: LCM runs the model's few-step UNet, if it has one
    prompt: str  # as typed (A1111 syntax), with the negative prompt, the request's steps and CFG scale
    negative_prompt: str
    steps: int
    guidance_scale: float
    step: int  # 0-based step of the run
    call: int  # the sampler's UNet call that began the step: which prompt of a prompt-editing schedule it read
    latents: torch.Tensor  # [C, h, w]: the x_t the UNet saw at the step
    timestep: float


def first_call(run: ExplainRun, step: int) -> int:
    """The index of the UNet call that began `step` (0-based), as diffusers' loop counts them.

    One call a step for most samplers; Heun-type samplers make two a step but one at the last (2S − 1 calls); PLMS
    makes its first step with two calls (S + 1), see capture.mid_step. A step's recorded x_t is its first call's.
    """
    if run.unet_calls == 2 * run.steps - 1 and run.steps > 1:
        return 2 * step
    if run.unet_calls == run.steps + 1:
        return 0 if step == 0 else step + 1
    return step


def step_input(run: ExplainRun, step: int) -> StepInput:
    """The recorded step `step` (0-based) of `run`, ready for one UNet call."""
    if not 0 <= step < run.steps:
        raise UserError(f"This run has steps 1 to {run.steps}: there is no step {step + 1}.")
    recipe = run.recipe
    return StepInput(
        model=recipe.model,
        sampler=recipe.sampler,
        prompt=recipe.prompt,
        negative_prompt=recipe.negative_prompt,
        steps=recipe.steps,
        guidance_scale=recipe.guidance_scale,
        step=step,
        call=first_call(run, step),
        latents=run.latents[step].float().clone(),  # a copy: a view would pickle the whole run's latents
        timestep=float(run.timesteps[step]),
    )


def run_pipe(manager: ModelManager, request: StepInput) -> DiffusionPipeline:
    """A view of the loaded model with the UNet that made the run (see `ModelManager.pipeline`: the calling
    thread's own, which the views' hooks go on), if it is the model that made the run and its UNet reads only the
    latents."""
    model = manager.model
    if model.name != request.model:
        raise UserError(
            f"This run was made by {request.model}, and the loaded model is {model.name}: load {request.model} to "
            "look inside its UNet. The recorded views (cross-attention at a point) work without it."
        )
    if model.is_inpainting:
        raise UserError(
            f"{model.name} is an inpainting checkpoint: its UNet also reads the mask and the masked image, which "
            "the run does not keep, so its steps cannot be replayed one by one."
        )
    return manager.pipeline(Task.TXT2IMG, request.sampler)


def guided(pipe: DiffusionPipeline, guidance_scale: float) -> bool:
    """Whether the step ran both guidance branches, as diffusers decides (`do_classifier_free_guidance`)."""
    return guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None


@dataclass(frozen=True)
class StepOutput:
    """The UNet's prediction at the step, per branch: [C, h, w] each; `eps_uncond` None without guidance."""

    eps_cond: torch.Tensor
    eps_uncond: torch.Tensor | None
    batch: int  # images in the call: 2 with guidance (negative prompt, then the prompt), else 1


def call_unet(pipe: DiffusionPipeline, request: StepInput) -> StepOutput:
    """Run the UNet once on the recorded step, as the pipeline ran it: the same x_t, timestep and embeddings,
    batched [negative, prompt] with guidance. Hooks that the caller attached see this one call."""
    unet = pipe.unet
    positive, negative = encode_prompts(pipe, request.prompt, request.negative_prompt, request.steps).at(request.call)
    latents = request.latents[None].to(unet.device, positive.dtype)
    both = guided(pipe, request.guidance_scale)
    sample = torch.cat([latents, latents]) if both else latents
    embeddings = torch.cat([negative, positive]) if both else positive
    timestep_cond = None
    if unet.config.time_cond_proj_dim is not None:  # LCM-distilled models read the CFG scale as an embedding
        scale = torch.tensor(request.guidance_scale - 1).repeat(len(sample))
        timestep_cond = pipe.get_guidance_scale_embedding(scale, embedding_dim=unet.config.time_cond_proj_dim)
        timestep_cond = timestep_cond.to(unet.device, positive.dtype)
    timestep = torch.tensor(request.timestep, device=unet.device)
    with torch.no_grad():
        output = unet(
            sample, timestep, encoder_hidden_states=embeddings, timestep_cond=timestep_cond, return_dict=False
        )[0]
    output = output.float().cpu()
    if both:
        return StepOutput(eps_cond=output[1].clone(), eps_uncond=output[0].clone(), batch=2)
    return StepOutput(eps_cond=output[0].clone(), eps_uncond=None, batch=1)


Hook = Callable[[torch.nn.Module, tuple, dict, object], None]


@contextmanager
def forward_hooks(hooks: list[tuple[torch.nn.Module, Hook]]) -> Iterator[None]:
    """Attach forward hooks `hook(module, args, kwargs, output)` for the block; they are always removed, also on
    errors, so a normal run never meets them."""
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def prompt_branch(tensor: torch.Tensor) -> torch.Tensor:
    """The prompt's image of a batch: the last one ([negative, prompt] with guidance, [prompt] without)."""
    return tensor[-1]
