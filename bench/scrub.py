"""Explain scrubbing: server time to redraw every panel of the Explain view for a new step, from a recorded run.

Run `python bench/scrub.py` (CPU): the tiny test model, the bundled shapes model if assets/shapes exists, and the SD 1.5
architecture with random weights at 256×256, 8 steps (built once into the cache, shared with bench/overhead.py).
"""

import statistics
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import results  # noqa: E402
from overhead import sd15_folder  # noqa: E402

from sdplay.explain.capture import ExplainRun, explain  # noqa: E402
from sdplay.explain.export import save_run  # noqa: E402
from sdplay.explain.render import PANELS, ExplainView, HeatmapSettings  # noqa: E402
from sdplay.runtime.composition import local_manager
from sdplay.runtime.random_models import tiny_pipeline  # noqa: E402
from sdplay.runtime.request import GenerationRequest  # noqa: E402

# Configuration
SIZE = 256  # SD 1.5 at 32×32 latents, the size the bar is set for
STEPS = 8
PASSES = 5  # redraws of every step, in order, as a scrubber or ▶ Play does
PROMPT = "a red cat sitting on a wooden chair, soft light"
NEGATIVE = "blurry, dark"
SEED = 1234
BARS_MS = {"tiny": 150.0, "shapes (bundled)": 150.0, "SD 1.5 architecture": 300.0}
SHAPES = results.ROOT / "assets" / "shapes"


def record(folder: Path, size: int | None) -> tuple[ExplainRun, float]:
    """One Explain run on the model in `folder`, and the seconds it took."""
    manager = local_manager("cpu", "float32")
    manager.load(str(folder))
    request = GenerationRequest(
        prompt=PROMPT, negative_prompt=NEGATIVE, sampler="Euler", steps=STEPS, seed=SEED, width=size or 0,
        height=size or 0,
    )  # fmt: skip
    start = time.perf_counter()
    run = explain(manager, request)
    return run, time.perf_counter() - start


def encoded(panels: dict[str, object]) -> int:
    """Encode every image of the panels in the format the Explain tab sends it, as Gradio does; returns bytes."""
    total = 0
    formats = {panel.name: panel.format for panel in PANELS}
    for name, value in panels.items():
        if isinstance(value, list):  # a gallery's (image, caption) pairs
            value = [image for image, _ in value]
        for image in value if isinstance(value, list) else [value]:
            if isinstance(image, Image.Image):
                buffer = BytesIO()
                image.save(buffer, format=formats[name])
                total += buffer.tell()
    return total


def measure(run: ExplainRun) -> dict[str, float]:
    """Milliseconds: building the view once, then redraws per step (median and max over passes)."""
    start = time.perf_counter()
    view = ExplainView(run)
    built = (time.perf_counter() - start) * 1e3
    word = next(i for i, w in enumerate(view.words) if not w.special)
    modes = {
        "step": HeatmapSettings(word=word),
        "range": HeatmapSettings(word=word, shared=True, steps=(0, run.steps - 1)),
    }
    times: dict[str, list[float]] = {"step": [], "range": [], "encode": []}
    for _ in range(PASSES):
        for step in range(run.steps):
            for mode, settings in modes.items():
                start = time.perf_counter()
                panels = view.draw(step, settings)
                times[mode].append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            encoded(panels)
            times["encode"].append((time.perf_counter() - start) * 1e3)
    figures = {"build": built}
    for name, values in times.items():
        figures[f"{name} median"], figures[f"{name} max"] = statistics.median(values), max(values)
    return figures


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        models = {"tiny": (tiny_pipeline(Path(scratch) / "tiny"), None)}
        if (SHAPES / "model_index.json").is_file():
            models["shapes (bundled)"] = (SHAPES, None)
        models["SD 1.5 architecture"] = (sd15_folder(), SIZE)
        load_before = results.cpu_load()
        rows = []
        for name, (folder, size) in models.items():
            print(f"recording {name} ...", flush=True)
            run, seconds = record(folder, size)
            f = measure(run)
            (h, w), t = run.latents.shape[-2:], len(run.tokens)
            total = f["step median"] + f["encode median"]
            export = save_run(run, Path(scratch) / f"{len(rows)}.safetensors").stat().st_size / 2**20
            verdict = "met" if total <= BARS_MS[name] else "MISSED"
            rows.append(
                f"| {name} | {run.image.shape[1]}×{run.image.shape[0]}, latents {h}×{w}, {len(run.attention)} "
                f"blocks, T = {t} | {seconds:.1f} s | {export:.2f} MB | {f['build']:.0f} | **{f['step median']:.1f}** "
                f"({f['step max']:.1f}) | {f['range median']:.1f} ({f['range max']:.1f}) | "
                f"{f['encode median']:.1f} | {total:.1f} ≤ {BARS_MS[name]:.0f}: {verdict} |"
            )
            print(rows[-1], flush=True)
        load_after = results.cpu_load()
    table = [
        "| model | run | explain run | export | build view, ms | redraw a step, ms median (max) "
        "| step range + shared scale, ms | encode the panels, ms | redraw + encode vs bar, ms |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    body = "\n".join(
        [
            *table,
            "",
            f"Each run: txt2img, Euler, {STEPS} steps, CFG 7, seed {SEED}, prompt “{PROMPT}”, negative “{NEGATIVE}”. "
            f"A redraw is `ExplainView.draw()`: step label, x_t, x̂₀ (linear preview), ε_uncond, ε_cond, guidance, "
            f"latent channels, the word heatmap, the layer × resolution matrix and the negative-prompt maps; "
            f"{PASSES} passes over every step. Building the view (once per run: layer averages, previews, word "
            f"groups) happens when a run finishes or is replayed. Gradio then encodes the images to send them (JPEG, "
            f"the channel tiles PNG): that column measures it for the same panels.",
            "",
            f"- CPU load before: {load_before}",
            f"- CPU load after: {load_after}",
        ]
    )
    print(body)
    results.write_section("Explain: scrubbing", body)


if __name__ == "__main__":
    main()
