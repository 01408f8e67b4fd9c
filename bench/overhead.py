"""Overhead against plain diffusers on the same weights, job and seed, in two parts.

- `wrapper`: sdplay's `generate()` (txt2img) on SD 1.5's architecture (CPU, 256×256, 4 steps by default, or
  `--device cuda --dtype float16 --size 512 --steps 20`);
- `app`: end to end on the bundled model as `python app.py` serves it: `/txt2img` and `/explain` through
  `gradio_client`, next to bench/gradio_floor.py (the same endpoints returning a finished result: what Gradio and
  gradio_client cost alone), and Generate in headless Chromium (time to the first preview and to the image).

Run `python bench/overhead.py` for both, or name one: `python bench/overhead.py app`.
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
from gradio_client import Client
from gradio_client.client import Endpoint
from PIL import Image
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import results  # noqa: E402
from startup import served_app  # noqa: E402

from sdplay.runtime.composition import local_manager
from sdplay.runtime.generate import generate  # noqa: E402
from sdplay.runtime.models import DTYPES, ModelManager, pick_device, pick_dtype  # noqa: E402
from sdplay.runtime.random_models import sd15_pipeline  # noqa: E402
from sdplay.runtime.request import GenerationRequest  # noqa: E402

# Configuration
SIZE = 256  # 32×32 latents: the real UNet at a size a 2-core CPU runs in seconds per step
STEPS = 4
PAIRS = 6  # measured pairs after one warm-up run of each; even, so that ABBA order cancels a linear drift
PROMPT = "a red cat sitting on a wooden chair, soft light"
SEED = 1234
GUIDANCE = 7.0
BAR = 1.03  # median of per-pair ratios, ours / plain
CACHE = Path(os.environ.get("SDPLAY_BENCH_CACHE", Path.home() / ".cache" / "sdplay" / "bench"))

# End to end: the bundled model with its recommended settings; DPM++ 2M with the Uniform schedule is its saved
# scheduler, which plain diffusers runs as loaded.
BUNDLED = results.ROOT / "assets" / "shapes"
APP_JOB = {
    "prompt": "a large red circle on the left on a gray background",
    "negative_prompt": "",
    "sampler": "DPM++ 2M",
    "schedule": "Uniform",
    "steps": 20,
    "guidance_scale": 4.0,
    "seed": SEED,
    "width": 64,
    "height": 64,
}
ROUNDS = 12  # measured rounds of plain, /txt2img, /explain and their Gradio floors after one warm-up, order rotated
BROWSER_RUNS = 8  # Generate clicks measured after one warm-up
API_BAR = 1.15  # median of per-round ratios, /txt2img end to end / plain diffusers
EXPLAIN_BAR = 1.25  # the same for /explain
PREVIEW_BAR = 0.5  # seconds from the click on Generate to the first image in the gallery, median


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
    manager = local_manager(settings.device, settings.dtype)
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
def timed_calls(owner: type, name: str) -> Iterator[list[float]]:
    """Record the wall seconds of every call of the method `owner.name` (on any instance) while open."""
    spent: list[float] = []
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed_call(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    setattr(owner, name, timed_call)
    try:
        yield spent
    finally:
        setattr(owner, name, original)


def timed(run: Callable[[], Image.Image], device: str) -> tuple[Run, np.ndarray]:
    # Every diffusers call, ours and plain alike.
    with timed_calls(StableDiffusionPipeline, "__call__") as inside:
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


@dataclass(frozen=True)
class EndToEnd:
    """Wall seconds per image, round i of each list run back to back; the browser's are per click."""

    device: str
    # "plain", "api", "explain", and "floor_api", "floor_explain" (bench/gradio_floor.py's endpoints)
    seconds: dict[str, list[float]]
    downloads: dict[str, list[float]]  # seconds gradio_client spent downloading the call's files, per call
    identical: bool  # every image, ours (both endpoints) and plain, warm-ups included, has the same pixels
    first_preview: list[float]  # click on Generate -> the gallery's first new image, loaded
    image: list[float]  # click on Generate -> the final image, loaded

    def ratios(self, side: str) -> list[float]:
        """Per round: `side` / plain."""
        return [a / b for a, b in zip(self.seconds[side], self.seconds["plain"], strict=True)]

    def beyond_floor(self, side: str) -> list[float]:
        """Per round: (`side` − Gradio's floor for its result) / plain, the part of the ratio that is sdplay's."""
        seconds = self.seconds
        return [
            (ours - floor) / plain
            for ours, floor, plain in zip(seconds[side], seconds[f"floor_{side}"], seconds["plain"], strict=True)
        ]


