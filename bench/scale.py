"""Scaling out with the `ray` executor (issue 14): throughput with 1 and 2 workers, and the executor's cost per job.

- `throughput`: `python app.py --executor ray --workers N` on the bundled model, 20 concurrent API clients (each its
  own session; raw API calls, which cost the machine little CPU) sending /txt2img jobs; images per second for each
  N. Bar: 2 workers ≥ 1.6 × 1 worker. CPU workers run one torch thread each (`--worker-threads 1`); with
  `--device cuda` each worker has a GPU of its own. Every image must equal the same seed's image with 1 worker.
- `overhead`: one job at a time through the ray executor (1 worker) against the local executor, both on one torch
  thread, alternating. Each job also times itself in the process that runs it (`timed_generate`): its CPU time is
  how fast that process computes the same job, which differs by tens of ms from one process to another in either
  direction. The executor's cost is the rest: the median over paired jobs of (time per job − the job's CPU time),
  ray minus local. Bar: ≤ 50 ms per job. The raw difference is printed too.

Run `python bench/scale.py` for both, or name one; `--no-write` for a trial that leaves bench/RESULTS.md alone.
"""

import argparse
import io
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import raw_api  # noqa: E402
import results  # noqa: E402
from startup import served_app  # noqa: E402

from sdplay.runtime.composition import local_manager
from sdplay.runtime.executor import JobSpec  # noqa: E402
from sdplay.runtime.generate import generate  # noqa: E402
from sdplay.runtime.models import ModelManager  # noqa: E402
from sdplay.runtime.request import GenerationRequest, Limits  # noqa: E402

# Configuration
BUNDLED = results.ROOT / "assets" / "shapes"
WORKERS = (1, 2)
CLIENTS = 20
JOBS = 3  # per client, one after another
ROUNDS = 20  # overhead: jobs on each executor, alternating, after one warm-up each
THROUGHPUT_BAR = 1.6  # images/s with 2 workers over 1
OVERHEAD_BAR = 0.050  # seconds per job, ray over local
START_TIMEOUT = 600.0
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


@dataclass(frozen=True)
class Timed:
    """A job's result, with the wall and CPU seconds the job took in the process that ran it."""

    result: Any
    wall: float
    cpu: float


def timed_generate(manager, request: GenerationRequest, limits: Limits, **kwargs: Any) -> Timed:
    """`generate`, timed where it runs: its CPU time is how fast that process computes the job; what a job takes
    through an executor beyond it (waiting for the CPU or the GIL included) is that executor's cost."""
    wall, cpu = time.perf_counter(), time.thread_time()  # torch on one thread runs its ops on this thread
    result = generate(manager, request, limits, **kwargs)
    return Timed(result, time.perf_counter() - wall, time.thread_time() - cpu)


@dataclass(frozen=True)
class Round:
    """One job through one executor: seconds from the call to its result, and the job's own `Timed` seconds."""

    total: float
    wall: float
    cpu: float


def overhead(device: str, rounds: int) -> tuple[dict[str, list[Round]], bool]:
    """Each round's job through the ray executor (1 worker) and the local one, alternating, and whether the pixels
    match."""
    import torch

    from sdplay.runtime.ray_executor import RayExecutor
    from sdplay.runtime.ray_worker import ModelSource, WorkerOptions

    threads = 1 if device == "cpu" else None
    pool = RayExecutor.start(1, None, WorkerOptions(device=device, threads=threads), ModelSource(str(BUNDLED)))
    front = ModelManager(device="meta", pool=pool)
    front.load(str(BUNDLED))
    if threads:
        torch.set_num_threads(threads)  # before the job thread first uses torch, in the load
    local = local_manager(device)
    local.load(str(BUNDLED))
    executor = local.executor
    executor.threads.own_torch_threads()
    request = GenerationRequest(**JOB, seed=7)
    measured: dict[str, list[Round]] = {"ray": [], "local": []}
    last = {}
    for i in range(rounds + 1):
        order = ("ray", "local") if i % 4 in (0, 3) else ("local", "ray")  # ABBA
        for name in order:
            runner = pool if name == "ray" else executor
            start = time.perf_counter()
            *_, timed = runner.run(JobSpec(timed_generate, request, Limits(), "bench"))
            if i:  # the first round warms both up
                measured[name].append(Round(time.perf_counter() - start, timed.wall, timed.cpu))
            last[name] = np.asarray(timed.result.images[0])
    return measured, bool(np.array_equal(last["ray"], last["local"]))


def paired_median(ray: list[Round], local: list[Round], seconds: Callable[[Round], float]) -> float:
    """The median over rounds of `seconds` through ray minus through local."""
    return statistics.median(seconds(r) - seconds(loc) for r, loc in zip(ray, local, strict=True))


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
        measured, same = overhead(args.device, args.rounds)
        ray, local = measured["ray"], measured["local"]
        cost = paired_median(ray, local, lambda r: r.total - r.cpu)
        met = "met" if cost <= OVERHEAD_BAR else "missed"
        lines += [
            "",
            "| executor | median s per job | of which the job's own CPU time | jobs |",
            "|---|---|---|---|",
            *(
                f"| {name} | {statistics.median(r.total for r in rs):.3f} | "
                f"{statistics.median(r.cpu for r in rs):.3f} | {len(rs)} |"
                for name, rs in (("local", local), ("ray, 1 worker", ray))
            ),
            "",
            f"- Overhead per job, the executor's cost (median over paired jobs of the time beyond the job's own CPU "
            f"time, ray minus local): **{cost * 1000:.0f} ms** (bar ≤ {OVERHEAD_BAR * 1000:.0f} ms: {met}); "
            f"same pixels: {'yes' if same else 'NO'}",
            f"- Of that, inside the replica while the job ran (waiting for the CPU or the GIL): "
            f"{paired_median(ray, local, lambda r: r.wall - r.cpu) * 1000:.0f} ms",
            f"- Raw difference of the times per job, ray minus local: "
            f"{paired_median(ray, local, lambda r: r.total) * 1000:+.0f} ms, of which the job's own CPU time "
            f"{paired_median(ray, local, lambda r: r.cpu) * 1000:+.0f} ms: how fast the replica's process computes "
            "the same job against this one's, which differs from process to process in both directions (rerun to see "
            "it), and is no cost of the executor",
        ]
    lines += [f"- CPU load before: {load_before}", f"- CPU load after: {results.cpu_load()}"]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        results.write_section(f"Scaling out with Ray Serve ({args.device})", report)


if __name__ == "__main__":
    main()
