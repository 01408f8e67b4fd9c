"""Scaling out with the `ray` executor (issue 14): throughput with 1 and 2 workers, and the executor's cost per job.

- `throughput`: `python app.py --executor ray --workers N` on the bundled model, 20 concurrent API clients (each its
  own session; raw API calls, which cost the machine little CPU) sending /txt2img jobs; images per second for each
  N. Bar: 2 workers ≥ 1.6 × 1 worker. CPU workers run one torch thread each (`--worker-threads 1`); with
  `--device cuda` each worker has a GPU of its own. Every image must equal the same seed's image with 1 worker.
- `overhead`: one job at a time through the ray executor (1 worker) against the local executor, both on one torch
  thread, alternating; the median of the paired differences. Bar: ≤ 50 ms per job. The same for `stand_in`, a job
  that streams like the real one but only sleeps, gives the executor's own part of it.

Run `python bench/scale.py` for both, or name one; `--no-write` for a trial that leaves bench/RESULTS.md alone.
"""

import argparse
import io
import math
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import raw_api  # noqa: E402
import results  # noqa: E402
from startup import served_app  # noqa: E402

from sdplay.executor import JobSpec  # noqa: E402
from sdplay.generate import generate  # noqa: E402
from sdplay.models import ModelManager  # noqa: E402
from sdplay.requests import GenerationRequest, Limits  # noqa: E402

# Configuration
BUNDLED = results.ROOT / "assets" / "shapes"
WORKERS = (1, 2)
CLIENTS = 20
JOBS = 3  # per client, one after another
ROUNDS = 20  # overhead: jobs on each executor, alternating, after one warm-up each
THROUGHPUT_BAR = 1.6  # images/s with 2 workers over 1
OVERHEAD_BAR = 0.050  # seconds per job, ray over local
START_TIMEOUT = 600.0
STAND_IN_STEP = 0.035  # seconds per step of the stand-in job: the bundled model's pace on one thread here
JOB = dict(
    prompt="a large red circle on the left on a gray background",
    negative_prompt="",
    sampler="DPM++ 2M",
    schedule="Uniform",
    steps=20,
    guidance_scale=4,
)  # width and height: the endpoint's defaults, the model's own size


def ray_app(workers: int, device: str, threads: int) -> tuple[str, ...]:
    """`python app.py --executor ray --workers N` on the bundled model: a local Ray instance of its own."""
    flags = ["--executor", "ray", "--workers", str(workers), "--device", device]
    flags += ["--worker-threads", str(threads)] if device == "cpu" else []
    return ("app.py", "--offline", *flags)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def throughput(workers: int, device: str, threads: int, clients: int, jobs: int) -> tuple[float, dict[int, np.ndarray]]:
    """Images per second with `clients` concurrent clients of `jobs` images each, and each seed's image. The clients
    send raw API calls (bench/raw_api.py): gradio_client's polling would take CPU from the server measured here."""
    with served_app(*ray_app(workers, device, threads), timeout=START_TIMEOUT) as url:
        txt2img = raw_api.parameters(url)["/txt2img"]

        def image(seed: int, session: str) -> np.ndarray:
            answer = raw_api.call(url, "txt2img", raw_api.positional(txt2img, **JOB, seed=seed), session)
            if answer.outcome != "accepted":
                raise RuntimeError(f"/txt2img {answer.outcome}: {answer.message}")
            return pixels(raw_api.download(answer.data[0][0]["image"]))

        with ThreadPoolExecutor(workers) as warm:  # every worker's first job pays for its warm-up
            list(warm.map(lambda i: image(0, f"warm-{i}"), range(workers)))
        barrier = threading.Barrier(clients + 1)

        def client(index: int) -> dict[int, np.ndarray]:
            barrier.wait()
            seeds = [1000 + index * jobs + j for j in range(jobs)]
            return {s: image(s, f"client-{index}") for s in seeds}  # a session each

        with ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(client, i) for i in range(clients)]
            barrier.wait()
            start = time.perf_counter()
            images = {seed: image for future in futures for seed, image in future.result().items()}
            seconds = time.perf_counter() - start
    return len(images) / seconds, images


def stand_in(manager, request: GenerationRequest, limits: Limits, *, owner=None, cancel=None, on_step=None):
    """A job with the stream of `generate` and its pace but no model work: a step update every `STAND_IN_STEP`
    seconds (with previews when `generate` would make one), then an image. Through an executor, the time it takes
    beyond its sleeps is the executor's own: the real job's difference also holds how fast each process computes."""
    from sdplay.generate import PREVIEW_EVERY, GenerationResult, StepUpdate

    started, previewed = time.monotonic(), -math.inf
    for step in range(1, request.steps + 1):
        time.sleep(STAND_IN_STEP)
        now = time.monotonic()
        due = step < request.steps and now - previewed >= PREVIEW_EVERY
        previewed = now if due else previewed
        on_step(StepUpdate(step, request.steps, (now - started) / step, [Image.new("RGB", (16, 16))] if due else []))
    return GenerationResult([Image.new("RGB", (64, 64))], [""], [request.seed])


