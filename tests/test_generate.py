"""Generation on a tiny random-weight pipeline: the three tasks, every sampler, seeds, metadata, previews, Stop."""

import threading
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobControl
from sdplay.runtime.generate import Cancelled, StepUpdate, generate
from sdplay.runtime.images import blur_mask
from sdplay.runtime.metadata import parse_infotext, save_png, settings_from_infotext
from sdplay.runtime.request import GenerationRequest, Limits, Task
from sdplay.runtime.samplers import SAMPLERS
from sdplay.ui.common import run


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
    result = generate(
        manager, GenerationRequest(task=Task.IMG2IMG, prompt="cat", steps=4, seed=1, image=photo((100, 60)))
    )
    assert result.images[0].size == (104, 64)
    assert parse_infotext(result.infotexts[0]).params["Denoising strength"] == "0.75"
    sized = generate(
        manager, GenerationRequest(task=Task.IMG2IMG, prompt="cat", steps=4, image=photo(), width=64, height=128)
    )
    assert sized.images[0].size == (64, 128)


@pytest.mark.parametrize("only_masked", [False, True])
def test_inpaint_leaves_every_pixel_outside_the_blurred_mask_unchanged(manager, only_masked):
    image = photo((120, 96))
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (40, 30, 80, 60))
    request = GenerationRequest(
        task=Task.INPAINT, prompt="dog", steps=4, seed=3, image=image, mask=mask, mask_blur=4, only_masked=only_masked
    )
    result = generate(manager, request).images[0]
    assert result.size == image.size
    outside = pixels(blur_mask(mask, 4).convert("RGB"))[..., 0] == 0
    assert np.array_equal(pixels(result)[outside], pixels(image)[outside])
    inside = pixels(mask.convert("RGB"))[..., 0] == 255
    assert not np.array_equal(pixels(result)[inside], pixels(image)[inside])


def test_inpainting_checkpoints_inpaint_and_refuse_other_tasks(tiny_inpaint_model):
    from sdplay.runtime.composition import local_manager

    manager = local_manager(device="cpu")
    manager.load(str(tiny_inpaint_model))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = generate(
        manager, GenerationRequest(task=Task.INPAINT, prompt="cat", steps=3, image=photo((64, 64)), mask=mask)
    )
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
        generate(manager, GenerationRequest(task=Task.INPAINT, prompt="cat", steps=2, image=image, mask=mask))


def test_long_prompts_are_not_truncated(manager):
    # Encoded in chunks of 75 tokens (tests/test_conditioning.py): nothing is cut, so nothing to warn about.
    result = generate(manager, GenerationRequest(prompt="cat " * 100, steps=2, seed=1))
    assert len(result.images) == 1 and result.warnings == []


def test_every_step_is_reported_with_a_preview_when_due_and_never_for_the_last(manager):
    updates: list[StepUpdate] = []
    request = GenerationRequest(prompt="cat", steps=5, batch_size=2)
    generate(manager, request, control=JobControl(on_step=updates.append), preview_every=0)
    assert [u.step for u in updates] == [1, 2, 3, 4, 5] and {u.total for u in updates} == {5}
    assert [len(u.previews) for u in updates] == [2, 2, 2, 2, 0]  # the final image follows the last step at once
    assert updates[0].previews[0].size == (8, 8)  # latent size: the browser scales it up
    assert pixels(updates[0].previews[0]).std() > 0  # a picture, not a blank
    assert all(u.seconds_per_step > 0 and not u.stopped for u in updates)


def test_previews_are_throttled_by_wall_time_and_the_first_step_has_one(manager):
    updates: list[StepUpdate] = []
    generate(
        manager,
        GenerationRequest(prompt="cat", steps=6),
        control=JobControl(on_step=updates.append),
        preview_every=3600,
    )
    assert [len(u.previews) for u in updates] == [1, 0, 0, 0, 0, 0]


def test_progress_says_the_step_and_the_time_left():
    update = StepUpdate(step=7, total=20, seconds_per_step=0.25, previews=[])
    assert update.describe() == "Step 7/20 · about 4 s left"  # 13 steps × 0.25 s, rounded up
    assert StepUpdate(1, 100, 1.5, []).describe() == "Step 1/100 · about 2 min 29 s left"


def test_stop_reports_the_step_it_ended_with_its_preview(manager):
    cancel = threading.Event()

    def stop_after_two(update: StepUpdate) -> None:
        if update.step == 2:
            cancel.set()

    with pytest.raises(Cancelled) as stopped:
        control = JobControl(cancel=cancel, on_step=stop_after_two)
        generate(manager, GenerationRequest(prompt="cat", steps=20, batch_size=2), control=control, preview_every=3600)
    update = stopped.value.update
    assert (update.step, update.total, update.stopped) == (3, 20, True)
    assert str(stopped.value) == "Stopped at step 3 of 20."
    assert len(update.previews) == 2 and pixels(update.previews[0]).std() > 0  # this step's, though none was due


def test_interrupt_stops_the_owners_job(manager):
    errors: list[BaseException] = []
    started = threading.Event()

    def run():
        try:
            control = JobControl(owner="alice", on_step=lambda update: started.set())
            generate(manager, GenerationRequest(prompt="cat", steps=150, width=512, height=512), control=control)
        except BaseException as error:
            errors.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(30)
    assert not manager.interrupt("bob")
    assert manager.interrupt("alice")
    worker.join(10)
    assert not worker.is_alive() and isinstance(errors[0], Cancelled)


