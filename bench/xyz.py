"""X/Y/Z plot overhead (issue 11 §2): an N-cell plot via /xyz against the same N images via /txt2img, end to end.

Run `python bench/xyz.py` (the bundled model on `python app.py --offline`); bar: a plot takes at most 1.05 × its N
single runs. Rounds alternate (ABBA) so that a drifting load hits both alike; every cell must equal its single run's
pixels. `--no-write` for a trial that leaves bench/RESULTS.md alone.
"""

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from gradio_client import Client
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import results  # noqa: E402
from startup import served_app  # noqa: E402

# Configuration
SEEDS = 4  # the X axis: Seed 1-SEEDS
CFGS = "3, 5"  # the Y axis: CFG Scale; cells = SEEDS × 2
ROUNDS = 4  # plot and singles each run this many times (ABBA order)
BAR = 1.05
JOB = dict(
    prompt="a large red circle on the left on a gray background",
    negative_prompt="",
    sampler="DPM++ 2M",
    steps=20,
    guidance_scale=4,
    seed=1,
    schedule="Uniform",
)  # width and height: the endpoints' defaults, the model's own size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def plot(client: Client, seeds: int) -> tuple[float, list[np.ndarray], list[dict]]:
    """Seconds for one /xyz call, its cells' pixels and its cells' parameters."""
    start = time.perf_counter()
    _, gallery, cells = client.predict(
        **JOB, x_type="Seed", x_values=f"1-{seeds}", y_type="CFG Scale", y_values=CFGS, api_name="/xyz"
    )
    seconds = time.perf_counter() - start
    return seconds, [pixels(item["image"]) for item in gallery], cells


def singles(client: Client, cells: list[dict]) -> tuple[float, list[np.ndarray]]:
    """Seconds for the plot's cells as one /txt2img call each, one after another, and their pixels."""
    images = []
    start = time.perf_counter()
    for cell in cells:
        gallery, _, _ = client.predict(
            **{**JOB, "seed": cell["seed"], "guidance_scale": cell["guidance_scale"]}, api_name="/txt2img"
        )
        images.append(gallery[0]["image"])
    seconds = time.perf_counter() - start
    return seconds, [pixels(path) for path in images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=SEEDS, help=f"X axis length (cells = 2 × this; {SEEDS})")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md as it is")
    args = parser.parse_args()
    load_before = results.cpu_load()
    with served_app() as url:
        client = Client(url, verbose=False)
        _, _, cells = plot(client, args.seeds)  # warm-up of both paths
        singles(client, cells[:1])
        plots, single_runs, identical = [], [], True
        for i in range(args.rounds):
            order = ("plot", "singles") if i % 4 in (0, 3) else ("singles", "plot")  # ABBA
            for side in order:
                if side == "plot":
                    seconds, plotted, cells = plot(client, args.seeds)
                    plots.append(seconds)
                else:
                    seconds, alone = singles(client, cells)
                    single_runs.append(seconds)
            identical &= len(plotted) == len(alone) and all(map(np.array_equal, plotted, alone))
            print(f"  round {i + 1}/{args.rounds}: plot {plots[-1]:.2f} s, singles {single_runs[-1]:.2f} s", flush=True)
    load_after = results.cpu_load()
    ratios = [p / s for p, s in zip(plots, single_runs, strict=True)]
    ratio = statistics.median(ratios)
    n = len(cells)
    report = "\n".join(
        [
            "| what | median s | per cell s | runs |",
            "|---|---|---|---|",
            f"| /xyz, {n} cells (Seed × CFG Scale), bundled model, 20 steps | {statistics.median(plots):.2f} | "
            f"{statistics.median(plots) / n:.3f} | {len(plots)} |",
            f"| {n} × /txt2img, one after another | {statistics.median(single_runs):.2f} | "
            f"{statistics.median(single_runs) / n:.3f} | {len(single_runs)} |",
            "",
            f"- Ratio plot / singles (median of the rounds' ratios): **{ratio:.3f}** (bar ≤ {BAR}: "
            f"{'met' if ratio <= BAR else 'missed'}); each round: {', '.join(f'{r:.3f}' for r in ratios)}",
            f"- Every cell equals its single /txt2img run's pixels: {'yes' if identical else 'NO'}",
            f"- CPU load before: {load_before}",
            f"- CPU load after: {load_after}",
        ]
    )
    print(report)
    if not args.no_write:
        results.write_section("X/Y/Z plot against single runs (end to end, bundled model)", report)
    if not identical:
        sys.exit("a cell differs from its single run")


if __name__ == "__main__":
    main()
