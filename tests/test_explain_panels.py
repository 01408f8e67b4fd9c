"""The Explain view's panel registry (`render.PANELS`): a toy panel, registered as one line, is drawn at each step,
laid out on the tab with its caption, redrawn by the tab's step slider, and sent to presentation mode if it asks."""

import numpy as np
import pytest
from PIL import Image

from sdplay.explain import ui as explain_ui
from sdplay.explain.captions import Caption
from sdplay.explain.capture import explain
from sdplay.explain.filmstrip import Filmstrip
from sdplay.explain.render import PANELS, ExplainView, HeatmapSettings, Panel, Presented
from sdplay.page import build_demo
from sdplay.runtime.models import ModelSwitch, SwitchPolicy
from sdplay.runtime.request import GenerationRequest, Limits

STEPS = 3
TOY = Panel(
    "toy", lambda frame: f"Toy panel at step {frame.step + 1}", kind="markdown", value="No step yet",
    caption=Caption("A toy panel: it says the step.", "One line in the registry."),
)  # fmt: skip
TOY_PICTURE = Panel(
    "toy_picture", lambda frame: Image.new("RGB", (32, 32), (60 * frame.step, 0, 255)), "Toy picture",
    presented=Presented("Toy", "Blue, redder at each step.", 5),
)  # fmt: skip


@pytest.fixture
def toys():
    """The toy panels registered (at the end of the registry, as a new panel is) for one test."""
    PANELS.extend([TOY, TOY_PICTURE])
    yield
    for toy in (TOY, TOY_PICTURE):
        PANELS.remove(toy)


@pytest.fixture(scope="module")
def view(manager) -> ExplainView:
    return ExplainView(explain(manager, GenerationRequest(prompt="a red cat", sampler="Euler", steps=STEPS, seed=1)))


def test_a_registered_panel_is_drawn_at_each_step(toys, view):
    assert [view.draw(step, HeatmapSettings())["toy"] for step in range(STEPS)] == [
        f"Toy panel at step {step}" for step in range(1, STEPS + 1)
    ]
    # Presentation mode sends each step of it with the page, after the panels it already showed.
    frames = explain_ui.presentation.reel(view, HeatmapSettings(), Filmstrip(view))["frames"]
    assert list(frames) == ["x0", "x_t", "heatmap", "guidance", "toy_picture"] and len(frames["toy_picture"]) == STEPS


def test_a_registered_panel_is_on_the_tab_and_follows_the_step(toys, manager, view):
    demo = build_demo(manager, Limits(), ModelSwitch({"tiny": "tiny"}, SwitchPolicy.LOCKED), tabs=[explain_ui.TAB])
    components = demo.get_config_file()["components"]

    def ids(**props) -> list[int]:
        return [c["id"] for c in components if all(c["props"].get(k) == v for k, v in props.items())]

    (toy,) = ids(value="No step yet")
    assert ids(value="A toy panel: it says the step.") and ids(value="One line in the registry.")  # its caption
    (picture,) = ids(label="Toy picture")
    assert ids(elem_classes=["sdplay-panel sdplay-panel-toy_picture"])  # on the presentation screen too

    # The event that the step slider's change runs draws it, with every other panel of the step.
    step = next(c["id"] for c in components if c["props"].get("label") == "Step")
    changes = [f for f in demo.fns.values() if (step, "change") in [(t[0], t[1]) for t in f.targets]]
    (redraw,) = [f for f in changes if toy in [output._id for output in f.outputs]]
    outputs = [output._id for output in redraw.outputs]
    scrub = dict(word=1, colormap="viridis", opacity=0.6, scale="Per word", mode="This step", first=1, last=STEPS)
    drawn = redraw.fn(view=view, step=2, **scrub)
    assert drawn[outputs.index(toy)] == "Toy panel at step 2"
    assert np.asarray(drawn[outputs.index(picture)])[0, 0].tolist() == [60, 0, 255]


def test_a_panel_without_a_place_on_the_tab_is_refused(manager):
    lost = Panel("lost", lambda frame: "", kind="markdown", place="nowhere")
    PANELS.append(lost)
    try:
        with pytest.raises(ValueError, match=r"no place for these panels: lost \(nowhere\)"):
            build_demo(manager, Limits(), ModelSwitch({"tiny": "tiny"}, SwitchPolicy.LOCKED), tabs=[explain_ui.TAB])
    finally:
        PANELS.remove(lost)