@pytest.mark.parametrize(
    ("sampler", "schedule"), [("DPM++ 2M", "Uniform"), ("DPM++ 2M SDE", "Karras"), ("Euler", "Automatic")]
)
def test_infotext_round_trips_the_sampler_and_schedule_to_the_same_pixels(manager, sampler, schedule):
    """The PNG's infotext, read back as A1111 1.9+ reads it, makes the same image again."""
    first = generate(
        manager, GenerationRequest(prompt="a red cat", sampler=sampler, schedule=schedule, steps=3, seed=5)
    )
    params = parse_infotext(first.infotexts[0]).params
    assert params["Sampler"] == sampler and params.get("Schedule type", "Automatic") == schedule
    settings = settings_from_infotext(parse_infotext(first.infotexts[0]))
    fields = ("prompt", "negative_prompt", "sampler", "schedule", "steps", "guidance_scale", "seed", "width", "height")
    again = generate(manager, GenerationRequest(**{name: settings[name] for name in fields}))
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))


def test_a_third_party_reader_finds_the_sampler_and_schedule_in_our_png(manager, tmp_path):
    """sd-parsers (PyPI) reads A1111 PNGs; it must find in ours what A1111 1.9+ would."""
    from sd_parsers import ParserManager

    result = generate(manager, GenerationRequest(prompt="a red cat", negative_prompt="blur", sampler="DPM++ 2M SDE",
                                                 schedule="Karras", steps=2, seed=9))  # fmt: skip
    path = tmp_path / "out.png"
    save_png(result.images[0], path, result.infotexts[0])
    with Image.open(path) as image:
        parsed = ParserManager().parse(image)
    (sampler,) = parsed.samplers
    assert sampler.name == "DPM++ 2M SDE" and sampler.parameters["scheduler"] == "Karras"
    assert (sampler.parameters["seed"], sampler.parameters["steps"]) == ("9", "2")
    assert sampler.prompts[0].value == "a red cat" and sampler.negative_prompts[0].value == "blur"


class Progress:
    """Stands in for `gr.Progress`: records what `run()` reports."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, str | None]] = []

    def __call__(self, value, desc: str | None = None) -> None:
        self.calls.append((value, desc))


def test_run_moves_the_progress_bar_with_the_due_previews(manager):
    request = GenerationRequest(prompt="cat", steps=4, seed=1, width=72, height=72)  # a size no other test runs
    progress = Progress()
    outputs = list(run(manager, request, Limits(), None, progress))
    *previews, (gallery, infotext, seed, ran) = outputs
    assert [request.seed for request in ran] == [1] and all(preview[3] == [] for preview in previews)
    assert 1 <= len(previews) <= 3  # step 1's, then one every 0.25 s at most, never the last step's
    # The bar moves at step 1 (with its preview), then at most every 0.25 s (see test_common for the rule).
    assert progress.calls[0][1] == "Starting"  # no run of this model at this size yet: no time to promise
    assert progress.calls[1] == ((1, 4), progress.calls[1][1]) and len(progress.calls) <= 5
    assert progress.calls[1][1].startswith("Step 1/4 · about ") and progress.calls[1][1].endswith(" s left")
    assert previews[0][0][0][0].size == (9, 9) and previews[0][0][0][1] is None
    assert gallery[0][1] == "Seed 1" and seed == 1 and infotext.startswith("cat\n")

    again = Progress()
    list(run(manager, request, Limits(), None, again))
    assert again.calls[0][1].startswith("Starting · about ")  # the ETA of the previous run, before a step ends


def test_run_keeps_the_preview_of_the_step_where_stop_ended_it(manager):
    page = SimpleNamespace(session_hash="ann", headers={"x-gradio-user": "app"})  # a web page's request
    outputs = run(
        manager, GenerationRequest(prompt="cat", steps=150, width=512, height=512), Limits(), page, Progress()
    )
    next(outputs)  # the first step's preview
    assert manager.interrupt("ann")
    *_, (gallery, infotext, seed, ran) = list(outputs)
    assert ran == []  # a stopped run's preview carries no settings for Send to
    [(preview, caption)] = gallery
    step = int(caption.removeprefix("Stopped at step ").removesuffix(" of 150"))
    assert 1 < step < 150 and preview.size == (64, 64) and pixels(preview).std() > 0
    assert generate(manager, GenerationRequest(prompt="cat", steps=2)).images  # the model is free again


def test_run_turns_an_unexpected_error_into_one_line_without_server_paths(manager, caplog):
    def broken(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "/srv/models/secret/unet.safetensors")

    with pytest.raises(gr.Error) as shown:
        list(run(manager, GenerationRequest(prompt="cat"), Limits(), None, Progress(), job=broken))
    assert "FileNotFoundError: [Errno 2] No such file or directory: 'unet.safetensors'" in shown.value.message
    assert "/srv" not in shown.value.message and "\n" not in shown.value.message
    assert any(record.exc_info for record in caplog.records)  # the traceback is in the server's log


@pytest.mark.parametrize(("sampler", "task", "steps"), [("Heun", Task.TXT2IMG, 4), ("PLMS", Task.TXT2IMG, 4),
                                                        ("Heun", Task.IMG2IMG, 2)])  # fmt: skip
def test_progress_counts_the_steps_asked_for_not_unet_calls(manager, sampler, task, steps):
    """Heun calls the UNet 2n - 1 times and PLMS n + 1: progress still says "Step k/n" for the n steps run."""
    updates: list[StepUpdate] = []
    image = photo((64, 64)) if task == Task.IMG2IMG else None
    request = GenerationRequest(task=task, prompt="cat", sampler=sampler, steps=4, seed=1, image=image, strength=0.5)
    generate(manager, request, control=JobControl(on_step=updates.append))
    assert {u.total for u in updates} == {steps} and updates[-1].step == steps
    assert [u.step for u in updates] == sorted(u.step for u in updates) and updates[0].step >= 1
