"""The `ray` executor on a local Ray cluster started here: 2 CPU replicas (one torch thread each) on the tiny model.

The test process deploys the pool (`RayExecutor.start`) and drives it directly; `python app.py --executor ray
--ray-address ...` joins the same cluster and serves the API and the page from it, which are compared pixel for
pixel with the local executor's app on one torch thread too: on a CPU the thread count changes the order of float
sums, and with it a few pixels by 1/255 (the VAE encoder of image-to-image), whichever executor runs.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from gradio_client import Client, handle_file
from PIL import Image
from playwright.sync_api import Page, expect
from ray import serve

from sdplay.explain.captions import ModelFacts
from sdplay.explain.export import load_run
from sdplay.page import build_demo
from sdplay.runtime.composition import local_manager
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobSpec
from sdplay.runtime.generate import PREVIEW_EVERY, Cancelled, GenerationResult, StepUpdate, generate
from sdplay.runtime.models import ModelManager, ModelSwitch
from sdplay.runtime.random_models import tiny_pipeline
from sdplay.runtime.ray_executor import RayExecutor, start_local_ray, with_upload_bytes
from sdplay.runtime.ray_worker import ModelSource, Placed, WorkerOptions, app, needs_sending
from sdplay.runtime.request import GenerationRequest, Limits, Task
from sdplay.ui.common import GPU
from tests.helpers import ROOT, load, served_app

ARGS = dict(prompt="a red cat", negative_prompt="dog", sampler="Euler", steps=4, guidance_scale=7, seed=11)
LONG = GenerationRequest(prompt="a red cat", steps=150, seed=3, width=1024, height=1024)  # ~25 s on a replica here
TIMEOUT = 60  # seconds for anything the pool should do at once


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray instance for this module (2 CPUs): its address, which app.py joins."""
    start_local_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(cluster, tiny_model) -> RayExecutor:
    return RayExecutor.start(2, None, WorkerOptions(device="cpu", threads=1), ModelSource(str(tiny_model)))


@pytest.fixture(scope="module")
def front(pool, tiny_model) -> ModelManager:
    """The front end's manager on the pool: the model's facts here, its weights on the replicas."""
    manager = ModelManager(device="meta", pool=pool)
    manager.load(str(tiny_model))
    return manager


@pytest.fixture(scope="module")
def ray_client(cluster, pool, tiny_model) -> Iterator[Client]:
    """`python app.py --executor ray` joining the cluster, where it finds the pool deployed above."""
    for url in served_app(tiny_model, "--executor", "ray", "--ray-address", cluster, log_name="app-ray.log"):
        yield Client(url, verbose=False)


@pytest.fixture(scope="module")
def local_client(tiny_model) -> Iterator[Client]:
    """`python app.py` with the local executor, on one torch thread as each replica."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")  # read as the app starts
        app = served_app(tiny_model, log_name="app-local-1-thread.log")
        url = next(app)
    yield Client(url, verbose=False)
    next(app, None)  # stops it


def run_job(
    pool: RayExecutor, request: GenerationRequest, owner: str, work=generate, sent: list | None = None
) -> tuple[object, Placed]:
    """Run a job on the pool: its result (or what it raised) and the replica that ran it; each item it sends is also
    added to `sent` as it comes."""
    placed = last = None
    try:
        for item in pool.run(JobSpec(work, request, Limits(), owner)):
            placed, last = placed or pool.placements()[owner], item
            if sent is not None:
                sent.append(item)
        return last, placed
    except Exception as error:
        return error, placed


def wait_for(condition, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


def pixels(result: GenerationResult) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"))


def local_pixels(manager: ModelManager, request: GenerationRequest) -> np.ndarray:
    """The local executor's image for `request`, on one torch thread as a replica (see the module's docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pixels(generate(manager, request))
    finally:
        torch.set_num_threads(threads)


