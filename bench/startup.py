"""Startup: seconds from launching `python app.py` on a local tiny model to its page answering HTTP 200.

Run `python bench/startup.py`; "imports" is the time until the app prints that it is loading the model.
"""

import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import results  # noqa: E402

from sdplay.random_models import tiny_pipeline  # noqa: E402

# Configuration
RUNS = 3
TIMEOUT = 300.0  # seconds before a launch counts as failed
POLL = 0.05  # seconds between HTTP attempts
LOADING_LINE = "sdplay: loading"  # app.py prints it once its imports are done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_once(model: Path) -> tuple[float, float]:
    """Seconds until the loading line and until the first HTTP 200, for one fresh `python app.py`."""
    port = free_port()
    command = [sys.executable, "app.py", "--model", str(model), "--port", str(port), "--offline"]
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
                    return loading[0] if loading else float("nan"), time.perf_counter() - start
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.perf_counter() - start > TIMEOUT:
                raise RuntimeError("the app did not start:\n" + "".join(log[-30:]))
            time.sleep(POLL)
    finally:
        process.terminate()
        process.wait(timeout=30)
        reader.join(timeout=5)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sdplay-bench-") as tmp:
        model = tiny_pipeline(Path(tmp) / "tiny")
        load = results.cpu_load()
        runs = []
        for run in range(RUNS):
            runs.append(launch_once(model))
            print(f"  run {run + 1}/{RUNS}: imports {runs[-1][0]:.2f} s, page served {runs[-1][1]:.2f} s", flush=True)
    imports, served = zip(*runs, strict=True)
    rows = [
        "| | median | runs |",
        "|---|---|---|",
        f"| imports done (loading line printed) | {statistics.median(imports):.2f} s "
        f"| {', '.join(f'{x:.2f}' for x in imports)} |",
        f"| page answers HTTP 200 | **{statistics.median(served):.2f} s** | {', '.join(f'{x:.2f}' for x in served)} |",
        "",
        f"`python app.py --model <tiny diffusers folder> --port <free> --offline`, {RUNS} fresh launches, "
        "timed from `Popen` to the first 200 on `/`.",
        f"- CPU load: {load}",
    ]
    report = "\n".join(rows)
    print(report)
    results.write_section("Startup", report)


if __name__ == "__main__":
    main()
