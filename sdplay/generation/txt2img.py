"""The Text-to-Image tab: a prompt and settings in, a batch of PNGs out."""

import gradio as gr

from sdplay.generation.send import offer_results
from sdplay.runtime.request import GenerationRequest, Task
from sdplay.ui.common import TabParts, controls, results, run, wire_generation
from sdplay.ui.tabs import Page, Tab


def build(page: Page) -> None:
    manager, limits = page.manager, page.limits
    with gr.Row():
        with gr.Column():
            c = controls(manager, limits, fast=True)
        with gr.Column():
            r = results()

    def txt2img(request: gr.Request = None, progress=gr.Progress(), **settings):
        """Generate images from a text prompt; returns the PNGs (with A1111 `parameters`), infotext and seed."""
        yield from run(manager, GenerationRequest(task=Task.TXT2IMG, **settings), limits, request, progress)

    inputs = c.named() | c.named("width", "height", "batch_size", "schedule")
    wire_generation(manager, r, txt2img, inputs, "txt2img")
    parts = TabParts(c, r)
    offer_results(page, TAB.id, parts)


TAB = Tab("txt2img", "Text-to-Image", build)
