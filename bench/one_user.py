"""One user: `/txt2img` end to end through gradio_client at the bundled model's defaults (LCM, 4 steps: the
generation tabs' fast path), against issue 21's bar, beside Gradio's floor for the same result.

Run `python bench/one_user.py`; it writes its section of bench/RESULTS.md. The app runs as users start it
(`python app.py --offline`: the bundled model, two jobs at once on a CPU), in a process of its own.
"""

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

JOB = {
    "prompt": "a small red circle on the left and a small blue square on the right on a gray background",
    "negative_prompt": "",
    "sampler": "LCM",
    "schedule": "Automatic",
    "steps": 4,
    "guidance_scale": 4.0,
    "seed": 7,
    "width": 64,
    "height": 64,
}
WARM_UP = 3
ROUNDS = 30  # each: one call to the app, one to Gradio's floor
BAR = 0.3  # seconds, median, /txt2img end to end (issue 21)


def timed(client: Client, api_name: str, **arguments) -> tuple[float, object]:
    start = time.perf_counter()
    output = client.predict(**arguments, api_name=api_name)
    return time.perf_counter() - start, output


def main() -> None:
    load = results.cpu_load()
    with served_app() as url:
        app = Client(url, verbose=False)
        for _ in range(WARM_UP):
            _, (gallery, _, _) = timed(app, "/txt2img", **JOB)
        _, (_, export) = timed(app, "/explain", **(JOB | {"sampler": "Euler", "steps": 2}))
        with served_app("bench/gradio_floor.py", "--image", gallery[0]["image"], "--export", export) as floor_url:
            floor = Client(floor_url, verbose=False)
            for _ in range(WARM_UP):
                timed(floor, "/txt2img", **JOB)
            seconds: dict[str, list[float]] = {"app": [], "floor": []}
            images = []
            for _ in range(ROUNDS):
                took, (gallery, _, _) = timed(app, "/txt2img", **JOB)
                seconds["app"].append(took)
                images.append(np.asarray(Image.open(gallery[0]["image"]).convert("RGB")))
                seconds["floor"].append(timed(floor, "/txt2img", **JOB)[0])
    median = {side: statistics.median(values) for side, values in seconds.items()}
    p95 = {side: float(np.percentile(values, 95)) for side, values in seconds.items()}
    same = all(np.array_equal(images[0], image) for image in images[1:])
    body = "\n".join(
        [
            "| | median s | p95 s | min s |",
            "|---|---|---|---|",
            f"| `/txt2img` via gradio_client, the app | **{median['app']:.3f}** | {p95['app']:.3f} | "
            f"{min(seconds['app']):.3f} |",
            f"| the same result from Gradio's floor (bench/gradio_floor.py) | {median['floor']:.3f} | "
            f"{p95['floor']:.3f} | {min(seconds['floor']):.3f} |",
            "",
            f"`python app.py --offline` (the bundled model, its defaults: {JOB['sampler']}, {JOB['steps']} steps, CFG "
            f"{JOB['guidance_scale']:g}, {JOB['width']}×{JOB['height']}, seed {JOB['seed']}), one client calling "
            f"`client.predict(..., api_name='/txt2img')` {ROUNDS} times after {WARM_UP} warm-ups, alternating with "
            "the floor: the same endpoint shape returning the app's image at once (what Gradio and gradio_client "
            "cost alone). End to end includes the queue, the progress messages and downloading the PNG.",
            f"- Median end to end: **{median['app']:.3f} s** (bar ≤ {BAR} s: "
            f"{'met' if median['app'] <= BAR else 'NOT met'}); beyond Gradio's floor: "
            f"{median['app'] - median['floor']:.3f} s",
            f"- Every image pixel-identical: {'yes' if same else '**NO**'}",
            f"- CPU load before: {load}",
        ]
    )
    print(body)
    results.write_section("One user: /txt2img at the bundled model's defaults", body)


if __name__ == "__main__":
    main()