def load_plain_bundled() -> StableDiffusionPipeline:
    """The bundled model in plain diffusers, with its saved scheduler, on the device and dtype the app picks."""
    device = pick_device(None)
    pipe = StableDiffusionPipeline.from_pretrained(
        BUNDLED, dtype=pick_dtype(None, device), use_safetensors=True, local_files_only=True, safety_checker=None,
        requires_safety_checker=False,
    ).to(device)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_bundled(pipe: StableDiffusionPipeline) -> np.ndarray:
    image = pipe(
        prompt=APP_JOB["prompt"],
        num_inference_steps=APP_JOB["steps"],
        guidance_scale=APP_JOB["guidance_scale"],
        width=APP_JOB["width"],
        height=APP_JOB["height"],
        generator=torch.Generator().manual_seed(SEED),
    ).images[0]
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    return np.asarray(image)


def api_txt2img(client: Client) -> tuple[np.ndarray, str]:
    """The image's pixels, and where gradio_client saved its PNG."""
    gallery, _, _ = client.predict(**APP_JOB, api_name="/txt2img")
    return np.asarray(Image.open(gallery[0]["image"]).convert("RGB")), gallery[0]["image"]


def api_explain(client: Client) -> tuple[np.ndarray, str]:
    """The final image's pixels, and where gradio_client saved the run's export."""
    image, export = client.predict(**APP_JOB, api_name="/explain")
    return np.asarray(Image.open(image).convert("RGB")), export