def test_the_front_end_knows_the_model_without_its_weights(front, manager):
    """The weightless copy answers everything the UI asks of a model, and holds no weight in memory."""
    remote, local = front.model, manager.model
    assert (remote.name, remote.native_size, remote.is_inpainting, remote.allows_lcm) == (
        local.name, local.native_size, local.is_inpainting, local.allows_lcm,
    )  # fmt: skip
    assert remote.parameter_bytes == local.parameter_bytes and remote.settings == local.settings
    assert ModelFacts.of_pipeline(remote.pipe) == ModelFacts.of_pipeline(local.pipe)
    assert remote.pipe.tokenizer("a red cat").input_ids == local.pipe.tokenizer("a red cat").input_ids
    # Fitted on the replica, whose one torch thread sums in another order than this process's threads.
    assert torch.allclose(remote.latent_rgb, local.latent_rgb, atol=1e-4)
    assert {p.device.type for p in remote.pipe.unet.parameters()} == {"meta"}
    assert front.status().startswith("tiny · ray: 2 workers cpu float32")


def test_every_endpoint_gives_the_local_executors_pixels(local_client, ray_client, tmp_path):
    source = tmp_path / "input.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(source)
    mask = tmp_path / "mask.png"
    painted = Image.new("L", (64, 64), 0)
    painted.paste(255, (0, 0, 32, 64))  # repaint the left half
    painted.save(mask)
    editor = {"background": handle_file(source), "layers": [], "composite": None}
    calls = {
        "/txt2img": dict(width=64, height=64),
        "/img2img": dict(image=handle_file(source), strength=0.6),
        "/inpaint": dict(image=editor, mask=handle_file(mask), mask_blur=0),
        "/explain": dict(width=64, height=64),
    }
    for api_name, extra in calls.items():
        local, remote = (c.predict(**ARGS, **extra, api_name=api_name) for c in (local_client, ray_client))
        if api_name == "/explain":  # the image, and the recorded run as CPU tensors, replayed here without a worker
            assert np.array_equal(load(local[0]), load(remote[0]))
            local_run, remote_run = load_run(local[1]), load_run(remote[1])
            for name in ("latents", "x0", "eps_cond", "guidance"):
                assert torch.equal(getattr(local_run, name), getattr(remote_run, name)), name
            assert torch.equal(local_run.averaged_attention(), remote_run.averaged_attention())
        else:
            assert np.array_equal(load(local[0][0]["image"]), load(remote[0][0]["image"])), api_name
            assert local[1] == remote[1]  # the infotext


def test_eight_concurrent_clients_get_the_local_executors_pixels(local_client, ray_client):
    seeds = list(range(31, 39))
    expected = []
    for seed in seeds:
        gallery, _, _ = local_client.predict(**(ARGS | {"seed": seed}), width=64, height=64, api_name="/txt2img")
        expected.append(load(gallery[0]["image"]))
    barrier = threading.Barrier(len(seeds))

    def concurrent(seed: int) -> np.ndarray:
        own = Client(ray_client.src, verbose=False)
        barrier.wait()
        gallery, _, _ = own.predict(**(ARGS | {"seed": seed}), width=64, height=64, api_name="/txt2img")
        return load(gallery[0]["image"])

    with ThreadPoolExecutor(len(seeds)) as threads:
        results = list(threads.map(concurrent, seeds))
    for seed, want, got in zip(seeds, expected, results, strict=True):
        assert np.array_equal(want, got), seed


def test_the_gpu_queue_admits_one_job_per_worker(manager, tiny_model):
    demo = build_demo(manager, Limits(), ModelSwitch({"tiny": str(tiny_model)}), workers=2)
    limits = [fn.concurrency_limit for fn in demo.fns.values() if fn.concurrency_id == GPU["concurrency_id"]]
    assert len(limits) > 5 and set(limits) == {2}


