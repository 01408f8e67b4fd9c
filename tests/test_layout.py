"""The wiring between tabs: what Send to and PNG Info's restore put into the target tab."""

from PIL import Image

from sdplay.images import brush_radius
from sdplay.ui.layout import CONTROL_FIELDS, _image_value, _settings_updates


def test_send_to_inpaint_sizes_the_brush_to_the_sent_image(tmp_path):
    path = tmp_path / "result.png"
    Image.new("RGB", (64, 96)).save(path)
    assert _image_value("img2img", str(path)) == str(path)
    editor = _image_value("inpaint", str(path))
    assert editor.value["background"]["path"].endswith("result.png") and editor.value["layers"] == []
    assert editor.brush.default_size == brush_radius((64, 96)) == 4


def test_restored_settings_cover_every_control_and_set_the_schedules_offered(tmp_path):
    text = "a red cat\nNegative prompt: dog\nSteps: 12, Sampler: DDIM, Schedule type: SGM Uniform, CFG scale: 4.5, " \
        "Seed: 7, Size: 64x96"  # fmt: skip
    updates = dict(zip(CONTROL_FIELDS, _settings_updates(text), strict=True))
    assert (updates["prompt"], updates["negative_prompt"], updates["sampler"]) == ("a red cat", "dog", "DDIM")
    assert (updates["steps"], updates["guidance_scale"], updates["seed"]) == (12, 4.5, 7)
    assert (updates["width"], updates["height"]) == (64, 96)
    schedule = updates["schedule"]
    assert schedule.value == "SGM Uniform" and "Karras" not in [c[0] for c in schedule.choices]
