"""Wrapper overhead: sdplay's `generate()` (txt2img) against plain diffusers on the same weights, job and seed.

Run `python bench/overhead.py` (CPU, 256×256, 4 steps) or `--device cuda --dtype float16 --size 512 --steps 20`.
"""

import argparse
import functools
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import results  # noqa: E402

from sdplay.generate import generate  # noqa: E402
from sdplay.models import DTYPES, ModelManager  # noqa: E402
from sdplay.random_models import sd15_pipeline  # noqa: E402
from sdplay.requests import GenerationRequest  # noqa: E402

# Configuration
SIZE = 256  # 32×32 latents: the real UNet at a size a 2-core CPU runs in seconds per step
STEPS = 4
PAIRS = 6  # measured pairs after one warm-up run of each; even, so that ABBA order cancels a linear drift
PROMPT = "a red cat sitting on a wooden chair, soft light"
SEED = 1234
GUIDANCE = 7.0
BAR = 1.03  # median of per-pair ratios, ours / plain
CACHE = Path(os.environ.get("SDPLAY_BENCH_CACHE", Path.home() / ".cache" / "sdplay" / "bench"))


@dataclass(frozen=True)
class Settings:
    device: str = "cpu"
    dtype: str = "float32"
    size: int = SIZE
    steps: int = STEPS
    pairs: int = PAIRS
    threads: int = 0  # torch CPU threads; 0 keeps torch's default. 1 is far steadier on a CPU that others share


@dataclass(frozen=True)
class Run:
    """One image: wall seconds, CPU seconds of this process, and wall seconds inside the diffusers call."""

    wall: float
    cpu: float
    inside: float

    @property
    def outside(self) -> float:
        """What the caller adds around the pipeline call: for ours, the wrapper's own cost."""
        return self.wall - self.inside


@dataclass(frozen=True)
class Measurement:
    """The measured runs; pair i is ours[i] and plain[i], run back to back."""

    settings: Settings
    ours: list[Run]
    plain: list[Run]
    identical: bool  # every image, ours and plain, warm-ups included, has the same pixels

    def ratios(self, field: str = "wall") -> list[float]:
        return [getattr(a, field) / getattr(b, field) for a, b in zip(self.ours, self.plain, strict=True)]

    def median(self, side: str, field: str = "wall") -> float:
        return statistics.median(getattr(run, field) for run in getattr(self, side))

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios())

    @property
    def wrapper_ratio(self) -> float:
        """1 + our median time outside the diffusers call over plain's median image: the overhead, without the
        noise of two whole runs (it leaves out what we change inside the call: the step callback)."""
        return 1 + self.median("ours", "outside") / self.median("plain")


def sd15_folder() -> Path:
    """SD 1.5's architecture with random weights as a diffusers folder, built once into the cache (~4 GB fp32)."""
    folder = CACHE / "sd15-random"
    if not (folder / "model_index.json").is_file():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        print(f"building SD 1.5 with random weights into {folder} (once) ...", flush=True)
        sd15_pipeline(partial)
        partial.rename(folder)  # only a complete folder ever has the final name
    return folder