def overhead(device: str, rounds: int) -> dict[str, tuple[list[float], list[float], bool]]:
    """For `generate` and `stand_in`: seconds per job through the ray executor (1 worker) and the local one,
    alternating, and whether the pixels match."""
    import torch

    from sdplay.ray_executor import RayExecutor
    from sdplay.ray_worker import ModelSource, WorkerOptions

    threads = 1 if device == "cpu" else None
    pool = RayExecutor.start(1, None, WorkerOptions(device=device, threads=threads), ModelSource(str(BUNDLED)))
    front = ModelManager(device="meta", pool=pool)
    front.load(str(BUNDLED))
    if threads:
        torch.set_num_threads(threads)  # before the job thread first uses torch, in the load
    local = ModelManager(device)
    local.load(str(BUNDLED))
    executor = local.executor
    executor.thread.own_torch_threads()
    request = GenerationRequest(**JOB, seed=7)
    measured = {}
    for work in (generate, stand_in):
        times: dict[str, list[float]] = {"ray": [], "local": []}
        last = {}
        for i in range(rounds + 1):
            order = ("ray", "local") if i % 4 in (0, 3) else ("local", "ray")  # ABBA
            for name in order:
                runner = pool if name == "ray" else executor
                start = time.perf_counter()
                *_, result = runner.run(JobSpec(work, request, Limits(), "bench"))
                if i:  # the first round warms both up
                    times[name].append(time.perf_counter() - start)
                last[name] = np.asarray(result.images[0])
        measured[work.__name__] = times["ray"], times["local"], bool(np.array_equal(last["ray"], last["local"]))
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = ["throughput", "overhead"]
    # No `choices`: Python 3.11's argparse checks the empty list against them and refuses it.
    parser.add_argument("parts", nargs="*", metavar="{throughput,overhead}", help="the parts to run (default: both)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: one GPU per worker")
    parser.add_argument("--workers", default=",".join(map(str, WORKERS)), help="worker counts to measure: 1,2")
    parser.add_argument("--worker-threads", type=int, default=1, help="torch threads per CPU worker")
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--jobs", type=int, default=JOBS, help="images per client")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md as it is")
    args = parser.parse_args()
    if set(args.parts) - set(parts):
        parser.error(f"parts are {' and '.join(parts)}")
    args.parts = args.parts or parts
    counts = [int(n) for n in args.workers.split(",")]
    load_before = results.cpu_load()
    lines = []
    if "throughput" in args.parts:
        rates, first = {}, None
        identical = True
        for workers in counts:
            rates[workers], images = throughput(workers, args.device, args.worker_threads, args.clients, args.jobs)
            print(f"  {workers} worker(s): {rates[workers]:.2f} images/s", flush=True)
            first = first or images
            identical &= all(np.array_equal(first[seed], image) for seed, image in images.items())
        base = rates[counts[0]]
        lines += ["| workers | images/s | × one worker |", "|---|---|---|"]
        lines += [f"| {n} | {rates[n]:.2f} | {rates[n] / base:.2f} |" for n in counts]
        lines.append("")
        if 1 in rates and 2 in rates:
            speedup = rates[2] / rates[1]
            met = "met" if speedup >= THROUGHPUT_BAR else "missed"
            lines.append(f"- 2 workers over 1: **{speedup:.2f}×** (bar ≥ {THROUGHPUT_BAR}: {met})")
        lines.append(
            f"- {args.clients} clients × {args.jobs} /txt2img each (bundled model, 20 steps, 64×64), {args.device} "
            f"workers{f' of {args.worker_threads} torch thread(s)' if args.device == 'cpu' else ', one GPU each'}; "
            f"every image equals the same seed's with {counts[0]} worker(s): {'yes' if identical else 'NO'}"
        )
    if "overhead" in args.parts:
        measured = overhead(args.device, args.rounds)
        ray_times, local_times, same = measured["generate"]
        extra = statistics.median(r - loc for r, loc in zip(ray_times, local_times, strict=True))
        ray_idle, local_idle, _ = measured["stand_in"]
        own = statistics.median(r - loc for r, loc in zip(ray_idle, local_idle, strict=True))
        met = "met" if extra <= OVERHEAD_BAR else "missed"
        lines += [
            "",
            "| executor | median s per job | jobs |",
            "|---|---|---|",
            f"| local | {statistics.median(local_times):.3f} | {len(local_times)} |",
            f"| ray, 1 worker | {statistics.median(ray_times):.3f} | {len(ray_times)} |",
            "",
            f"- Overhead per job (median of paired differences): **{extra * 1000:.0f} ms** (bar ≤ "
            f"{OVERHEAD_BAR * 1000:.0f} ms: {met}); same pixels: {'yes' if same else 'NO'}",
            f"- Of which the executor's own (a stand-in job of the same stream and pace, {STAND_IN_STEP * 1000:.0f} ms "
            f"per step of sleep, no model work): **{own * 1000:.0f} ms** per job; the rest is how fast the replica's "
            "process computes the same job against this one's, which differs from process to process (rerun to see it)",
        ]
    lines += [f"- CPU load before: {load_before}", f"- CPU load after: {results.cpu_load()}"]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        results.write_section(f"Scaling out with Ray Serve ({args.device})", report)


if __name__ == "__main__":
    main()
