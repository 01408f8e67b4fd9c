"""The PNG Info tab: read the generation parameters stored in an image and restore them into a tab."""

from functools import partial

import gradio as gr

from sdplay.generation.send import wire_restore
from sdplay.runtime.images import open_image
from sdplay.runtime.metadata import read_infotext
from sdplay.ui.common import image_upload, user_errors
from sdplay.ui.tabs import Page, Tab

TARGETS = {"txt2img": "Text-to-Image", "img2img": "Image-to-Image", "inpaint": "Inpaint"}


def read_parameters(image: str | None) -> str:
    """The A1111 infotext stored in the image, or a sentence saying there is none."""
    if not image:
        return ""
    with user_errors():
        text = read_infotext(open_image(image))
    return text or "This image carries no generation parameters."


def build(page: Page) -> None:
    with gr.Row():
        with gr.Column():
            image = image_upload("Image", 400)
        with gr.Column():
            text = gr.Textbox(label="Parameters", lines=8, buttons=["copy"])
            with gr.Row():
                send = {tab: gr.Button(f"Send to {label}", size="sm") for tab, label in TARGETS.items()}
    image.change(read_parameters, image, text, api_name="png_info")
    for tab, button in send.items():
        page.when_built(partial(wire_restore, page, button, tab, image, text))


TAB = Tab("pnginfo", "PNG Info", build)