def test_stop_ends_that_job_on_its_replica_and_the_other_finishes(pool, front):
    other = GenerationRequest(prompt="a dog", steps=150, seed=5, width=512, height=512)  # ~7 s
    results: dict[str, tuple[object, Placed]] = {}
    sent_by_a: list[object] = []
    threads = {
        owner: threading.Thread(
            target=lambda o=owner, r=request, s=sent: results.update({o: run_job(pool, r, o, sent=s)})
        )
        for owner, request, sent in (("A", LONG, sent_by_a), ("B", other, None))
    }
    for thread in threads.values():
        thread.start()
    wait_for(lambda: all(pool.placements().get(owner) for owner in "AB"), "both jobs to be placed")
    placed = pool.placements()
    assert placed["A"].replica != placed["B"].replica  # one job per replica
    # Stopped in its steps on its replica, not before they start there.
    wait_for(lambda: any(isinstance(item, StepUpdate) and item.step > 0 for item in sent_by_a), "A's first step")
    assert pool.interrupt("A") and not pool.interrupt("nobody")
    threads["A"].join(TIMEOUT)
    stopped, _ = results["A"]
    assert isinstance(stopped, Cancelled) and re.fullmatch(r"Stopped at step \d+ of 150\.", str(stopped))

    # A's replica is free at once: the job stopped there after its step (uncancelled, it had ~20 s to go). B's
    # replica is still busy, so the next job goes to A's.
    started = time.monotonic()
    result, replica = run_job(pool, GenerationRequest(prompt="a cat", steps=4, seed=1, width=64, height=64), "C")
    assert isinstance(result, GenerationResult) and replica.replica == placed["A"].replica
    assert time.monotonic() - started < 10 and "B" in pool.placements()

    threads["B"].join(TIMEOUT)
    finished, _ = results["B"]
    assert isinstance(finished, GenerationResult) and finished.seeds == [5] and finished.images[0].size == (512, 512)


def test_a_model_switch_reaches_both_replicas(pool, front, tiny_model, tmp_path):
    other = tiny_pipeline(tmp_path / "other", seed=1)
    reference = local_manager(device="cpu")
    reference.load(str(other))
    request = GenerationRequest(prompt="a cat", steps=30, seed=4, width=512, height=512)
    try:
        assert front.load(str(other)).name == "other" and front.model.name == "other"
        with ThreadPoolExecutor(2) as threads:
            done = list(threads.map(lambda owner: run_job(pool, request, owner), ["S1", "S2"]))
        assert len({placed.replica for _, placed in done}) == 2  # each replica ran one
        for result, _ in done:
            assert "Model: other" in result.infotexts[0]
            assert np.array_equal(pixels(result), local_pixels(reference, request))
        with pytest.raises(UserError, match="No model at 'nowhere/at/all'"):  # checked on a replica, said here
            front.load("nowhere/at/all", allow_local=True)
        assert front.model.name == "other"
    finally:
        front.load(str(tiny_model))


def test_a_replica_killed_mid_job_fails_that_job_clearly_and_is_replaced(pool, front):
    results: dict[str, tuple[object, Placed]] = {}
    thread = threading.Thread(target=lambda: results.update(D=run_job(pool, LONG, "D")))
    thread.start()
    wait_for(lambda: pool.placements().get("D"), "the job to be placed")
    killed = pool.placements()["D"]
    assert os.getpriority(os.PRIO_PROCESS, killed.pid) == 0  # not Ray's nice 15, behind every other process
    os.kill(killed.pid, signal.SIGKILL)
    thread.join(TIMEOUT)
    error, _ = results["D"]
    assert isinstance(error, UserError) and "stopped before it finished" in str(error) and "/" not in str(error)

    # The next job succeeds at once, on the replica left; then Ray's replacement takes jobs too.
    small = GenerationRequest(prompt="a cat", steps=20, seed=2, width=256, height=256)
    result, placed = run_job(pool, small, "E")
    assert isinstance(result, GenerationResult) and placed.pid != killed.pid
    deadline = time.monotonic() + 120
    while True:
        with ThreadPoolExecutor(2) as threads:
            done = list(threads.map(lambda owner: run_job(pool, small, owner), ["F", "G"]))
        assert all(isinstance(result, GenerationResult) for result, _ in done)
        if len({placed.pid for _, placed in done} - {killed.pid}) == 2:
            break  # two replicas again, neither the one killed
        assert time.monotonic() < deadline, "Ray did not replace the replica within 2 minutes"
        time.sleep(1)


def test_uploads_travel_as_bytes(tmp_path):
    path = tmp_path / "input.png"
    Image.new("RGB", (8, 8)).save(path)
    request = GenerationRequest(task=Task.IMG2IMG, image=str(path))
    assert with_upload_bytes(request).image == path.read_bytes()
    gone = GenerationRequest(task=Task.IMG2IMG, image=str(tmp_path / "gone.png"))
    assert with_upload_bytes(gone) == gone and with_upload_bytes(GenerationRequest()) == GenerationRequest()


