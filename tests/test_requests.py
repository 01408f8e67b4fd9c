"""Request validation: the one place where user numbers and texts are checked, rounded or refused."""

import math

import pytest
from PIL import Image

from sdplay.runtime.errors import UserError
from sdplay.runtime.request import GenerationRequest, Limits, Task, size_warnings, validated


def test_valid_request_is_rounded_to_what_the_pipeline_accepts():
    request = validated(GenerationRequest(prompt="a cat", steps=20.4, width=250, height=513, seed=7.0))
    assert (request.steps, request.width, request.height, request.seed) == (20, 248, 512, 7)
    assert validated(GenerationRequest(width=0, height=0)).width == 0  # 0 keeps "the default"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", 0, "steps"),
        ("steps", 151, "steps"),
        ("guidance_scale", math.nan, "finite"),
        ("guidance_scale", math.inf, "finite"),
        ("guidance_scale", 31, "guidance_scale"),
        ("guidance_scale", "lots", "number"),
        ("width", 1032, "width"),
        ("height", -8, "height"),
        ("width", 32, "at least 64"),
        ("seed", 2**32, "seed"),
        ("seed", -2, "seed"),
        ("batch_size", 9, "batch_size"),
        ("sampler", "Euler z", "Unknown sampler"),
        ("prompt", "x" * 10_001, "characters"),
        ("prompt", None, "text"),
        ("prompt", "a \ud800 b", "invalid character at position 3 \\(U\\+D800"),
        ("negative_prompt", "\udfff", "negative_prompt has an invalid character"),
    ],
)
def test_bad_values_are_refused_with_a_message_naming_them(field, value, message):
    with pytest.raises(UserError, match=message):
        validated(GenerationRequest(**{field: value}))


def test_the_size_cap_is_configurable():
    assert validated(GenerationRequest(width=1024), Limits(max_size=1024)).width == 1024
    with pytest.raises(UserError, match="between 0 and 512"):
        validated(GenerationRequest(width=600), Limits(max_size=512))


def test_image_tasks_need_an_image_a_strength_and_for_inpaint_a_mask():
    image = Image.new("RGB", (64, 64))
    with pytest.raises(UserError, match="Upload an image"):
        validated(GenerationRequest(task=Task.IMG2IMG))
    with pytest.raises(UserError, match="strength"):
        validated(GenerationRequest(task=Task.IMG2IMG, image=image, strength=0))
    with pytest.raises(UserError, match="mask"):
        validated(GenerationRequest(task=Task.INPAINT, image=image))
    assert validated(GenerationRequest(task=Task.IMG2IMG, image=image, strength=1)).strength == 1


def test_combined_and_alias_sampler_names_become_a1111_19_pairs():
    request = validated(GenerationRequest(sampler="DPM++ 2M Karras"))
    assert (request.sampler, request.schedule) == ("DPM++ 2M", "Automatic")  # Karras is its default
    request = validated(GenerationRequest(sampler="DPM++ 2M SDE Karras"))
    assert (request.sampler, request.schedule) == ("DPM++ 2M SDE", "Karras")  # its default is Exponential
    request = validated(GenerationRequest(sampler="PNDM", schedule="sgm_uniform"))
    assert (request.sampler, request.schedule) == ("PLMS", "SGM Uniform")
    with pytest.raises(UserError, match="DDIM sampler has no Karras schedule"):
        validated(GenerationRequest(sampler="DDIM", schedule="Karras"))
    with pytest.raises(UserError, match="Unknown schedule type"):
        validated(GenerationRequest(schedule="Polyexponential"))


def test_requests_take_keywords_only():
    with pytest.raises(TypeError):
        GenerationRequest(Task.TXT2IMG, "a cat")  # type: ignore[misc]


def test_size_warnings_say_what_was_rounded_and_what_is_far_from_native():
    assert size_warnings(GenerationRequest(width=64, height=64), native=64) == []
    assert size_warnings(GenerationRequest(), native=64) == []  # 0: the native size
    (rounded,) = size_warnings(GenerationRequest(width=100, height=64), native=64)
    assert "Width 100 was rounded to 96" in rounded
    far = size_warnings(GenerationRequest(width=1024, height=64), native=64)
    assert len(far) == 1 and "1024×64 is far from this model's native 64×64" in far[0] and "16.0×" in far[0]
    # Image-to-image keeps the input's size by default: nothing to say before the image is read.
    assert size_warnings(GenerationRequest(task=Task.IMG2IMG), native=512) == []
