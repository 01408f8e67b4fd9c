"""Explain's presentation mode: how fast a step change redraws (issue 12 bar: ≤ 150 ms on the bundled model).

Run `python bench/presentation.py` (CPU, the bundled model in assets/shapes). The page steps through a reel of every
step's panels that the server draws once, on entering and on each word picked (`sdplay.explain.presentation.reel`). It
measures the server's part (drawing and encoding the reel) and, in Chromium, the step change itself: from pressing ←
or → in presentation mode to the new x̂₀ shown, on `python app.py` serving a replayed run.
`--no-browser` skips the second part; `--no-write` prints without writing bench/RESULTS.md (for trials).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import results  # noqa: E402
from startup import free_port, wait_for_page  # noqa: E402

from sdplay.explain.capture import ExplainRun, explain  # noqa: E402
from sdplay.explain.export import save_run  # noqa: E402
from sdplay.explain.filmstrip import Filmstrip  # noqa: E402
from sdplay.explain.presentation import reel  # noqa: E402
from sdplay.explain.render import ExplainView, HeatmapSettings, content_word  # noqa: E402
from sdplay.runtime.composition import local_manager
from sdplay.runtime.request import GenerationRequest  # noqa: E402

# Configuration
SHAPES = results.ROOT / "assets" / "shapes"
PROMPT = "a large red circle on the left on a gray background"
STEPS = 20  # the bundled model's recommended steps (its sampler and CFG are the model's too)
SEED = 1234
PASSES = 5  # server: reels drawn
PRESSES = 30  # browser: step changes timed
BAR_MS = 150.0
VIEWPORT = {"width": 1024, "height": 768}
CHROMIUM = "/usr/bin/chromium"


def record() -> ExplainRun:
    manager = local_manager("cpu", "float32")
    manager.load(str(SHAPES))
    settings = manager.model.settings
    request = GenerationRequest(
        prompt=PROMPT, sampler=settings.sampler, steps=STEPS, guidance_scale=settings.guidance_scale, seed=SEED
    )
    return explain(manager, request)


def reel_times(run: ExplainRun, passes: int) -> list[float]:
    """Milliseconds to draw and encode the reel (every step's panels), as entering or picking a word does."""
    view = ExplainView(run)
    strip = Filmstrip(view)  # as the page's session keeps it
    settings = HeatmapSettings(word=content_word(view.words))
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        reel(view, settings, strip)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def browser_times(path: Path, steps: int, presses: int) -> list[float]:
    """Milliseconds from pressing ← or → in presentation mode to the new x̂₀ loaded in the page."""
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    command = [sys.executable, "app.py", "--model", str(SHAPES), "--port", str(port), "--offline"]
    app = subprocess.Popen(command, cwd=results.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times = []
    try:
        wait_for_page(f"http://127.0.0.1:{port}/", app, 300)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
            page.get_by_role("tab", name="Explain", exact=True).click()
            panel = page.get_by_role("tabpanel").filter(visible=True)
            panel.locator("input[type=file]").last.set_input_files(str(path))
            expect(panel.get_by_text(f"Step {steps} of {steps}", exact=True)).to_be_visible(timeout=120_000)
            panel.get_by_label("Presentation", exact=True).check()
            x0 = page.locator(".sdplay-panel-x0 img")
            expect(x0).to_be_visible(timeout=60_000)
            page.wait_for_timeout(1000)  # let the first draws settle
            for press in range(presses):
                before = x0.get_attribute("src")
                key = "ArrowLeft" if (press // (steps - 1)) % 2 == 0 else "ArrowRight"  # back and forth
                start = time.perf_counter()
                page.keyboard.press(key)
                page.wait_for_function(
                    "before => { const img = document.querySelector('.sdplay-panel-x0 img');"
                    " return img && img.src !== before && img.complete && img.naturalWidth > 0; }",
                    arg=before,
                    polling="raf",
                    timeout=30_000,
                )
                times.append((time.perf_counter() - start) * 1e3)
            browser.close()
    finally:
        app.terminate()
        app.wait(timeout=30)
    return times


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=PASSES, help="server: reels drawn")
    parser.add_argument("--presses", type=int, default=PRESSES, help="browser: step changes timed")
    parser.add_argument("--no-browser", action="store_true", help="measure the server's part only")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/RESULTS.md")
    args = parser.parse_args()

    load_before = results.cpu_load()
    run = record()
    server = reel_times(run, args.passes)
    rows = [
        "| part | ms, median (max) |",
        "|---|---|",
        f"| server: the reel, {run.steps} steps × 4 panels drawn and encoded (entering, picking a word) | "
        f"{summary(server)} |",
    ]
    if not args.no_browser:
        with tempfile.TemporaryDirectory() as scratch:
            path = save_run(run, Path(scratch) / "presentation.safetensors")
            pressed = browser_times(path, run.steps, args.presses)
        verdict = "met" if statistics.median(pressed) <= BAR_MS else "MISSED"
        rows.append(f"| Chromium: key press → new x̂₀ loaded | **{summary(pressed)}** ≤ {BAR_MS:.0f}: {verdict} |")
    load_after = results.cpu_load()
    body = "\n".join(
        [
            *rows,
            "",
            f"Bundled model, {run.steps} steps ({run.recipe.sampler}, CFG {run.recipe.guidance_scale}), "
            f"{run.image.shape[1]}×{run.image.shape[0]}, seed {SEED}, prompt “{PROMPT}”. Server: {args.passes} reels."
            f" Chromium ({VIEWPORT['width']}×{VIEWPORT['height']}): `python app.py` on the bundled "
            f"model replays the run, presentation mode on, {args.presses} presses of ← / →, each timed until the "
            "x̂₀ image with the new step has loaded (in the page: no round trip to the server).",
            "",
            f"- CPU load before: {load_before}",
            f"- CPU load after: {load_after}",
        ]
    )
    print(body)
    if not args.no_write:
        results.write_section("Explain: presentation mode", body)


if __name__ == "__main__":
    main()