def test_a_replica_sends_progress_at_the_previews_pace():
    """Each item a replica sends costs it CPU that the job needs: step updates go with previews, a stop, or once a
    preview interval has passed; everything else always goes."""
    progress, preview = StepUpdate(3, 20, 0.05, []), StepUpdate(4, 20, 0.05, [Image.new("RGB", (8, 8))])
    assert not needs_sending(progress, PREVIEW_EVERY / 2)
    assert needs_sending(progress, PREVIEW_EVERY)
    assert needs_sending(preview, 0.0) and needs_sending(StepUpdate(5, 20, 0.05, [], stopped=True), 0.0)
    assert needs_sending(GenerationResult([], [], []), 0.0)


def test_serve_runs_builder_takes_the_documented_arguments():
    """`serve run --name sdplay sdplay.runtime.ray_worker:app model=... workers=2 ...`, as the README shows it."""
    deployment = app({"model": "assets/shapes", "workers": "2", "threads": "1", "gpus": "0"})._bound_deployment
    options, model = deployment.init_args
    assert deployment.num_replicas == 2 and deployment.max_ongoing_requests == 1
    assert options == WorkerOptions(threads=1) and model == ModelSource(str(ROOT / "assets" / "shapes"))
    assert deployment.ray_actor_options["num_cpus"] == 1 and deployment.ray_actor_options["num_gpus"] == 0
    with pytest.raises(ValueError, match="unknown arguments replicas"):
        app({"replicas": "2"})


@pytest.mark.browser
def test_generate_and_stop_in_the_browser(ray_client, browser):
    """The page on the pool: the status line says where jobs run; Generate makes an image; Stop keeps the preview
    of the step where the job stopped, and says so."""
    page: Page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(ray_client.src, timeout=TIMEOUT * 1000)
        expect(page.get_by_text("ray: 2 workers")).to_be_visible(timeout=TIMEOUT * 1000)
        panel = page.get_by_role("tabpanel").filter(visible=True)
        panel.get_by_label("Prompt", exact=True).fill("a red cat")
        panel.get_by_role("button", name="Generate").click()
        parameters = panel.locator("label", has_text="Generation parameters").locator("textarea")
        expect(parameters).to_have_value(re.compile("^a red cat\nSteps: 20, .*Model: tiny"), timeout=TIMEOUT * 1000)

        for name, value in {"Steps": "150", "Width": "512", "Height": "512"}.items():  # slow enough to stop
            panel.get_by_label(f"number input for {name}").fill(value)
        panel.get_by_role("button", name="Generate").click()
        progress = panel.get_by_role("progressbar", name=re.compile(r"^Step \d+\/150 · about \d+ (min \d+ )?s left$"))
        expect(progress).to_be_visible(timeout=TIMEOUT * 1000)
        panel.get_by_role("button", name="Stop").click()
        stopped = panel.locator(".results").get_by_role("img", name=re.compile(r"^Stopped at step \d+ of 150$"))
        expect(stopped).to_be_visible(timeout=TIMEOUT * 1000)
        expect(page.get_by_text(f"{stopped.get_attribute('alt')}.", exact=True)).to_be_visible()
    finally:
        page.close()


def test_without_ray_the_ray_executor_says_how_to_install_it(tmp_path):
    shadow = tmp_path / "ray"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('no ray here')\n")
    env = os.environ | {"PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "app.py", "--executor", "ray", "--offline"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "pip install -r requirements-ray.txt" in done.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "2"], "--workers is for --executor ray"),
        (["--executor", "ray", "--workers", "0"], "at least 1"),
        (["--executor", "zerogpu"], "ZeroGPU Space only"),
    ],
)
def test_executor_flags_are_checked(flags, message):
    done = subprocess.run([sys.executable, "app.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr


def test_importing_sdplay_needs_no_ray():
    code = (
        "import sys; sys.modules['ray'] = None; import app, sdplay.runtime.ray_executor, sdplay.runtime.ray_worker; "
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
    assert Path(ROOT / "requirements-ray.txt").read_text().count("ray[serve]") == 1
