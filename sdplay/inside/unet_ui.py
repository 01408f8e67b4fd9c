"""The Inside tab's UNet section: the UNet's blocks as a diagram, the first convolution's kernels and feature maps,
and every block's output, at the Explain tab's step, from one UNet call (sdplay/inside/unet.py).

Layout and wiring only; the call is a job on the executor, run when the button is pressed.
"""

import gradio as gr

from sdplay.explain.captions import Caption
from sdplay.explain.render import ExplainView
from sdplay.explain.ui import ExplainControls, panel_caption, step_index
from sdplay.inside.unet import (
    UNetInside,
    UNetRequest,
    activation_chart,
    block_tiles,
    count_text,
    diagram,
    first_convolution,
    look_inside,
    reproduction_note,
)
from sdplay.inside.unet_step import step_input
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import Limits
from sdplay.ui.common import GPU, job_result, user_errors

PRIVATE = {"api_visibility": "private"}
INTRO = "Runs the UNet once on the run's x_t at the step chosen on the Explain tab, as the run did."
CAPTIONS = {
    "diagram": Caption(
        "The UNet: down blocks shrink the latent and add channels, up blocks grow it back, and skip connections "
        "(dashed) carry fine detail across the U.",
        "The UNet was invented for cutting out cells in microscope images (Ronneberger et al., 2015): to label each "
        "pixel it needs both the big picture, seen at the bottom of the U where the grid is small, and the fine "
        "detail of the top, which the skip connections hand straight to the up blocks. Stable Diffusion's UNet "
        "predicts the noise at every pixel of the latent, a job of the same shape. Blocks marked *CrossAttn* also "
        "read the prompt. The numbers are counted on the loaded model: its parameters, block by block (they add "
        "up to the model's total), and the floating-point operations of this one call, 2 per multiply-add of its "
        "convolutions, linear layers and attention, counted by PyTorch's `FlopCounterMode`. With CFG every step "
        "makes two such calls, one per prompt.",
    ),
    "first": Caption(
        "The first layer is a convolution: each small kernel slides over x_t and makes one feature map.",
        "A kernel is a few weights per latent channel (blue negative, red positive). At every position the layer "
        "multiplies the kernel with the patch of x_t under it and adds it all up: where the patch looks like the "
        "kernel, the map is bright. In image networks the first kernels find edges and blobs; here they read the "
        "noisy latent. Shown: the kernels whose maps vary most over the image, out of all of them.",
    ),
    "blocks": Caption(
        "Each block's output: some of its channels (grey, mid-grey = 0) and the mean over all its channels "
        "(right, colour).",
        "A block hands the next one a stack of feature maps, one per channel. Going down, the maps get coarser "
        "and more numerous: each position sums up a larger part of the image. Going up they get finer again. "
        "Shown: the 16 channels that vary most over the image, on one grey scale per block, and the mean of "
        "every channel, on its own scale. The bars compare how strongly each block's output is active.",
    ),
}


def build(manager: ModelManager, limits: Limits, explained: ExplainControls) -> None:
    gr.Markdown("## Convolutions and the UNet")
    with gr.Row():
        look = gr.Button("Look inside the UNet at this step", variant="primary", scale=0, min_width=300)
        note = gr.Markdown(INTRO)
    picture = gr.Image(label="The UNet", format="png", interactive=False, elem_classes="unet-diagram")
    panel_caption(CAPTIONS["diagram"])
    first = gr.Image(label="The first convolution", format="png", interactive=False, elem_classes="first-convolution")
    panel_caption(CAPTIONS["first"])
    blocks = gr.Gallery(
        label="Every block's output", format="png", columns=4, height="auto", object_fit="contain",
        interactive=False, elem_classes="unet-blocks",
    )  # fmt: skip
    activation = gr.Image(
        label="Mean activation of each block", show_label=False, format="png", interactive=False, height=380
    )
    panel_caption(CAPTIONS["blocks"])

    def show(shown: ExplainView | None, at: int, request: gr.Request) -> tuple:
        return unet_views(manager, limits, shown, at, request)

    shown_parts = [note, picture, first, blocks, activation]
    look.click(show, [explained.view, explained.step], shown_parts, **PRIVATE, **GPU)
    # Another run on the Explain tab: what is shown here belongs to the last one.
    explained.view.change(lambda: (INTRO, None, None, None, None), None, shown_parts, **PRIVATE, show_progress="hidden")


def unet_views(
    manager: ModelManager, limits: Limits, shown: ExplainView | None, at: int, request: gr.Request | None
) -> tuple:
    """The section's pictures for the Explain tab's run at its step `at`: one UNet call, a job of this session."""
    if shown is None:
        raise gr.Error("Explain a prompt first, or replay a saved run, on the Explain tab.")
    run = shown.run
    step = step_index(at, run.steps)
    with user_errors():  # step_input's refusals too (a step the run does not have ...)
        inside: UNetInside = job_result(manager, look_inside, UNetRequest(step_input(run, step)), limits, request)
    model = run.recipe.model
    return (
        summary(inside, step, run.eps_cond[step], run.eps_uncond[step] if run.negative_attention else None),
        diagram(inside, model),
        first_convolution(inside),
        block_tiles(inside),
        activation_chart(inside),
    )


def summary(inside: UNetInside, step: int, eps_cond, eps_uncond) -> str:
    """Markdown: what the call was and what it cost, and how closely it reproduced the recorded step."""
    h, w = inside.latents.shape[-2:]
    return (
        f"**Step {step + 1}** · t = {inside.timestep:.0f} · one UNet call at {h}×{w} latents: "
        f"{count_text(inside.parameters)} parameters, {count_text(inside.flops, 'FLOP')} per image. "
        f"{reproduction_note(inside, eps_cond, eps_uncond)}"
    )
