"""The Inside tab's UNet and attention views: what they cost when asked for, and that a normal Explain run pays
nothing for them (issue 12: "recording the new views adds no cost to a normal Explain run unless asked for").

Run `python bench/inside_views.py` (CPU, the bundled model in assets/shapes). Each round times an Explain run, asks
for the views, times a run right after them and one more plain run; a normal run attaches none of the views' hooks,
so both kinds should take the same time. It also times each view (one UNet call, or none for the recorded
cross-attention bars), states what each keeps, and counts SD 1.5's UNet (random weights on PyTorch's meta device:
no memory, no download) as the UNet view counts it. `--no-write` prints without writing bench/RESULTS.md (for trials).
"""

import argparse
import pickle
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import results  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from sdplay.explain.capture import explain  # noqa: E402
from sdplay.inside.attention import ALL_BLOCKS, PointRequest, attend_at, recorded_shares  # noqa: E402
from sdplay.inside.unet import ATTENTION_KERNELS, UNetRequest, look_inside  # noqa: E402
from sdplay.inside.unet_step import step_input  # noqa: E402
from sdplay.runtime.composition import local_manager
from sdplay.runtime.request import GenerationRequest  # noqa: E402

# Configuration
SHAPES = results.ROOT / "assets" / "shapes"
PROMPT = "a large red circle on the left on a gray background"
STEPS = 20
SEED = 1234
ROUNDS = 5  # pairs of Explain runs (plain, then after the views were asked for)
VIEW_REPEATS = 5


def median_ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:.1f} ({max(times) * 1000:.1f})"


def timed(work, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = work(*args)
    return time.perf_counter() - start, result


def sd15_counts(size: int) -> tuple[int, int]:
    """SD 1.5's UNet parameters and FLOPs per image per call at `size`² latents, built on the meta device."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=64, cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280)
        )
        sample, text = torch.zeros(1, 4, size, size), torch.zeros(1, 77, 768)
    with FlopCounterMode(display=False, custom_mapping=ATTENTION_KERNELS) as counter, torch.no_grad():
        unet(sample, torch.tensor(500.0, device="meta"), encoder_hidden_states=text)
    return sum(p.numel() for p in unet.parameters()), counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/RESULTS.md")
    args = parser.parse_args()
    load_before = results.cpu_load()

    manager = local_manager("cpu", "float32")
    manager.load(str(SHAPES))
    settings = manager.model.settings
    request = GenerationRequest(
        prompt=PROMPT, sampler=settings.sampler, steps=STEPS, guidance_scale=settings.guidance_scale, seed=SEED
    )
    explain(manager, request)  # warm-up
    plain, after_views = [], []
    look, point, bars = [], [], []
    for _ in range(args.rounds):
        seconds, run = timed(explain, manager, request)
        plain.append(seconds)
        size_before = len(pickle.dumps(run))
        step = step_input(run, STEPS // 2)
        for _ in range(VIEW_REPEATS):
            seconds, inside = timed(look_inside, manager, UNetRequest(step))
            look.append(seconds)
            job = PointRequest(step, "up_blocks.3", (0.3, 0.5), cross_heads=True)
            seconds, attention = timed(attend_at, manager, job)
            point.append(seconds)
            seconds, _ = timed(recorded_shares, run, STEPS // 2, ALL_BLOCKS, (0.3, 0.5))
            bars.append(seconds)
        assert len(pickle.dumps(run)) == size_before  # the views leave the recorded run as it was
        seconds, _ = timed(explain, manager, request)
        after_views.append(seconds)
        seconds, _ = timed(explain, manager, request)  # plain again: the machine's drift falls on both sides
        plain.append(seconds)
    ratio = statistics.median(after_views) / statistics.median(plain)
    parameters, flops = sd15_counts(64)
    _, flops_32 = sd15_counts(32)

    body = f"""| what | ms, median (max) |
|---|---|
| Explain run, {STEPS} steps, views never asked for | {median_ms(plain)} |
| Explain run, {STEPS} steps, right after the views were used | {median_ms(after_views)} |
| UNet view: one UNet call with hooks and FLOP counting | {median_ms(look)} |
| Self-attention at a point (+ cross-attention per head): one UNet call | {median_ms(point)} |
| Cross-attention bars at a point (recorded maps, no model) | {median_ms(bars)} |

- After / before the views: **{ratio:.3f}** (a normal run attaches none of their hooks: tests/test_inside_unet.py)
- What the views return: UNet view {len(pickle.dumps(inside)) / 1024:.0f} KiB (16 channels + mean per block), point
  view {len(pickle.dumps(attention)) / 1024:.1f} KiB (one query row per layer and head); the recorded run:
  {size_before / 2**20:.1f} MiB, unchanged by them
- SD 1.5's UNet as the UNet view counts it (meta device): {parameters / 1e6:.1f} M parameters,
  {flops / 1e12:.3f} TFLOP per image per call at 64×64 latents, {flops_32 / 1e12:.3f} at 32×32

Bundled model, {STEPS} steps ({settings.sampler}, CFG {settings.guidance_scale}), seed {SEED}, prompt “{PROMPT}”;
{args.rounds} rounds, views {VIEW_REPEATS}× per round at step {STEPS // 2 + 1}.

- CPU load before: {load_before}
- CPU load after: {results.cpu_load()}
"""
    print(body)
    if not args.no_write:
        results.write_section("Inside views: cost when asked, none otherwise (bundled model)", body)


if __name__ == "__main__":
    main()
