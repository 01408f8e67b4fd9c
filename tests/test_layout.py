"""The wiring between tabs (what Send to and PNG Info's restore put into the target tab) and the model bar."""

import gradio as gr
import pytest
from PIL import Image

from sdplay.generation.send import CONTROL_FIELDS, image_value, infotext_updates, picked
from sdplay.page import TABS, build_demo
from sdplay.runtime.composition import local_manager
from sdplay.runtime.generate import generate
from sdplay.runtime.images import brush_radius
from sdplay.runtime.models import ModelSwitch, SwitchPolicy
from sdplay.runtime.request import GenerationRequest, Limits
from sdplay.ui.tabs import Page, Tab


def test_send_to_inpaint_sizes_the_brush_to_the_sent_image(tmp_path):
    path = tmp_path / "result.png"
    Image.new("RGB", (64, 96)).save(path)
    assert image_value("img2img", str(path)) == str(path)
    editor = image_value("inpaint", str(path))
    assert editor["value"] == {"background": str(path), "layers": [], "composite": str(path)}
    assert editor["brush"].default_size == brush_radius((64, 96)) == 4


def test_restored_settings_cover_every_control_and_set_the_schedules_offered(tmp_path):
    text = "a red cat\nNegative prompt: dog\nSteps: 12, Sampler: DDIM, Schedule type: SGM Uniform, CFG scale: 4.5, " \
        "Seed: 7, Size: 64x96"  # fmt: skip
    updates = dict(zip(CONTROL_FIELDS, infotext_updates(text), strict=True))
    assert (updates["prompt"], updates["negative_prompt"], updates["sampler"]) == ("a red cat", "dog", "DDIM")
    assert (updates["steps"], updates["guidance_scale"], updates["seed"]) == (12, 4.5, 7)
    assert (updates["width"], updates["height"]) == (64, 96)
    schedule = updates["schedule"]
    assert schedule.value == "SGM Uniform" and "Karras" not in [c[0] for c in schedule.choices]


def test_a_locked_server_offers_no_load_and_pages_opening_after_a_switch_show_the_new_model(
    tiny_model, tiny_inpaint_model
):
    manager = local_manager(device="cpu")
    manager.load(str(tiny_model))
    listed = {model.name: str(model) for model in (tiny_model, tiny_inpaint_model)}
    demo = build_demo(manager, Limits(), ModelSwitch(listed, SwitchPolicy.LOCKED))
    blocks = list(demo.blocks.values())
    load = next(b for b in blocks if isinstance(b, gr.Button) and b.value == "Load")
    model_box = next(b for b in blocks if isinstance(b, gr.Dropdown) and b.label == "Model")
    assert not load.visible and not model_box.interactive and "this model only" in model_box.info
    opened = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", None) == "opened")
    (status,) = opened().values()  # the model is the page's: only the status line is refreshed
    assert status.startswith(tiny_model.name) and "Loaded by" not in status
    manager.load(str(tiny_inpaint_model), by="teacher")  # as an admin on another server would
    updates = opened()
    status = next(value for component, value in updates.items() if component.elem_classes == ["status"])
    assert updates[model_box]["value"] == tiny_inpaint_model.name
    assert status.startswith(f"{tiny_inpaint_model.name} · cpu") and "Loaded by teacher at" in status


def test_send_to_copies_the_request_that_made_the_picked_image_not_its_file(manager, tmp_path):
    """Each image of a batch is sent with its own seed and size, from the result's requests: a file without an
    infotext (or with another one) changes nothing."""
    result = generate(manager, GenerationRequest(prompt="a cat", steps=2, seed=41, batch_size=2, width=64, height=96))
    assert [request.seed for request in result.requests] == result.seeds == [41, 42]
    stranger = tmp_path / "other.png"
    Image.new("RGB", (8, 8)).save(stranger)  # no infotext at all
    gallery = [(str(stranger), None), (str(stranger), None)]
    path, settings = picked(gallery, result.requests, 5)  # a selection past the end takes the last
    assert path == str(stranger)
    assert settings == {
        "prompt": "a cat", "negative_prompt": "", "sampler": result.requests[1].sampler, "schedule": "Automatic",
        "steps": 2, "guidance_scale": 7.0, "seed": 42, "width": 64, "height": 96,
    }  # fmt: skip
    assert picked(gallery, [], 0) == (str(stranger), {})  # a stopped run's preview: the image alone


def toy_tab(page: Page) -> None:
    """A tab as a new feature would add one: it reads what Text-to-Image offers and serves an API endpoint."""
    txt2img = page.part("txt2img")
    echo = gr.Textbox(label="Toy echo")
    gr.Button("Toy").click(toy_echo, txt2img.controls.prompt, echo, api_name="toy_echo")


def toy_echo(prompt: str) -> str:
    return f"toy: {prompt}"


def test_a_tab_is_its_module_plus_one_registry_line(manager):
    """Registering a toy Tab puts it on the page, after the tabs it uses, with its event in the API."""
    toy = Tab("toy", "Toy tab", toy_tab)
    demo = build_demo(manager, Limits(), ModelSwitch({"tiny": "tiny"}, SwitchPolicy.LOCKED), tabs=[*TABS, toy])
    tabs = [block for block in demo.blocks.values() if isinstance(block, gr.Tab)]
    assert [tab.id for tab in tabs] == [*(tab.id for tab in TABS), "toy"]
    assert tabs[-1].label == "Toy tab"
    assert "/toy_echo" in demo.get_api_info()["named_endpoints"]
    (fn,) = [f for f in demo.fns.values() if f.api_name == "toy_echo"]
    assert fn.fn("a cat") == "toy: a cat"


def test_a_tab_that_asks_for_a_later_tab_is_told_which():
    page = Page(manager=None, limits=Limits(), switch=None)
    with pytest.raises(LookupError, match="'compare'"):
        page.part("compare")
