"""The one executor boundary, here and under a simulation of ZeroGPU: a forked worker, everything pickled both ways.

`ZeroGPU` (tests/zero_gpu.py) forks, pickles and stops as ZeroGPU's `spaces.GPU` does, so that whatever would not
cross the real boundary fails these tests.
"""

import pickle
import threading
import time
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sdplay.explain.capture import ExplainRun, explain
from sdplay.explain.decoding import Decoded, DecodeRequest, decode_latents
from sdplay.runtime.composition import local_manager
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import MAX_GPU_SECONDS, MIN_GPU_SECONDS, Executor, JobControl, JobSpec, JobThreads
from sdplay.runtime.generate import Cancelled, GenerationResult, StepUpdate, generate
from sdplay.runtime.request import GenerationRequest, Limits, Task
from tests.zero_gpu import FORK, NotPicklable, ZeroGPU


def holds_a_lock(manager, request, limits, control) -> threading.Lock:
    """A job whose result cannot cross a process boundary."""
    return threading.Lock()


@pytest.fixture
def zero_gpu() -> ZeroGPU:
    return ZeroGPU()


@pytest.fixture
def remote(manager, zero_gpu) -> Executor:
    """An executor whose boundary runs in a simulated ZeroGPU worker."""
    return Executor(manager, gpu=zero_gpu)


def result_of(executor: Executor, job: JobSpec) -> tuple[list[StepUpdate], object]:
    *updates, result = executor.run(job)
    return updates, result


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def image_and_mask() -> tuple[Image.Image, Image.Image]:
    image = Image.new("RGB", (64, 48), (200, 40, 40))
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (16, 8, 48, 40))
    return image, mask


def jobs() -> dict[str, JobSpec]:
    image, mask = image_and_mask()
    common = dict(prompt="a red cat", negative_prompt="blur", sampler="Euler", steps=3, seed=7)
    return {
        "txt2img": JobSpec(generate, GenerationRequest(**common, width=72, height=64, batch_size=2), Limits()),
        "img2img": JobSpec(generate, GenerationRequest(**common, task=Task.IMG2IMG, image=image), Limits()),
        "inpaint": JobSpec(
            generate, GenerationRequest(**common, task=Task.INPAINT, image=image, mask=mask, mask_blur=2), Limits()
        ),
    }


@pytest.mark.parametrize("name", ["txt2img", "img2img", "inpaint"])
def test_generation_through_zerogpu_equals_the_in_process_one(manager, remote, zero_gpu, name):
    job = jobs()[name]
    local_updates, local = result_of(manager.executor, job)
    updates, result = result_of(remote, job)
    assert isinstance(result, GenerationResult) and len(zero_gpu.workers) == 1
    assert [(u.step, u.total) for u in updates] == [(u.step, u.total) for u in local_updates]
    assert len(updates) >= 2 and updates[-1].step == updates[-1].total  # every step (img2img: steps × strength)
    assert updates[0].previews and pixels(updates[0].previews[0]).std() > 0  # previews stream out of the worker
    assert result.infotexts == local.infotexts and result.seeds == local.seeds
    for image, expected, text in zip(result.images, local.images, local.infotexts, strict=True):
        assert np.array_equal(pixels(image), pixels(expected)) and image.info["parameters"] == text
    assert zero_gpu.durations == [MIN_GPU_SECONDS]  # a tiny model's job asks for the least


def test_explain_through_zerogpu_records_the_same_run(manager, remote):
    job = JobSpec(explain, GenerationRequest(prompt="a red cat", negative_prompt="blur", steps=3, seed=5), Limits())
    _, local = result_of(manager.executor, job)
    _, run = result_of(remote, job)
    assert isinstance(run, ExplainRun) and run.steps == local.steps == 3 and run.attention
    for field in fields(ExplainRun):
        ours, theirs = getattr(run, field.name), getattr(local, field.name)
        if isinstance(ours, torch.Tensor):
            assert torch.equal(ours, theirs), field.name
        elif isinstance(ours, dict) and ours and isinstance(next(iter(ours.values())), torch.Tensor):
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), field.name
        elif isinstance(ours, np.ndarray):
            assert np.array_equal(ours, theirs), field.name
        else:
            assert ours == theirs, field.name


