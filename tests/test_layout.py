"""The wiring between tabs (what Send to and PNG Info's restore put into the target tab) and the model bar."""

import gradio as gr
from PIL import Image

from sdplay.generation.send import CONTROL_FIELDS, image_value, infotext_updates
from sdplay.page import build_demo
from sdplay.runtime.composition import local_manager
from sdplay.runtime.images import brush_radius
from sdplay.runtime.models import ModelSwitch, SwitchPolicy
from sdplay.runtime.request import Limits


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
