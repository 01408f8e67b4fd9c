"""The whole app: the model bar on top, one tab per task, and the wiring between tabs (send to, restore).

`build_demo()` returns a queued `gr.Blocks`; app.py launches it.
"""

import gradio as gr

from sdplay.errors import UserError
from sdplay.metadata import parse_infotext, settings_from_infotext
from sdplay.models import ModelManager
from sdplay.requests import Limits
from sdplay.samplers import DEFAULT_SAMPLER, sampler_names
from sdplay.ui import explain, img2img, inpaint, pnginfo, txt2img
from sdplay.ui.common import GPU, Controls, Results, user_errors

EXAMPLES = [
    "a large red circle on the left on a gray background",
    "a small blue triangle at the top on a yellow background",
    "a large white square in the center on a black background",
    "a watercolor painting of a lighthouse at dawn, soft light",
]
CONTROL_FIELDS = ["prompt", "negative_prompt", "sampler", "steps", "guidance_scale", "seed", "width", "height"]


def model_bar(
    manager: ModelManager, models: dict[str, str], tabs: list[Controls], native_sized: list[Controls]
) -> None:
    """Pick and load a model; loading refreshes the status line, the samplers offered in `tabs` and the size of
    the `native_sized` tabs (those whose default size is the model's, not an input image's).

    `models` maps the names shown to their sources, so that local paths on the server are never shown.
    """
    with gr.Row():
        choice = gr.Dropdown(
            list(models), value=manager.model.name, label="Model", allow_custom_value=True, scale=4,
            info="A Hub id (org/name) downloads on first use; local models are set with --model when starting.",
        )  # fmt: skip
        load = gr.Button("Load", scale=1)
    status = gr.Markdown(manager.status(), elem_classes="status")

    def load_model(source: str, progress=gr.Progress(track_tqdm=True)):
        with user_errors():
            if not source:
                raise UserError("Choose a model first.")
            model = manager.load(models.get(source, source), allow_local=source in models)
        gr.Info(f"Loaded {model.name}.")
        samplers = [gr.Dropdown(choices=sampler_names(model.allows_lcm), value=DEFAULT_SAMPLER) for _ in tabs]
        return manager.status(), *samplers, *[gr.Slider(value=model.native_size)] * 2 * len(native_sized)

    sizes = [slider for c in native_sized for slider in (c.width, c.height)]
    outputs = [status, *(c.sampler for c in tabs), *sizes]
    load.click(load_model, choice, outputs, api_visibility="private", **GPU)


def build_demo(manager: ModelManager, limits: Limits, models: dict[str, str]) -> gr.Blocks:
    with gr.Blocks(title="sdplay", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# sdplay · a Stable Diffusion playground")
        model_slot = gr.Column()
        with gr.Tabs() as tabs:
            with gr.Tab("Text-to-Image", id="txt2img"):
                t2i = txt2img.build(manager, limits, EXAMPLES)
            with gr.Tab("Image-to-Image", id="img2img"):
                i2i_image, i2i, i2i_results = img2img.build(manager, limits, EXAMPLES)
            with gr.Tab("Inpaint", id="inpaint"):
                inp_image, inp, inp_results = inpaint.build(manager, limits, EXAMPLES)
            with gr.Tab("Explain", id="explain"):
                explained = explain.build(manager, limits, EXAMPLES)
            with gr.Tab("PNG Info", id="pnginfo"):
                info_image, info_text, send = pnginfo.build()
        with model_slot:
            model_bar(manager, models, [t2i[0], i2i, inp, explained], [t2i[0], explained])

        for results in (t2i[1], i2i_results, inp_results):
            _wire_send(results, tabs, i2i_image, inp_image)
        targets = {"txt2img": t2i[0], "img2img": i2i, "inpaint": inp}
        images = {"img2img": i2i_image, "inpaint": inp_image}
        for tab, button in send.items():
            _wire_restore(button, tab, targets[tab], images.get(tab), info_image, info_text, tabs)
    demo.queue(api_open=False, max_size=32)
    return demo


def _wire_send(results: Results, tabs: gr.Tabs, i2i_image: gr.Image, inp_image: gr.ImageMask) -> None:
    """ "Send to" buttons copy the selected result (the first if none is selected) into another tab."""
    selected = gr.State(0)

    def remember(event: gr.SelectData) -> int:
        return event.index

    results.gallery.select(remember, None, selected, api_visibility="private")

    def pick(gallery: list | None, index: int) -> str:
        if not gallery:
            raise gr.Error("Generate an image first.")
        return gallery[min(index, len(gallery) - 1)][0]

    def to_img2img(gallery, index):
        return pick(gallery, index), gr.Tabs(selected="img2img")

    def to_inpaint(gallery, index):
        path = pick(gallery, index)
        return {"background": path, "layers": [], "composite": path}, gr.Tabs(selected="inpaint")

    inputs = [results.gallery, selected]
    results.to_img2img.click(to_img2img, inputs, [i2i_image, tabs], api_visibility="private")
    results.to_inpaint.click(to_inpaint, inputs, [inp_image, tabs], api_visibility="private")


def _wire_restore(button, tab: str, controls: Controls, image, info_image, info_text, tabs: gr.Tabs) -> None:
    """PNG Info's "Send to" restores the recorded settings (and, for image tabs, the image) into `tab`."""
    fields = [getattr(controls, name) for name in CONTROL_FIELDS]

    def restore(text: str, path: str | None):
        settings = settings_from_infotext(parse_infotext(text or ""))
        updates = [settings.get(name, gr.skip()) for name in CONTROL_FIELDS]
        if image is None:
            return *updates, gr.Tabs(selected=tab)
        picture = path if tab == "img2img" else {"background": path, "layers": [], "composite": path}
        return *updates, picture if path else gr.skip(), gr.Tabs(selected=tab)

    outputs = [*fields, *([image] if image is not None else []), tabs]
    button.click(restore, [info_text, info_image], outputs, api_visibility="private")
