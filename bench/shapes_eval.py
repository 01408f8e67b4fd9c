"""Evaluate the bundled shapes model with plain diffusers: does it follow the prompt, does attention localise?

Run `python bench/shapes_eval.py [--model assets/shapes] [--count 64] [--seed 2024]`; writes bench/RESULTS.md.
"""

from __future__ import annotations

# No OMP_WAIT_POLICY=PASSIVE here (the training script sets it): the app runs with OpenMP's default, and passive
# threads made one image 3x slower on a quiet 2-core machine (1.36 s instead of 0.43 s). The timing is the app's.
import argparse
import datetime
import os
import pathlib
import platform
import re
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from sdplay.explain.capture import attention_probabilities
from sdplay.shapes.evaluate import DAAM_THRESHOLD, measure
from sdplay.shapes.world import Scene, sample_scene

BARS = {
    "colour accuracy": 0.90,
    "background accuracy": 0.90,
    "shape accuracy": 0.80,
    "size accuracy": 0.80,
    "position accuracy": 0.85,
    "attention IoU, shape word": 0.70,
    "attention IoU, colour word": 0.60,
}
SECONDS_BAR = 1.5


class CrossAttentionSum:
    """Stands in for one attn2 processor: runs it unchanged, and sums the prompt branch's head-averaged
    softmax(QKᵀ·scale) map over the steps."""

    def __init__(self, processor, sums: dict[str, torch.Tensor], name: str):
        self.processor, self.sums, self.name = processor, sums, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        output = self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        conditional = attention_probabilities(attn, hidden_states, encoder_hidden_states)[-1]  # CFG puts it last
        self.sums[self.name] = self.sums.get(self.name, 0) + conditional
        return output


def attention_iou(heatmaps: torch.Tensor, slot: int, mask: np.ndarray) -> float:
    """DAAM protocol on the image-sized (already upsampled) maps: min-max normalise, threshold 0.4, IoU."""
    heat = heatmaps[slot]
    heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-8)
    predicted = (heat >= DAAM_THRESHOLD).numpy()
    return float((predicted & mask).sum() / max(1, (predicted | mask).sum()))


def heatmaps_from(sums: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """Sum of every layer's map (already summed over steps), each upsampled bicubically to the image: (tokens, H, W)."""
    total = 0
    for summed in sums.values():  # (pixels, tokens)
        side = int(summed.shape[0] ** 0.5)
        maps = summed.T.reshape(1, -1, side, side)
        total = total + F.interpolate(maps, size=(size, size), mode="bicubic", align_corners=False)[0]
    return total


def generate(pipe: StableDiffusionPipeline, prompt: str, seed: int, size: int) -> np.ndarray:
    result = pipe(
        prompt,
        height=size,
        width=size,
        num_inference_steps=20,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return (result.images[0] * 255).round().astype(np.uint8)


def evaluate(model: pathlib.Path, count: int, seed: int, timed: int) -> tuple[dict[str, float], float, float]:
    """Scores per metric, wall seconds per image and CPU seconds per image (all threads)."""
    pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    rng = np.random.default_rng(seed)  # fresh scenes: training draws from other seeds
    scenes: list[Scene] = [sample_scene(rng) for _ in range(count)]

    generate(pipe, "a", seed, size)  # warm-up, so the timing below excludes one-off costs
    start, start_cpu = time.perf_counter(), time.process_time()
    for i, scene in enumerate(scenes[:timed]):
        generate(pipe, scene.prompt(), seed + i, size)
    seconds, cpu_seconds = (time.perf_counter() - start) / timed, (time.process_time() - start_cpu) / timed

    original = pipe.unet.attn_processors
    hits: dict[str, list[float]] = {name: [] for name in BARS}
    try:
        for i, scene in enumerate(scenes):
            sums: dict[str, torch.Tensor] = {}
            pipe.unet.set_attn_processor(
                {n: CrossAttentionSum(p, sums, n) if "attn2" in n else p for n, p in original.items()}
            )
            prompt = scene.prompt()
            image = generate(pipe, prompt, seed + i, size)
            got = measure(image)
            heatmaps = heatmaps_from(sums, size)
            words = prompt.split()  # every grammar word is one token; slot 0 is the start token
            hits["colour accuracy"].append(got.color == scene.color)
            hits["background accuracy"].append(got.background == scene.background)
            hits["shape accuracy"].append(got.shape == scene.shape)
            hits["size accuracy"].append(got.size == scene.size)
            hits["position accuracy"].append(got.position == scene.position)
            hits["attention IoU, shape word"].append(attention_iou(heatmaps, words.index(scene.shape) + 1, got.mask))
            hits["attention IoU, colour word"].append(attention_iou(heatmaps, words.index(scene.color) + 1, got.mask))
    finally:
        pipe.unet.set_attn_processor(original)
    return {name: float(np.mean(values)) for name, values in hits.items()}, seconds, cpu_seconds


def machine(load: float) -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = found.group(1).strip() if found else cpu
    threads = torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads), load {load:.1f} at start"


def write_results(path: pathlib.Path, table: str) -> None:
    """Replace this script's section of RESULTS.md, leaving the other benchmarks' sections alone."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = "## Shapes model\n\n" + table + "\n"
    pattern = re.compile(r"## Shapes model\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=pathlib.Path, default=pathlib.Path("assets/shapes"))
    parser.add_argument("--count", type=int, default=64, help="number of random prompts (at least 64 for the table)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--timed", type=int, default=16, help="images timed without attention capture")
    parser.add_argument("--results", type=pathlib.Path, default=pathlib.Path("bench/RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only (for experiments)")
    args = parser.parse_args()

    load = os.getloadavg()[0]  # other jobs slow the wall-clock figure (the CPU-seconds one much less): record it
    scores, seconds, cpu_seconds = evaluate(args.model, args.count, args.seed, args.timed)
    rows = [
        f"| {name} | ≥ {bar:.2f} | {scores[name]:.2f} | {'yes' if scores[name] >= bar else 'no'} |"
        for name, bar in BARS.items()
    ]
    met = "yes" if seconds <= SECONDS_BAR else "no"
    rows.append(f"| wall seconds per image (20 steps, CFG) | ≤ {SECONDS_BAR} | {seconds:.2f} | {met} |")
    rows.append(f"| CPU seconds per image (both threads) | | {cpu_seconds:.2f} | |")
    command = "python bench/shapes_eval.py " + " ".join(sys.argv[1:])
    table = "\n".join(
        [
            f"{datetime.date.today().isoformat()} · {machine(load)} · `{command.strip()}`",
            f"({args.count} random prompts, seed {args.seed}, 20 steps, guidance 5.0, native size)",
            "",
            "| metric | bar | value | met |",
            "| --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(table)
    if not args.no_write:
        write_results(args.results, table)


if __name__ == "__main__":
    main()
