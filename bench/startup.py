"""Startup: seconds from launching `python app.py` (the bundled model) to its page answering HTTP 200.

Run `python bench/startup.py`; "imports" is the time until the app prints that it is loading the model (it then
loads in the background while the page is built and served). The libraries' own floor is a fresh `python -c` that
imports torch, diffusers, transformers and gradio and nothing else. One more launch under `python -X importtime`
says which packages the app's imports spend their time in.
"""

import collections
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import results  # noqa: E402

# Configuration
RUNS = 5
BAR = 5.0  # seconds to HTTP 200, median (issue 21)
FLOOR = "import torch, diffusers, transformers, gradio"
TIMEOUT = 300.0  # seconds before a launch counts as failed
POLL = 0.05  # seconds between HTTP attempts
LOADING_LINE = "sdplay: loading"  # app.py prints it once its imports are done
PACKAGES_SHOWN = 8  # the breakdown names the packages with the most import time; the rest are "other"
IMPORT_TIME = re.compile(r"import time:\s+(\d+) \|\s+\d+ \|\s+(\S+)")  # self µs, module (-X importtime)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Launch:
    imports: float  # seconds until the loading line
    served: float  # seconds until the first HTTP 200
    cpu: float  # CPU seconds the app had used by then: less disturbed than wall time by other work on the machine
    log: list[str]  # what it printed, stdout and stderr


def wait_for_page(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Poll `url` until it answers 200; RuntimeError if `process` exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"python app.py did not start (exit code {process.poll()})")
        time.sleep(0.2)


@contextmanager
def served_app(*command: str, timeout: float = 300.0) -> Iterator[str]:
    """`python app.py --offline` as a user starts it (the bundled model, the machine's default device), or the
    Python script and flags `command` (which must take `--port`), on a free port: yields its URL, then stops it."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, *(command or ("app.py", "--offline")), "--port", str(port)],
        cwd=results.ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_page(url, process, timeout)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def launch_once(python_flags: tuple[str, ...] = ()) -> Launch:
    """Time one fresh `python app.py` until it prints the loading line and until its page answers HTTP 200."""
    port = free_port()
    command = [sys.executable, *python_flags, "app.py", "--port", str(port), "--offline"]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=results.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    loading: list[float] = []
    log: list[str] = []

    def read() -> None:
        for line in process.stdout:
            log.append(line)
            if line.startswith(LOADING_LINE) and not loading:
                loading.append(time.perf_counter() - start)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200:
                    served = time.perf_counter() - start
                    cpu = psutil.Process(process.pid).cpu_times()
                    return Launch(loading[0] if loading else float("nan"), served, cpu.user + cpu.system, log)
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.perf_counter() - start > TIMEOUT:
                raise RuntimeError("the app did not start:\n" + "".join(log[-30:]))
            time.sleep(POLL)
    finally:
        process.terminate()
        process.wait(timeout=30)
        reader.join(timeout=5)


def import_seconds(log: list[str]) -> dict[str, float]:
    """Seconds of import per top-level package, from `-X importtime` lines printed before the loading line."""
    seconds: collections.Counter[str] = collections.Counter()
    for line in log:
        if line.startswith(LOADING_LINE):
            break
        if found := IMPORT_TIME.match(line):
            seconds[found.group(2).split(".")[0]] += int(found.group(1)) / 1e6
    return seconds


def breakdown_rows(seconds: dict[str, float]) -> list[str]:
    """The packages with the most import time, ours (sdplay) always among them, and the rest as "other"."""
    ranked = sorted(seconds, key=seconds.get, reverse=True)
    shown = ranked[:PACKAGES_SHOWN] + (["sdplay"] if "sdplay" not in ranked[:PACKAGES_SHOWN] else [])
    total = sum(seconds.values())
    other = total - sum(seconds.get(name, 0.0) for name in shown)
    rows = ["| package | import s | share |", "|---|---|---|"]
    for name, value in [(name, seconds.get(name, 0.0)) for name in shown] + [("other", other), ("total", total)]:
        label = f"{name} (ours)" if name == "sdplay" else name
        rows.append(f"| {label} | {value:.2f} | {value / total:.0%} |")
    return rows


def runs_row(label: str, values: list[float], bold: bool = False) -> str:
    median = f"{statistics.median(values):.2f} s"
    return f"| {label} | {f'**{median}**' if bold else median} | {', '.join(f'{x:.2f}' for x in values)} |"


def import_floor() -> float:
    """Seconds a fresh Python takes to import the libraries the page is built with, and nothing of ours."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOOR], check=True, cwd=results.ROOT)
    return time.perf_counter() - start


def main() -> None:
    load = results.cpu_load()
    runs = []
    for run in range(RUNS):
        runs.append(launch_once())
        print(
            f"  run {run + 1}/{RUNS}: imports {runs[-1].imports:.2f} s, page served {runs[-1].served:.2f} s, "
            f"CPU {runs[-1].cpu:.2f} s",
            flush=True,
        )
    floors = [import_floor() for _ in range(RUNS)]
    seconds = import_seconds(launch_once(("-X", "importtime")).log)
    served = statistics.median(run.served for run in runs)
    rows = [
        "| | median | runs |",
        "|---|---|---|",
        runs_row("imports done (loading line printed)", [run.imports for run in runs]),
        runs_row("page answers HTTP 200", [run.served for run in runs], bold=True),
        runs_row("CPU time the app used until then", [run.cpu for run in runs]),
        runs_row(f'the libraries alone: `python -c "{FLOOR}"`', floors),
        "",
        f"`python app.py --port <free> --offline` (the bundled model), {RUNS} fresh launches, timed from `Popen` to "
        "the first 200 on `/`; medians of the runs. On a busy machine wall time varies with the other work; the "
        "app's CPU time varies less.",
        f"- Page answers HTTP 200, median: **{served:.2f} s** (bar ≤ {BAR:g} s: "
        f"{'met' if served <= BAR else 'NOT met'})",
        f"- CPU load: {load}",
        "",
        "Import time by package, from one more launch under `python -X importtime` (slower than a plain launch): each "
        "module's own time, summed over its top-level package. A lazy module's work on first attribute access "
        "(`from diffusers import X`) counts for the package that asked.",
        "",
        *breakdown_rows(seconds),
    ]
    report = "\n".join(rows)
    print(report)
    results.write_section("Startup", report)


if __name__ == "__main__":
    main()