def test_decode_x0_through_zerogpu_decodes_in_the_worker(manager, remote, zero_gpu):
    """Decoding runs the VAE: on ZeroGPU only the worker has the GPU, so it crosses the boundary like any job."""
    run = explain(manager, GenerationRequest(prompt="a red cat", steps=3, seed=5))
    job = JobSpec(decode_latents, DecodeRequest(run.recipe.model, (2, 0), run.x0[[2, 0]]), Limits())
    local, remote_items = list(manager.executor.run(job)), list(remote.run(job))
    assert [type(item) for item in remote_items] == [Decoded, Decoded, int] and remote_items[-1] == 2
    assert [item.step for item in remote_items[:2]] == [2, 0] and len(zero_gpu.workers) == 1
    for ours, theirs in zip(local[:2], remote_items[:2], strict=True):
        assert np.array_equal(pixels(ours.image), pixels(theirs.image))
    assert zero_gpu.durations == [MIN_GPU_SECONDS]


def test_stop_across_the_boundary_ends_the_worker_within_a_step_without_a_result(manager, remote, zero_gpu):
    job = JobSpec(generate, GenerationRequest(prompt="cat", steps=150, width=512, height=512), Limits(), "ann")
    items = remote.run(job)
    first = next(items)
    assert isinstance(first, StepUpdate) and first.step == 1
    started = time.monotonic()
    items.close()  # what Gradio does to a cancelled event's generator, and ZeroGPU passes on to its worker
    assert time.monotonic() - started < 10
    [worker] = zero_gpu.workers
    assert worker.exitcode == 0
    steps = [item.step for item in zero_gpu.sent if isinstance(item, StepUpdate)]
    assert not any(isinstance(item, GenerationResult) for item in zero_gpu.sent)
    assert max(steps) < 150
    assert generate(manager, GenerationRequest(prompt="cat", steps=2)).images  # the model here is free


def test_errors_cross_the_boundary_as_themselves(remote):
    job = JobSpec(generate, GenerationRequest(prompt="cat", steps=500), Limits(max_steps=150))
    with pytest.raises(UserError, match="150"):
        list(remote.run(job))


def test_the_harness_fails_a_result_that_does_not_pickle(remote):
    with pytest.raises(NotPicklable, match="lock"):
        list(remote.run(JobSpec(holds_a_lock, GenerationRequest(prompt="cat"), Limits())))


def test_the_harness_fails_arguments_that_do_not_pickle(remote):
    job = JobSpec(lambda *args, **kwargs: None, GenerationRequest(prompt="cat"), Limits())
    with pytest.raises(NotPicklable, match="arguments"):
        list(remote.run(job))


def test_closing_the_stream_stops_within_a_step_and_frees_the_model(manager):
    items = manager.executor.run(
        JobSpec(generate, GenerationRequest(prompt="cat", steps=150, width=512, height=512), Limits())
    )
    assert isinstance(next(items), StepUpdate)
    started = time.monotonic()
    items.close()
    assert time.monotonic() - started < 5
    assert manager.running_jobs == 0
    assert generate(manager, GenerationRequest(prompt="cat", steps=2)).images


def test_every_job_runs_on_the_same_long_lived_thread(manager):
    """A fresh thread per job starts cold (malloc arena, OpenMP pool) and made generation ~20% slower."""
    threads = []

    def job(manager, request, limits, control) -> str:
        threads.append(threading.current_thread())
        return "done"

    executor = Executor(manager)
    spec = JobSpec(job, GenerationRequest(prompt="cat"), Limits())
    assert list(executor.run(spec)) == ["done"] and list(executor.run(spec)) == ["done"]
    assert threads[0] is threads[1] and threads[0] is not threading.current_thread() and threads[0].daemon


def sd15_sized(native: int = 512) -> Executor:
    """An executor over a stand-in manager whose UNet counts SD 1.5's 860 M parameters."""
    unet = SimpleNamespace(parameters=lambda: [SimpleNamespace(numel=lambda: 860_000_000)])
    model = SimpleNamespace(native_size=native, pipe=SimpleNamespace(unet=unet))
    return Executor(SimpleNamespace(model=model, threads=JobThreads()))