def measure_api(
    client: Client, floor: Client, pipe: StableDiffusionPipeline, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], bool]:
    """One warm-up of each, then `rounds` rounds whose order rotates, so that a drifting load hits all alike.

    `floor` serves bench/gradio_floor.py: the same endpoints, returning the app's files at once. Returns the wall
    seconds of each run, the part of them gradio_client spent downloading files (a new HTTP client each time: the
    result comes in the last streamed message and again in the final one, and it downloads both), and whether every
    image of the app and of plain diffusers has the same pixels.
    """
    runs = {
        "plain": lambda: plain_bundled(pipe),
        "api": lambda: api_txt2img(client)[0],
        "explain": lambda: api_explain(client)[0],
        "floor_api": lambda: api_txt2img(floor)[0],
        "floor_explain": lambda: api_explain(floor)[0],
    }
    names = list(runs)
    images = [runs[name]() for name in names[:3]]
    for name in names[3:]:
        runs[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    downloads: dict[str, list[float]] = {name: [] for name in names}
    with timed_calls(Endpoint, "_download_file") as fetched:
        for i in range(rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                fetched.clear()
                start = time.perf_counter()
                image = runs[name]()
                seconds[name].append(time.perf_counter() - start)
                downloads[name].append(sum(fetched))
                if not name.startswith("floor"):
                    images.append(image)
            print(f"  round {i + 1}/{rounds}: " + ", ".join(f"{n} {seconds[n][-1]:.3f} s" for n in names), flush=True)
    return seconds, downloads, all(np.array_equal(images[0], image) for image in images[1:])


# Clicks Generate and resolves, once the final image has loaded, with the milliseconds from the click to the first
# new image loaded in the gallery (a preview, or the image itself) and to the final image.
CLICK_AND_WATCH = """async ([gallery, button]) => {
    const old = new Set([...gallery.querySelectorAll("img")].map((img) => img.src));
    return await new Promise((resolve) => {
        const t = {};
        const check = () => {
            for (const img of gallery.querySelectorAll("img")) {
                if (old.has(img.src) || !img.complete || img.naturalWidth === 0) continue;
                const now = performance.now() - t.click;
                t.preview ??= now;
                if (img.alt.startsWith("Seed ")) {
                    t.image = now;
                    observer.disconnect();
                    clearInterval(timer);
                    resolve(t);
                }
            }
        };
        const observer = new MutationObserver(check);
        observer.observe(gallery, {subtree: true, childList: true, attributes: true});
        gallery.addEventListener("load", check, true);
        const timer = setInterval(check, 5);
        t.click = performance.now();
        button.click();
    });
}"""


def measure_browser(url: str, runs: int) -> tuple[list[float], list[float]]:
    """Seconds from a click on Generate to the first image in the gallery and to the final image, in Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url, timeout=120_000)
        panel = page.get_by_role("tabpanel").filter(visible=True)
        panel.get_by_label("Prompt", exact=True).fill(APP_JOB["prompt"])
        elements = [
            panel.locator(".results").element_handle(),
            panel.get_by_role("button", name="Generate").element_handle(),
        ]
        first, final = [], []
        for run in range(runs + 1):
            times = page.evaluate(CLICK_AND_WATCH, elements)
            if run:  # the first is the warm-up
                first.append(times["preview"] / 1000)
                final.append(times["image"] / 1000)
            page.wait_for_timeout(300)  # let the event finish before the next click
        browser.close()
    return first, final


def measure_end_to_end(rounds: int = ROUNDS, browser_runs: int = BROWSER_RUNS) -> EndToEnd:
    pipe = load_plain_bundled()
    with served_app() as url:
        client = Client(url, verbose=False)
        _, image = api_txt2img(client)
        _, export = api_explain(client)
        with served_app("bench/gradio_floor.py", "--image", image, "--export", export) as floor_url:
            seconds, downloads, identical = measure_api(client, Client(floor_url, verbose=False), pipe, rounds)
        first, final = measure_browser(url, browser_runs)
    device = f"{pipe.device.type} {str(pipe.dtype).removeprefix('torch.')}"
    return EndToEnd(device, seconds, downloads, identical, first, final)


def spread(values: list[float]) -> str:
    """Median, min and max seconds as three table cells."""
    return f"{statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f}"


def end_to_end_table(m: EndToEnd) -> str:
    """A markdown table of the medians, the per-round ratios, the browser's latencies and the verdicts."""
    api, explain = statistics.median(m.ratios("api")), statistics.median(m.ratios("explain"))
    beyond = {side: statistics.median(m.beyond_floor(side)) for side in ("api", "explain")}
    preview = statistics.median(m.first_preview)
    fetched = {side: f"{statistics.median(values) * 1e3:.0f} ms" for side, values in m.downloads.items()}
    seconds = m.seconds
    rows = [
        "| | wall s per image, median | min | max | of which gradio_client downloads files, median |",
        "|---|---|---|---|---|",
        f"| plain diffusers (in the benchmark's process) | {spread(seconds['plain'])} | |",
        f"| `/txt2img` via `gradio_client` | {spread(seconds['api'])} | {fetched['api']} |",
        f"| `/explain` via `gradio_client` (image + the run's export) | {spread(seconds['explain'])} | "
        f"{fetched['explain']} |",
        f"| Gradio's floor for `/txt2img`'s result | {spread(seconds['floor_api'])} | {fetched['floor_api']} |",
        f"| Gradio's floor for `/explain`'s result | {spread(seconds['floor_explain'])} | {fetched['floor_explain']} |",
        f"| Chromium: click on Generate → first image in the gallery | {spread(m.first_preview)} | |",
        f"| Chromium: click on Generate → the final image | {spread(m.image)} | |",
        "",
        f"Job: the bundled model (`python app.py`), {m.device}, txt2img {APP_JOB['width']}×{APP_JOB['height']}, "
        f"{APP_JOB['steps']} steps, {APP_JOB['sampler']} ({APP_JOB['schedule']}: the model's saved scheduler), CFG "
        f"{APP_JOB['guidance_scale']}, seed {SEED}, prompt “{APP_JOB['prompt']}”; {len(seconds['plain'])} rounds of "
        "the five after one warm-up each, in rotated order. End to end is `client.predict()` until it returns: the "
        "queue, progress messages, and the result's files downloaded (gradio_client downloads each twice, from the "
        "last streamed message and from the final one, with a new HTTP client each time). Gradio's floor is "
        "bench/gradio_floor.py, served next to the app: the same endpoints (components, streaming handler, PNG) "
        "returning the app's own image and export at once, i.e. what Gradio and gradio_client cost to carry the "
        f"result. The browser rows are {len(m.image)} clicks after one warm-up (random seeds), from the click to the "
        "image loaded in the page. OpenMP wait policy (both sides): "
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset (plain diffusers spins)')}.",
        "",
        f"- Ratio `/txt2img` / plain, median of rounds: **{api:.3f}** (bar ≤ {API_BAR}: "
        f"{'met' if api <= API_BAR else 'MISSED'}); per round: {', '.join(f'{r:.3f}' for r in m.ratios('api'))}",
        f"- Ratio `/explain` / plain, median of rounds: **{explain:.3f}** (bar ≤ {EXPLAIN_BAR}: "
        f"{'met' if explain <= EXPLAIN_BAR else 'MISSED'}); per round: "
        f"{', '.join(f'{r:.3f}' for r in m.ratios('explain'))}",
        f"- Beyond Gradio's floor, (endpoint − floor) / plain, median of rounds: `/txt2img` **{beyond['api']:.3f}**, "
        f"`/explain` **{beyond['explain']:.3f}**; the floor alone is "
        f"{statistics.median(m.ratios('floor_api')):.3f} and {statistics.median(m.ratios('floor_explain')):.3f} "
        "of plain",
        f"- First preview in the browser, median: **{preview:.3f} s** (bar ≤ {PREVIEW_BAR} s: "
        f"{'met' if preview <= PREVIEW_BAR else 'MISSED'})",
        f"- Pixel-identical images (`/txt2img`, `/explain` and plain, every run): **{'yes' if m.identical else 'NO'}**",
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


def parse_parts(argv: list[str]) -> tuple[list[str], list[str]]:
    """The parts named first on the command line (both when none is) and the wrapper part's own flags."""
    parts = [arg for arg in argv if arg in ("wrapper", "app")]
    return parts or ["wrapper", "app"], [arg for arg in argv if arg not in parts]


def main() -> None:
    parts, flags = parse_parts(sys.argv[1:])
    if "wrapper" in parts:
        settings = parse_settings(flags)
        manager, plain = load(sd15_folder(), settings)
        load_before = results.cpu_load()
        measurement = measure(manager, plain, settings)
        load_after = results.cpu_load()
        report = table(measurement)
        print(report)
        body = f"{report}\n- CPU load before: {load_before}\n- CPU load after: {load_after}"
        threads = f", torch threads: {torch.get_num_threads()}" if settings.device == "cpu" else ""
        results.write_section(f"Wrapper overhead ({settings.device}{threads})", body)
    if "app" in parts:
        load_before = results.cpu_load()
        end_to_end = measure_end_to_end()
        load_after = results.cpu_load()
        report = end_to_end_table(end_to_end)
        print(report)
        body = f"{report}\n- CPU load before: {load_before}\n- CPU load after: {load_after}"
        results.write_section(f"End to end: app and browser against plain diffusers ({end_to_end.device})", body)


if __name__ == "__main__":
    main()
