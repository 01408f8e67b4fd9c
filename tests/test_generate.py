"""Generation on a tiny random-weight pipeline: the three tasks, every sampler, seeds, metadata, previews, Stop."""

import threading
import time
from functools import partial

import numpy as np
import pytest
from PIL import Image

from sdplay.errors import UserError
from sdplay.generate import Cancelled, StepUpdate, generate, stream
from sdplay.images import blur_mask
from sdplay.metadata import parse_infotext
from sdplay.requests import GenerationRequest, Task
from sdplay.samplers import SAMPLERS


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def photo(size=(96, 80)) -> Image.Image:
    """A structured input image: gradients, so that unchanged pixels are easy to tell from repainted ones."""
    x, y = np.meshgrid(np.linspace(0, 255, size[0]), np.linspace(0, 255, size[1]))
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1).astype(np.uint8))


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_generates_deterministically(manager, sampler):
    request = GenerationRequest(prompt="a red cat", sampler=sampler, steps=3, seed=11)
    first, second = generate(manager, request), generate(manager, request)
    assert first.images[0].size == (64, 64)
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))
    other = generate(manager, GenerationRequest(prompt="a red cat", sampler=sampler, steps=3, seed=12))
    assert not np.array_equal(pixels(first.images[0]), pixels(other.images[0]))


def test_results_carry_a1111_metadata_and_the_seed_used(manager):
    result = generate(manager, GenerationRequest(prompt="a cat, a dog", negative_prompt="blur", steps=4, seed=-1))
    seed = result.seeds[0]
    info = parse_infotext(result.images[0].info["parameters"])
    assert info.prompt == "a cat, a dog" and info.negative_prompt == "blur"
    assert info.params["Seed"] == str(seed) and info.params["Steps"] == "4" and info.params["Size"] == "64x64"
    assert info.params["Sampler"] == "Euler a" and info.params["Model"] == manager.model.name
    again = generate(manager, GenerationRequest(prompt="a cat, a dog", negative_prompt="blur", steps=4, seed=seed))
    assert np.array_equal(pixels(result.images[0]), pixels(again.images[0]))


def test_a_batch_uses_consecutive_seeds(manager):
    result = generate(manager, GenerationRequest(prompt="dog", steps=2, seed=41, batch_size=3, width=72, height=64))
    assert result.seeds == [41, 42, 43] and [i.size for i in result.images] == [(72, 64)] * 3
    assert [parse_infotext(t).params["Seed"] for t in result.infotexts] == ["41", "42", "43"]


def test_img2img_keeps_the_input_size_rounded_to_multiples_of_8(manager):
    result = generate(manager, GenerationRequest(Task.IMG2IMG, "cat", steps=4, seed=1, image=photo((100, 60))))
    assert result.images[0].size == (104, 64)
    assert parse_infotext(result.infotexts[0]).params["Denoising strength"] == "0.75"
    sized = generate(manager, GenerationRequest(Task.IMG2IMG, "cat", steps=4, image=photo(), width=64, height=128))
    assert sized.images[0].size == (64, 128)


@pytest.mark.parametrize("only_masked", [False, True])
def test_inpaint_leaves_every_pixel_outside_the_blurred_mask_unchanged(manager, only_masked):
    image = photo((120, 96))
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (40, 30, 80, 60))
    request = GenerationRequest(
        Task.INPAINT, "dog", steps=4, seed=3, image=image, mask=mask, mask_blur=4, only_masked=only_masked
    )
    result = generate(manager, request).images[0]
    assert result.size == image.size
    outside = pixels(blur_mask(mask, 4).convert("RGB"))[..., 0] == 0
    assert np.array_equal(pixels(result)[outside], pixels(image)[outside])
    inside = pixels(mask.convert("RGB"))[..., 0] == 255
    assert not np.array_equal(pixels(result)[inside], pixels(image)[inside])


def test_inpainting_checkpoints_inpaint_and_refuse_other_tasks(tiny_inpaint_model):
    from sdplay.models import ModelManager

    manager = ModelManager(device="cpu")
    manager.load(str(tiny_inpaint_model))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = generate(manager, GenerationRequest(Task.INPAINT, "cat", steps=3, image=photo((64, 64)), mask=mask))
    assert result.images[0].size == (64, 64)
    with pytest.raises(UserError, match="inpainting checkpoint"):
        generate(manager, GenerationRequest(prompt="cat", steps=2))


@pytest.mark.parametrize(
    ("image", "mask", "message"),
    [
        (b"not an image", Image.new("L", (64, 64), 255), "not an image"),
        (photo((64, 64)), Image.new("L", (64, 64), 0), "empty"),
        (photo((64, 64)), Image.new("L", (32, 32), 255), "same size"),
    ],
)
def test_bad_uploads_are_user_errors(manager, image, mask, message):
    with pytest.raises(UserError, match=message):
        generate(manager, GenerationRequest(Task.INPAINT, "cat", steps=2, image=image, mask=mask))


def test_long_prompts_are_truncated_with_a_warning(manager):
    result = generate(manager, GenerationRequest(prompt="cat " * 100, steps=2, seed=1))
    assert len(result.images) == 1
    assert "100 tokens" in result.warnings[0] and "first 75" in result.warnings[0]


def test_previews_stream_once_per_step(manager):
    updates: list[StepUpdate] = []
    generate(manager, GenerationRequest(prompt="cat", steps=5, batch_size=2), on_step=updates.append)
    assert [u.step for u in updates] == [1, 2, 3, 4, 5] and {u.total for u in updates} == {5}
    assert len(updates[-1].previews) == 2 and updates[-1].previews[0].size == (64, 64)
    assert pixels(updates[0].previews[0]).std() > 0  # a picture, not a blank


def test_closing_the_stream_stops_within_a_step_and_frees_the_lock(manager):
    jobs = stream(partial(generate, manager, GenerationRequest(prompt="cat", steps=150, width=512, height=512)))
    assert isinstance(next(jobs), StepUpdate)
    started = time.monotonic()
    jobs.close()
    assert time.monotonic() - started < 5
    assert manager._lock.acquire(blocking=False)
    manager._lock.release()
    assert generate(manager, GenerationRequest(prompt="cat", steps=2)).images


def test_interrupt_stops_the_owners_job(manager):
    errors: list[BaseException] = []
    started = threading.Event()

    def run():
        try:
            generate(manager, GenerationRequest(prompt="cat", steps=150, width=512, height=512), owner="alice",
                     on_step=lambda update: started.set())  # fmt: skip
        except BaseException as error:
            errors.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(30)
    assert not manager.interrupt("bob")
    assert manager.interrupt("alice")
    worker.join(10)
    assert not worker.is_alive() and isinstance(errors[0], Cancelled)