def load(folder: Path, settings: Settings) -> tuple[ModelManager, StableDiffusionPipeline]:
    """Our manager and a plain diffusers pipeline, each loading `folder` itself, with the Euler sampler."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    manager = ModelManager(settings.device, settings.dtype)
    manager.load(str(folder))
    plain = StableDiffusionPipeline.from_pretrained(
        folder,
        dtype=DTYPES[settings.dtype],
        use_safetensors=True,
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
    ).to(settings.device)
    plain.scheduler = EulerDiscreteScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)
    return manager, plain


def run_ours(manager: ModelManager, settings: Settings) -> Image.Image:
    request = GenerationRequest(
        prompt=PROMPT,
        sampler="Euler",
        steps=settings.steps,
        guidance_scale=GUIDANCE,
        seed=SEED,
        width=settings.size,
        height=settings.size,
    )
    return generate(manager, request).images[0]


def run_plain(plain: StableDiffusionPipeline, settings: Settings) -> Image.Image:
    return plain(
        prompt=PROMPT,
        num_inference_steps=settings.steps,
        guidance_scale=GUIDANCE,
        width=settings.size,
        height=settings.size,
        generator=torch.Generator().manual_seed(SEED),
    ).images[0]


@contextmanager
def pipeline_calls() -> Iterator[list[float]]:
    """Record the wall seconds of every `StableDiffusionPipeline.__call__` (ours and plain alike) while open."""
    spent: list[float] = []
    original = StableDiffusionPipeline.__call__

    @functools.wraps(original)
    def timed_call(self: StableDiffusionPipeline, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    StableDiffusionPipeline.__call__ = timed_call
    try:
        yield spent
    finally:
        StableDiffusionPipeline.__call__ = original


def timed(run: Callable[[], Image.Image], device: str) -> tuple[Run, np.ndarray]:
    with pipeline_calls() as inside:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        image = run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Run(wall, cpu, sum(inside)), np.asarray(image)


def measure(manager: ModelManager, plain: StableDiffusionPipeline, settings: Settings) -> Measurement:
    """One warm-up of each, then `pairs` pairs in ABBA order, so that a load that drifts hits both sides alike."""
    runs = {
        "ours": lambda: run_ours(manager, settings),
        "plain": lambda: run_plain(plain, settings),
    }
    measured: dict[str, list[Run]] = {"ours": [], "plain": []}
    images = [timed(runs[name], settings.device)[1] for name in ("ours", "plain")]
    for pair in range(settings.pairs):
        for name in ("ours", "plain") if pair % 2 == 0 else ("plain", "ours"):
            run, image = timed(runs[name], settings.device)
            measured[name].append(run)
            images.append(image)
            print(
                f"  pair {pair + 1}/{settings.pairs} {name:5s} {run.wall:8.3f} s wall, {run.cpu:8.3f} s CPU, "
                f"{run.outside * 1e3:7.2f} ms outside the diffusers call",
                flush=True,
            )
    identical = all(np.array_equal(images[0], image) for image in images[1:])
    return Measurement(settings, measured["ours"], measured["plain"], identical)


def runs_table(sides: list[tuple[str, list[Run]]], digits: int) -> list[str]:
    """Markdown rows, one per side: median, min and max wall seconds, median CPU seconds, and the median time
    outside the diffusers call (in ms, one digit fewer)."""
    rows = [
        "| | wall s per image, median | min | max | CPU s, median | outside the diffusers call, median |",
        "|---|---|---|---|---|---|",
    ]
    for label, runs in sides:
        walls, cpus, outsides = ([getattr(run, f) for run in runs] for f in ("wall", "cpu", "outside"))
        rows.append(
            f"| {label} | {statistics.median(walls):.{digits}f} | {min(walls):.{digits}f} | {max(walls):.{digits}f} "
            f"| {statistics.median(cpus):.{digits}f} | {statistics.median(outsides) * 1e3:.{digits - 1}f} ms |"
        )
    return rows


def table(m: Measurement) -> str:
    """A markdown table of the medians, the per-pair ratios, and the verdicts."""
    s = m.settings
    verdict = "met" if m.median_ratio <= BAR else "MISSED"
    rows = runs_table([("sdplay `generate()`", m.ours), ("plain diffusers", m.plain)], digits=3)
    rows += [
        "",
        f"Job: txt2img, SD 1.5 architecture with random weights, {s.device} {s.dtype}, {s.size}×{s.size}, "
        f"{s.steps} steps, Euler, CFG {GUIDANCE}, seed {SEED}; {s.pairs} pairs after one warm-up each, ABBA order. "
        "Whole-run ratios carry the machine's noise; the wrapper-cost line times only what `generate()` adds around "
        "the diffusers call (validation, the view and its scheduler, tokenising for warnings, infotext).",
        "",
        f"- Ratio ours / plain, wall time, median of pairs: **{m.median_ratio:.4f}** (bar ≤ {BAR}: {verdict}); "
        f"per pair: {', '.join(f'{r:.4f}' for r in m.ratios())}",
        f"- Ratio ours / plain, CPU time, median of pairs: {statistics.median(m.ratios('cpu')):.4f}; "
        f"per pair: {', '.join(f'{r:.4f}' for r in m.ratios('cpu'))}",
        f"- Wrapper cost outside the diffusers call: {m.median('ours', 'outside') * 1e3:.2f} ms per image, "
        f"i.e. a ratio of {m.wrapper_ratio:.5f}",
        f"- Pixel-identical images (ours and plain, every run): **{'yes' if m.identical else 'NO'}**",
    ]
    return "\n".join(rows)


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--pairs", type=int, default=PAIRS)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    return Settings(args.device, args.dtype, args.size, args.steps, args.pairs, args.threads)


def main() -> None:
    settings = parse_settings()
    manager, plain = load(sd15_folder(), settings)
    load_before = results.cpu_load()
    measurement = measure(manager, plain, settings)
    load_after = results.cpu_load()
    report = table(measurement)
    print(report)
    body = f"{report}\n- CPU load before: {load_before}\n- CPU load after: {load_after}"
    threads = f", torch threads: {torch.get_num_threads()}" if settings.device == "cpu" else ""
    results.write_section(f"Wrapper overhead ({settings.device}{threads})", body)


if __name__ == "__main__":
    main()
