"""Explain mode's cost: a full `explain()` run against a plain `generate()` of the same request, and its memory.

Run `python bench/explain.py` (CPU fp32, SD 1.5 architecture with random weights; `--skip-512` leaves 512×512 out).
"""

import argparse
import ctypes
import ctypes.util
import gc
import multiprocessing
import re
import statistics
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import results  # noqa: E402
from overhead import Run, runs_table, sd15_folder, timed  # noqa: E402

from sdplay.explain.capture import ExplainRun, explain  # noqa: E402
from sdplay.explain.export import save_run  # noqa: E402
from sdplay.runtime.composition import local_manager
from sdplay.runtime.generate import generate  # noqa: E402
from sdplay.runtime.models import ModelManager  # noqa: E402
from sdplay.runtime.request import GenerationRequest  # noqa: E402

# Configuration
SIZE = 256  # the size the time bar is set for: 32×32 latents
STEPS = 8
PAIRS = 3  # measured (explain, generate) pairs after one warm-up run of each, in ABBA order
PROMPT = "a red cat sitting on a wooden chair, soft light"
NEGATIVE = "blurry, dark"
SAMPLER = "Euler"
GUIDANCE = 7.0
SEED = 1234
THREADS = 1  # torch CPU threads: 1 leaves the second core to the job we share the CPU with, and is steadier
TIME_BAR = 1.15  # median of per-pair wall-time ratios, explain / generate
MEMORY_STEPS = {256: (4, 12), 512: (2, 4)}  # size -> the two step counts whose peaks give the growth per step
MEMORY_BAR_MB = {256: 5.0}  # peak RSS growth per step of capture; 512×512 is reported without a bar
# For the memory part, glibc mmaps every allocation this big and unmaps it when freed. With its default (a threshold
# that rises as big blocks are freed) the UNet's activations stay in its heap, and a run's peak RSS then depends on
# where earlier runs left that heap: it varied by tens of MB between identical runs, more than capture adds.
MMAP_THRESHOLD = 64 * 1024
M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
MB = 2**20

T = TypeVar("T")
LIBC = ctypes.CDLL(ctypes.util.find_library("c"))


@dataclass(frozen=True)
class Timing:
    """The measured runs; pair i is explain[i] and generate[i], run back to back."""

    explain: list[Run]
    generate: list[Run]
    identical: bool  # every image, explain and generate, warm-ups included, has the same pixels

    def ratios(self, field: str) -> list[float]:
        return [getattr(a, field) / getattr(b, field) for a, b in zip(self.explain, self.generate, strict=True)]


@dataclass(frozen=True)
class Capture:
    """One run with `steps` steps: its peak RSS over the RSS it started from, and what its ExplainRun keeps."""

    steps: int
    peak: int  # bytes
    held: int  # bytes of the ExplainRun's tensors and image (0 for a plain generation)
    export: int  # bytes of its .safetensors export (0 for a plain generation)


@dataclass(frozen=True)
class Memory:
    size: int
    latents: tuple[int, int]
    short: Capture
    long: Capture
    plain: Capture  # `generate()` with `short.steps`: the peak without capture

    def per_step(self, field: str) -> float:
        """Bytes per step of capture: the difference between the long and the short run over their extra steps."""
        return (getattr(self.long, field) - getattr(self.short, field)) / (self.long.steps - self.short.steps)


def load_manager(threads: int) -> ModelManager:
    if threads:
        torch.set_num_threads(threads)
    manager = local_manager("cpu", "float32")
    manager.load(str(sd15_folder()))
    return manager


def request(size: int, steps: int) -> GenerationRequest:
    return GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        sampler=SAMPLER,
        steps=steps,
        guidance_scale=GUIDANCE,
        seed=SEED,
        width=size,
        height=size,
    )


