"""Soak: disk use of `python app.py --max-disk` over many jobs (txt2img, img2img, /explain) from a few API clients.

Run `python bench/soak.py [--jobs 200] [--clients 3] [--max-disk 4MB]`. The app serves the bundled model on a free
port with a cache folder of its own, sampled every quarter second: how much it holds over time, against the cap.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from gradio_client import Client, handle_file
from gradio_client.exceptions import ValidationError
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import results  # noqa: E402
from startup import free_port  # noqa: E402

from sdplay.runtime.disk import GRACE_S, cached_files, megabytes, parse_size  # noqa: E402
from sdplay.ui.cache import CLEAN_EVERY_S  # noqa: E402

# Configuration
JOBS = 200
CLIENTS = 3  # sessions at once, one job each at a time (the fair-share rule), so the queue is never empty
MAX_DISK = "4MB"  # low, so that cleaning starts early: 200 jobs write ~26 MB (20 wrote 2.6 MB)
SAMPLE_S = 0.25
START_TIMEOUT = 300.0
KINDS = ("txt2img", "img2img", "explain")
JOB = {
    "prompt": "a large red circle on the left on a gray background", "negative_prompt": "", "sampler": "Euler",
    "steps": 8, "guidance_scale": 4.0, "width": 64, "height": 64,
}  # fmt: skip
# A file can outlive the cap by the grace, plus the wait for the next pass; and a pass and a sample take time.
WINDOW_S = GRACE_S + CLEAN_EVERY_S + 2.0


@dataclass
class Sample:
    at: float  # seconds since the first job
    bytes: int
    files: int


@dataclass
class Job:
    kind: str
    started: float
    ended: float
    written: int  # bytes the server wrote for it: the upload and the results (the client downloads the same files)
    error: str | None = None


def served_app(cap: str, cache: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "app.py", "--offline", "--port", str(port), "--max-disk", cap]
    env = os.environ | {"GRADIO_TEMP_DIR": str(cache)}
    process = subprocess.Popen(command, cwd=results.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return process, url
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"python app.py did not start (exit code {process.poll()})")
        time.sleep(0.2)


def sample_disk(cache: Path, start: float, samples: list[Sample], stop: threading.Event) -> None:
    while not stop.is_set():
        files = cached_files(cache)
        samples.append(Sample(time.monotonic() - start, sum(size for _, _, size in files), len(files)))
        stop.wait(SAMPLE_S)


def run_job(client: Client, kind: str, seed: int, scratch: Path) -> tuple[int, list[str]]:
    """One job; the bytes it uploaded and the files its results were downloaded to."""
    if kind == "explain":
        image, export = client.predict(**JOB, seed=seed, api_name="/explain")
        return 0, [image, export]
    if kind == "txt2img":
        gallery, _, _ = client.predict(**JOB, seed=seed, api_name="/txt2img")
        return 0, [item["image"] for item in gallery]
    upload = scratch / f"input-{seed}.png"  # a new picture every time: each upload is a file of its own
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(upload)
    gallery, _, _ = client.predict(**JOB, seed=seed, image=handle_file(str(upload)), strength=0.6, api_name="/img2img")
    return upload.stat().st_size, [item["image"] for item in gallery]


def run_client(url: str, jobs: list[tuple[int, str]], scratch: Path, start: float) -> list[Job]:
    client = Client(url, verbose=False, download_files=str(scratch))
    done = []
    for seed, kind in jobs:
        began = time.monotonic() - start
        try:
            uploaded, files = run_job(client, kind, seed, scratch)
            written, error = uploaded + sum(Path(name).stat().st_size for name in files), None
        except ValidationError as refused:  # the fair-share rule: never expected here, one job per client at a time
            written, error = 0, f"refused: {refused}"
        except Exception as failed:
            written, error = 0, f"{type(failed).__name__}: {failed}"
        done.append(Job(kind, began, time.monotonic() - start, written, error))
    return done


def written_before(jobs: list[Job], at: float) -> int:
    """Bytes written in the `WINDOW_S` seconds up to `at`, each job's counted from its start (its upload) to its end."""
    return sum(job.written for job in jobs if job.started <= at and job.ended > at - WINDOW_S)


