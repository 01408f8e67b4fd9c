"""The Inside tab's latent-space section: the VAE's compression, the run's latent channels at the Explain step, and
an encode → decode round trip of any image.

Layout and wiring only: sdplay/inside/latent.py computes and draws; the round trip is a job.
"""

import gradio as gr
import numpy as np
from PIL import Image

from sdplay.explain.captions import ModelFacts
from sdplay.explain.render import ExplainView, display_size
from sdplay.explain.ui import ExplainControls, step_index
from sdplay.inside.latent import (
    CAPTIONS,
    INTRO,
    RoundTrip,
    RoundTripRequest,
    channel_sheet,
    compression,
    round_trip,
)
from sdplay.runtime.images import open_image
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import Limits
from sdplay.ui.common import GPU, image_upload, job_result, user_errors

QUIET = {"show_progress": "hidden", "api_visibility": "private"}
PANEL_HEIGHT = 260


def image(label: str, **kwargs) -> gr.Image:
    return gr.Image(label=label, format="png", interactive=False, **kwargs)


def caption(key: str) -> gr.Markdown:
    return gr.Markdown(CAPTIONS[key], elem_classes="caption")


def compression_text(shown: ExplainView | None, manager: ModelManager) -> str:
    """The run's compression (its model's VAE, its size); before a run, the loaded model's at its native size."""
    if shown is not None:
        recipe = shown.run.recipe
        return compression(shown.facts, recipe.width, recipe.height).describe() + (f" (This run: {recipe.model}.)")
    model = manager.model
    size = model.settings.size or model.native_size
    return compression(ModelFacts.of_pipeline(model.pipe), size, size).describe() + f" ({model.name}, native size.)"


def channels_at(shown: ExplainView, at: int) -> Image.Image:
    """The run's x_t and x̂₀ at the Explain step, channel by channel."""
    run = shown.run
    step = step_index(at, run.steps)
    rows = [("x_t", run.latents[step].numpy()), ("x0 guess", run.x0[step].numpy())]
    return channel_sheet(rows, f"The latent at step {step + 1} of {run.steps}")


def shown_pair(trip: RoundTrip) -> list[Image.Image]:
    """The original, the decoded image and the error map, at a size a browser shows sharp (a tiny model's 64 px
    would be blurred), with the error's amplification in its label."""
    height, width = trip.original.shape[:2]
    size = display_size(width, height)
    error, gain = trip.error()
    return [
        Image.fromarray(trip.original).resize(size, Image.Resampling.NEAREST),
        Image.fromarray(trip.decoded).resize(size, Image.Resampling.NEAREST),
        gr.Image(error.resize(size, Image.Resampling.NEAREST), label=f"Error map (×{gain})"),
    ]


def build(manager: ModelManager, limits: Limits, explained: ExplainControls) -> None:
    gr.Markdown("## Latent space")
    gr.Markdown(INTRO.short)
    with gr.Accordion("More", open=False):
        gr.Markdown(INTRO.more)
    sizes = gr.Markdown(compression_text(None, manager), elem_classes="sdplay-compression")
    caption("compression")
    channels = image("The latent's channels at this step", show_label=False, elem_classes="sdplay-latent-channels")
    caption("channels")

    gr.Markdown("### A round trip through the VAE")
    with gr.Row():
        with gr.Column(scale=1, min_width=240):
            upload = image_upload("An image to encode and decode", PANEL_HEIGHT)
            use_run = gr.Button("Use the Explain run's image", size="sm")
            start = gr.Button("Encode and decode", variant="primary", elem_classes="sdplay-round-trip")
            quality = gr.Markdown(elem_classes="sdplay-psnr")
        with gr.Column(scale=3):
            with gr.Row():
                original = image("As the VAE read it", height=PANEL_HEIGHT)
                decoded = image("Decoded", height=PANEL_HEIGHT, elem_classes="sdplay-decoded")
                error = image("Error map", height=PANEL_HEIGHT)
            caption("round_trip")
            caption("error")
    latent = image("Its latent's channels", show_label=False, elem_classes="sdplay-image-latent")
    caption("latent")

    def show_run(shown: ExplainView | None, at: int) -> tuple:
        return run_views(manager, shown, at)

    gr.on(
        [explained.view.change, explained.step.change],
        show_run,
        [explained.view, explained.step],
        [sizes, channels],
        # Not "always_last": on these two change triggers it made Gradio 6.31 fire the Explain tab's step, word and
        # final-image changes again and again (~3 a second, forever, after any run was shown).
        trigger_mode="multiple",
        **QUIET,
    )
    use_run.click(run_image, explained.view, upload, **QUIET)

    def encode_decode(path: str | None, request: gr.Request) -> list:
        return round_trip_views(manager, limits, path, request)

    outputs = [original, decoded, error, quality, latent]
    start.click(encode_decode, upload, outputs, api_visibility="private", **GPU)


def run_views(manager: ModelManager, shown: ExplainView | None, at: int) -> tuple:
    """The run's compression and its latent's channels at the Explain step (nothing new before a run)."""
    if shown is None:
        return gr.skip(), gr.skip()
    return compression_text(shown, manager), channels_at(shown, at)


def run_image(shown: ExplainView | None) -> Image.Image:
    """The Explain run's image, to encode and decode."""
    if shown is None:
        raise gr.Error("Record a run on the Explain tab first, or replay a saved one.")
    return Image.fromarray(shown.run.image)


def round_trip_views(manager: ModelManager, limits: Limits, path: str | None, request: gr.Request | None) -> list:
    """Encode the uploaded image and decode it again (a job): the pair, the error map, the quality and its latent."""
    if not path:
        raise gr.Error("Upload an image first (or use the Explain run's).")
    with user_errors():
        picture = open_image(path)
    picture.thumbnail((limits.max_size, limits.max_size), Image.Resampling.LANCZOS)  # the job rounds the size
    trip = job_result(manager, round_trip, RoundTripRequest(np.array(picture)), limits, request)
    rows = [("your image", trip.latent.numpy())]
    channels, height, width = trip.latent.shape
    sheet = channel_sheet(rows, f"Your image's latent: {channels} channels of {height}x{width}")  # ASCII: the font's
    return [*shown_pair(trip), trip.describe(), sheet]
