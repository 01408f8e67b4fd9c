"""Send to: a result of one generation tab, or PNG Info's parameters, copied into another tab with its settings.

A result's settings travel as the request that made it (`GenerationResult.requests`, kept in the tab's `ran`
state); only PNG Info, whose image comes from anywhere, reads them from the infotext.
"""

import gradio as gr
from PIL import Image

from sdplay.runtime.images import decode_errors
from sdplay.runtime.metadata import parse_infotext, settings_from_infotext
from sdplay.runtime.request import GenerationRequest
from sdplay.runtime.samplers import schedule_names
from sdplay.ui.common import TabParts, mask_brush, user_errors
from sdplay.ui.tabs import Page

# The controls that Send to and PNG Info fill, by their `Controls` field names (= the request's fields).
CONTROL_FIELDS = [
    "prompt", "negative_prompt", "sampler", "schedule", "steps", "guidance_scale", "seed", "width", "height",
]  # fmt: skip
TARGETS = ("img2img", "inpaint")  # the tabs that take an image


def control_updates(settings: dict) -> list:
    """Values for `CONTROL_FIELDS` from request fields, `gr.skip()` for those `settings` lacks; the schedule's
    choices follow the sampler's."""
    settings = dict(settings)
    if "sampler" in settings:
        settings["schedule"] = gr.Dropdown(choices=schedule_names(settings["sampler"]), value=settings["schedule"])
    return [settings.get(name, gr.skip()) for name in CONTROL_FIELDS]


def infotext_updates(text: str) -> list:
    """Values for `CONTROL_FIELDS` from an infotext (PNG Info), `gr.skip()` for what it does not record."""
    info = parse_infotext(text or "")
    settings = settings_from_infotext(info)
    if "Sampler" in info.params and "sampler" not in settings:
        gr.Warning(f"sdplay has no sampler {info.params['Sampler']!r}: the tab keeps its own.")
    return control_updates(settings)


def image_value(tab: str, path: str) -> str | dict:
    """An image file as the value of `tab`'s image input: the inpaint editor takes layers, and a brush sized to it."""
    if tab == "img2img":
        return path
    with user_errors(), decode_errors(), Image.open(path) as picture:  # the server may have deleted it since
        size = picture.size
    return gr.update(value={"background": path, "layers": [], "composite": path}, brush=mask_brush(size))


def picked(gallery: list | None, ran: list[GenerationRequest], index: int) -> tuple[str, dict]:
    """The selected image (the last if the selection is past the end) and the settings that made it (none for a
    preview: a stopped run's)."""
    if not gallery:
        raise gr.Error("Generate an image first.")
    index = min(index, len(gallery) - 1)
    request = ran[index] if index < len(ran) else None
    return gallery[index][0], {name: getattr(request, name) for name in CONTROL_FIELDS} if request else {}


def offer_results(page: Page, tab_id: str, parts: TabParts) -> None:
    """A generation tab's part in the page: its controls follow the loaded model, its image input takes what
    Send to and PNG Info send, and its results get Send to buttons."""
    page.offer(tab_id, parts)
    page.follow_model(parts.controls)
    page.when_built(lambda: wire_send(page, parts))


def wire_send(page: Page, source: TabParts) -> None:
    """ "Send to" buttons copy the selected result (the first if none is selected) into another tab, with the
    settings that made it: each image of a batch keeps its own seed."""
    results = source.results
    selected = gr.State(0)

    def remember(event: gr.SelectData) -> int:
        return event.index

    results.gallery.select(remember, None, selected, api_visibility="private")
    for tab, button in zip(TARGETS, (results.to_img2img, results.to_inpaint), strict=True):
        target: TabParts = page.part(tab)

        def send(gallery: list | None, ran: list, index: int, tab: str = tab):
            path, settings = picked(gallery, ran, index)
            return *control_updates(settings), image_value(tab, path), gr.Tabs(selected=tab)

        outputs = [*(getattr(target.controls, name) for name in CONTROL_FIELDS), target.image, page.tabs]
        button.click(send, [results.gallery, results.ran, selected], outputs, api_visibility="private")


def wire_restore(page: Page, button: gr.Button, tab: str, info_image: gr.Image, info_text: gr.Textbox) -> None:
    """PNG Info's "Send to" restores the recorded settings (and, for image tabs, the image) into `tab`."""
    target: TabParts = page.part(tab)
    fields = [getattr(target.controls, name) for name in CONTROL_FIELDS]
    image = target.image

    def restore(text: str, path: str | None):
        updates = infotext_updates(text)
        if image is None:
            return *updates, gr.Tabs(selected=tab)
        return *updates, image_value(tab, path) if path else gr.skip(), gr.Tabs(selected=tab)

    outputs = [*fields, *([image] if image is not None else []), page.tabs]
    button.click(restore, [info_text, info_image], outputs, api_visibility="private")