def report(args: argparse.Namespace, jobs: list[Job], samples: list[Sample], settled: Sample, load: str) -> str:
    cap = parse_size(args.max_disk)
    during = [sample for sample in samples if sample.at <= max(job.ended for job in jobs)]
    peak = max(during, key=lambda sample: sample.bytes)
    over = [sample for sample in during if sample.bytes > cap]
    beyond = [sample for sample in during if sample.bytes > cap + written_before(jobs, sample.at)]
    failed = [job for job in jobs if job.error]
    errors = (": " + "; ".join(sorted({job.error for job in failed})))[:300] if failed else ""
    rows = ["| job | count | failed | median s | written, median |", "|---|---|---|---|---|"]
    for kind in KINDS:
        mine = [job for job in jobs if job.kind == kind]
        if mine:
            seconds = sorted(job.ended - job.started for job in mine)
            written = sorted(job.written for job in mine if not job.error) or [0]
            rows.append(
                f"| /{kind} | {len(mine)} | {sum(1 for job in mine if job.error)} | {seconds[len(seconds) // 2]:.2f} "
                f"| {written[len(written) // 2] / 1000:.1f} kB |"
            )
    held = not beyond and settled.bytes <= cap
    bar = (
        f"after the jobs and {WINDOW_S:.0f} s, the folder is under the cap, and no sample was above the cap plus what "
        f"the jobs wrote in the {WINDOW_S:.0f} s before it (files younger than {GRACE_S:.0f} s stay; a pass runs "
        f"every {CLEAN_EVERY_S:.0f} s)"
    )
    lines = [
        *rows,
        "",
        f"{len(jobs)} jobs from {args.clients} gradio_client sessions at once, in turn /txt2img, /img2img (a new "
        f"64×64 upload each), /explain; bundled model, {JOB['sampler']}, {JOB['steps']} steps, 64×64, seeds 0 to "
        f"{len(jobs) - 1}; the cache folder (GRADIO_TEMP_DIR) sampled every {SAMPLE_S} s.",
        "",
        "| | value |",
        "|---|---|",
        f"| `--max-disk` | {args.max_disk} ({megabytes(cap)}) |",
        f"| written by the jobs in all | {megabytes(sum(job.written for job in jobs))} |",
        f"| largest sample (at {peak.at:.0f} s of {during[-1].at:.0f} s) | **{megabytes(peak.bytes)}**, "
        f"{peak.files} files |",
        f"| samples above the cap | {len(over)} of {len(during)} ({len(over) / len(during):.0%}) |",
        f"| samples above the cap + {WINDOW_S:.0f} s of writing | {len(beyond)} |",
        f"| at the last job's end | {megabytes(during[-1].bytes)}, {during[-1].files} files |",
        f"| settled ({WINDOW_S:.0f} s later) | **{megabytes(settled.bytes)}**, {settled.files} files |",
        f"| failed jobs | {len(failed)}{errors} |",
        "",
        f"- Cap held: **{'yes' if held else 'no'}** (bar: {bar})",
        f"- Disk over time (MB, every 10th s): {timeline(samples)}",
        f"- CPU load: {load}",
    ]
    return "\n".join(lines)


def timeline(samples: list[Sample]) -> str:
    shown, next_at = [], 0.0
    for sample in samples:
        if sample.at >= next_at:
            shown.append(f"{sample.bytes / 10**6:.1f}")
            next_at += 10
    return " ".join(shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--max-disk", default=MAX_DISK)
    args = parser.parse_args()
    # Client c sends seeds c, c + clients, ...; each client goes through the kinds in turn, from a different one.
    shares = [
        [
            (seed, KINDS[(turn + client) % len(KINDS)])
            for turn, seed in enumerate(range(client, args.jobs, args.clients))
        ]
        for client in range(args.clients)
    ]
    load = results.cpu_load()
    with tempfile.TemporaryDirectory(prefix="sdplay-soak-") as tmp:
        cache, scratch = Path(tmp) / "cache", Path(tmp) / "client"
        scratch.mkdir()
        process, url = served_app(args.max_disk, cache)
        samples: list[Sample] = []
        stop = threading.Event()
        start = time.monotonic()
        sampler = threading.Thread(target=sample_disk, args=(cache, start, samples, stop), daemon=True)
        sampler.start()
        try:
            with ThreadPoolExecutor(args.clients) as pool:
                done = pool.map(lambda share: run_client(url, share, scratch, start), shares)
                jobs = sorted((job for share in done for job in share), key=lambda job: job.started)
            time.sleep(WINDOW_S)
            files = cached_files(cache)
            settled = Sample(time.monotonic() - start, sum(size for _, _, size in files), len(files))
        finally:
            stop.set()
            sampler.join()
            process.terminate()
            process.wait(timeout=30)
    body = report(args, jobs, samples, settled, load)
    print(body)
    results.write_section("Soak: disk use under --max-disk", body)


if __name__ == "__main__":
    main()