def measure_time(manager: ModelManager, pairs: int) -> Timing:
    """One warm-up of each, then `pairs` pairs in ABBA order, so that a load that drifts hits both sides alike."""
    jobs: dict[str, Callable[[], np.ndarray]] = {
        "explain": lambda: explain(manager, request(SIZE, STEPS)).image,
        "generate": lambda: generate(manager, request(SIZE, STEPS)).images[0],
    }
    measured: dict[str, list[Run]] = {"explain": [], "generate": []}
    images = [timed(jobs[name], "cpu")[1] for name in jobs]
    for pair in range(pairs):
        for name in ("explain", "generate") if pair % 2 == 0 else ("generate", "explain"):
            run, image = timed(jobs[name], "cpu")
            measured[name].append(run)
            images.append(image)
            print(f"  pair {pair + 1}/{pairs} {name:8s} {run.wall:8.2f} s wall, {run.cpu:8.2f} s CPU", flush=True)
    identical = all(np.array_equal(images[0], image) for image in images[1:])
    return Timing(measured["explain"], measured["generate"], identical)


def settled_rss() -> int:
    """Resident bytes once the garbage collector and malloc have given back what they can; restarts VmHWM there."""
    gc.collect()
    LIBC.malloc_trim(0)  # else freed heap pages are reused unseen, and a later peak looks smaller than it is
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak resident size to the current one
    return psutil.Process().memory_info().rss


def peak_growth(job: Callable[[], T]) -> tuple[int, T]:
    """The peak resident bytes while `job` runs, over those it started from, and what it returns."""
    start = settled_rss()
    result = job()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    return peak - start, result


def held_bytes(run: ExplainRun) -> int:
    """Bytes of every tensor and array the run keeps (each block's maps included)."""
    total = 0
    for value in vars(run).values():
        for item in value.values() if isinstance(value, dict) else [value]:
            if isinstance(item, torch.Tensor | np.ndarray):
                total += item.nbytes
    return total


def capture(manager: ModelManager, size: int, steps: int, scratch: Path) -> tuple[Capture, tuple[int, int]]:
    """One measured explain run, and its latent size."""
    peak, run = peak_growth(lambda: explain(manager, request(size, steps)))
    export = save_run(run, scratch / f"{size}-{steps}.safetensors").stat().st_size
    return Capture(steps, peak, held_bytes(run), export), tuple(run.latents.shape[-2:])


def measure_memory(manager: ModelManager, size: int, scratch: Path) -> Memory:
    """A warm-up explain run, then the short and the long one, then a plain generation as long as the short one."""
    short_steps, long_steps = MEMORY_STEPS[size]
    explain(manager, request(size, short_steps))
    short, latents = capture(manager, size, short_steps, scratch)
    print(f"  {size}×{size}, {short_steps} steps: peak +{short.peak / MB:.1f} MB", flush=True)
    long, _ = capture(manager, size, long_steps, scratch)
    print(f"  {size}×{size}, {long_steps} steps: peak +{long.peak / MB:.1f} MB", flush=True)
    plain_peak, _ = peak_growth(lambda: generate(manager, request(size, short_steps)))
    print(f"  {size}×{size}, {short_steps} steps, generate(): peak +{plain_peak / MB:.1f} MB", flush=True)
    return Memory(size, latents, short, long, Capture(short_steps, plain_peak, 0, 0))


def measure_memories(sizes: list[int], threads: int) -> list[Memory]:
    """The memory part, meant for a fresh process: glibc's threshold only holds for a heap that has not grown yet
    (big blocks freed into it before would still be reused, and kept, as with its default)."""
    if not LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed: this needs glibc")
    manager = load_manager(threads)
    memories = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in sizes:
            print(f"memory: {size}×{size}", flush=True)
            memories.append(measure_memory(manager, size, Path(scratch)))
    return memories


