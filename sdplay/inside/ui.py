"""The Inside tab: the model's parts (text encoder, UNet, VAE, attention) seen through the run on the Explain tab.

Each section is a module of its own whose `build(manager, limits, explained)` lays it out and wires it; adding a
section is one line in `SECTIONS`.
"""

from collections.abc import Callable

import gradio as gr

from sdplay.explain.ui import ExplainControls
from sdplay.inside import attention_ui as inside_attention
from sdplay.inside import latent_ui as inside_latent
from sdplay.inside import text_ui as inside_text
from sdplay.inside import unet_ui as inside_unet
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import Limits
from sdplay.ui.tabs import Page, Tab

Section = Callable[[ModelManager, Limits, ExplainControls], None]
SECTIONS: list[Section] = [
    inside_text.build,
    inside_unet.build,
    inside_latent.build,
    inside_attention.build,
]


def build(page: Page) -> None:
    manager, limits, explained = page.manager, page.limits, page.part("explain")
    gr.Markdown(
        "What happens inside the model for the run on the **Explain** tab: record one there, or replay a saved one. "
        "Views that need the model run it again with the run's seed, on the model that made it."
    )
    for section in SECTIONS:
        section(manager, limits, explained)


TAB = Tab("inside", "Inside", build)