@pytest.mark.parametrize(
    ("request_", "seconds"),
    [
        (GenerationRequest(prompt="cat", steps=20), MIN_GPU_SECONDS),  # 512², 20 steps: ~1.3 s of UNet
        (GenerationRequest(prompt="cat", steps=100, width=1024, height=1024), 27),  # 100 × 1.05 MP × 0.25 s
        (GenerationRequest(prompt="cat", steps=100, width=1024, height=1024, batch_size=2), 53),
        (GenerationRequest(prompt="cat", steps=150, width=1024, height=1024, batch_size=8), MAX_GPU_SECONDS),
        (GenerationRequest(prompt="cat", steps=100, task=Task.IMG2IMG), 27),  # the input's size: up to max_size
    ],
)
def test_the_gpu_duration_grows_with_steps_pixels_and_batch_within_bounds(request_, seconds):
    assert sd15_sized().gpu_seconds(JobSpec(generate, request_, Limits())) == seconds


def test_a_stopped_jobs_error_crosses_with_its_preview(manager):
    with pytest.raises(Cancelled) as stopped:
        generate(
            manager,
            GenerationRequest(prompt="cat", steps=3),
            control=JobControl(cancel=SimpleNamespace(is_set=lambda: True)),
        )
    crossed = pickle.loads(pickle.dumps(stopped.value))
    assert str(crossed) == str(stopped.value) == "Stopped before the first step."
    update = StepUpdate(2, 5, 0.1, [Image.new("RGB", (8, 8), "red")], stopped=True)
    crossed = pickle.loads(pickle.dumps(Cancelled(update)))
    assert str(crossed) == "Stopped at step 2 of 5." and crossed.update.previews[0].getpixel((0, 0)) == (255, 0, 0)


def test_the_job_thread_runs_work_in_a_forked_worker_too():
    """A forked process (ZeroGPU's worker) inherits the thread object of a job thread the server used, not the
    thread: it must start its own."""
    thread = JobThreads()
    ran = threading.Event()
    thread.run(ran.set)
    assert ran.wait(5)
    receiver, sender = FORK.Pipe(duplex=False)

    def child() -> None:
        done = threading.Event()
        thread.run(done.set)
        sender.send(done.wait(5))

    worker = FORK.Process(target=child, daemon=True)
    worker.start()
    assert receiver.poll(10) and receiver.recv() is True
    worker.join(5)


def test_call_runs_on_the_job_thread_and_returns_or_raises_there():
    thread = JobThreads()
    assert thread.call(threading.current_thread) is not threading.current_thread()
    assert thread.call(lambda: thread.call(lambda: 7)) == 7  # from the thread itself: at once, no deadlock
    with pytest.raises(UserError, match="nope"):
        thread.call(lambda: (_ for _ in ()).throw(UserError("nope")))


def test_models_load_on_the_job_thread(tiny_model):
    """The thread that loads the weights runs parallel torch ops: if it is not the job thread, the process has two
    OpenMP pools, and libgomp stops spinning between ops (every image ~30% slower)."""
    manager = local_manager("cpu")
    loaders = []
    pipeline = manager._prepare

    def prepare(*args):
        loaders.append(threading.current_thread())
        return pipeline(*args)

    manager._prepare = prepare
    manager.load(str(tiny_model))
    assert loaders == [manager.executor.threads.call(threading.current_thread)]


def test_after_own_torch_threads_only_the_job_thread_runs_torch_on_several_threads():
    """Changes torch's default for the whole process: checked in a forked child."""
    receiver, sender = FORK.Pipe(duplex=False)

    def child() -> None:
        default = torch.get_num_threads()
        thread = JobThreads()
        owned = thread.own_torch_threads()
        counts: list[int] = []
        other = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
        other.start()
        other.join()
        sender.send((default, owned, thread.call(torch.get_num_threads), counts[0]))

    worker = FORK.Process(target=child, daemon=True)
    worker.start()
    assert receiver.poll(30)
    default, owned, on_the_job_thread, elsewhere = receiver.recv()
    worker.join(5)
    assert owned == on_the_job_thread == default and elsewhere == 1