def time_table(t: Timing, pairs: int) -> str:
    ratio = statistics.median(t.ratios("wall"))
    verdict = "met" if ratio <= TIME_BAR else "MISSED"
    rows = runs_table([("`explain()`", t.explain), ("`generate()`", t.generate)], digits=2)
    return "\n".join(
        [
            *rows,
            "",
            f"Job: txt2img {SIZE}×{SIZE}, {STEPS} steps, {SAMPLER}, CFG {GUIDANCE}, seed {SEED}, prompt “{PROMPT}”, "
            f"negative “{NEGATIVE}”; {pairs} pairs after one warm-up each, ABBA order.",
            "",
            f"- Ratio explain / generate, wall time, median of pairs: **{ratio:.3f}** (bar ≤ {TIME_BAR}: {verdict}); "
            f"per pair: {', '.join(f'{r:.3f}' for r in t.ratios('wall'))}",
            f"- Ratio explain / generate, CPU time, median of pairs: {statistics.median(t.ratios('cpu')):.3f}; "
            f"per pair: {', '.join(f'{r:.3f}' for r in t.ratios('cpu'))}",
            f"- Same pixels from explain and generate (every run): **{'yes' if t.identical else 'NO'}**",
        ]
    )


def memory_table(memories: list[Memory]) -> str:
    rows = [
        "| size | steps | peak RSS growth, MB | **per step of capture, MB** | generate() peak, MB "
        "| ExplainRun holds, KB per step | export, MB (KB per step) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in memories:
        per_step = m.per_step("peak") / MB
        bar = MEMORY_BAR_MB.get(m.size)
        verdict = f" (bar ≤ {bar}: {'met' if per_step <= bar else 'MISSED'})" if bar else " (no bar)"
        rows.append(
            f"| {m.size}×{m.size} (latents {m.latents[0]}×{m.latents[1]}) | {m.short.steps} → {m.long.steps} "
            f"| {m.short.peak / MB:.1f} → {m.long.peak / MB:.1f} | **{per_step:.2f}**{verdict} "
            f"| {m.plain.peak / MB:.1f} ({m.plain.steps} steps) | {m.per_step('held') / 1024:.0f} "
            f"| {m.long.export / MB:.2f} ({m.per_step('export') / 1024:.0f}) |"
        )
    return "\n".join(
        [
            *rows,
            "",
            "Peak RSS growth: the process's peak resident size during one `explain()` run (VmHWM, reset before it) "
            "over its resident size at the start (after `gc.collect()` and `malloc_trim`), for the short and the "
            "long run; per step of capture is their difference over the extra steps. The generate() column is the "
            "same peak for a plain generation as long as the short run: the transient peak without capture. "
            "ExplainRun holds: bytes of its tensors, per step (difference of the two runs); export: the long run's "
            ".safetensors file. Each size starts with one warm-up run. Measured in a fresh process with glibc's "
            f"mmap threshold fixed at {MMAP_THRESHOLD // 1024} KB (`mallopt`), so that freed activations go back to "
            "the system at once and the peak is what is live; with glibc's default, its heap keeps a varying slack "
            "of freed activations, and peaks differ by tens of MB between identical runs.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=PAIRS)
    parser.add_argument("--skip-512", action="store_true", help="measure memory at 256×256 only")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads (0: torch's choice)")
    args = parser.parse_args()
    manager = load_manager(args.threads)
    load_before = results.cpu_load()
    print(f"time: explain() against generate(), {SIZE}×{SIZE}, {STEPS} steps", flush=True)
    timing = measure_time(manager, args.pairs)
    del manager  # its weights go before the memory part's process loads its own
    gc.collect()
    sizes = [size for size in MEMORY_STEPS if not (args.skip_512 and size == 512)]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        memories = fresh.submit(measure_memories, sizes, args.threads).result()
    load_after = results.cpu_load()
    body = "\n".join(
        [
            "SD 1.5 architecture with random weights, CPU float32, "
            f"{torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() > 1 else ''}.",
            "",
            "### Time",
            "",
            time_table(timing, args.pairs),
            "",
            "### Memory",
            "",
            memory_table(memories),
            "",
            f"- CPU load before: {load_before}",
            f"- CPU load after: {load_after}",
        ]
    )
    print(body)
    results.write_section("Explain: overhead and memory", body)


if __name__ == "__main__":
    main()
