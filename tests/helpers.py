"""Plain helpers that several test modules share: paths, timeouts, the app started as a user starts it, its API as a
script calls it, the page's tabs, and a replayable run of the bundled model. conftest.py builds its fixtures on them.
"""

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from gradio_client import Client
from PIL import Image
from playwright.sync_api import Locator, Page, expect

from sdplay.explain.capture import explain
from sdplay.explain.export import save_run
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import GenerationRequest, Task

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"  # git-ignored
SHAPES = ROOT / "assets" / "shapes"  # the bundled model
LOAD_TIMEOUT_MS = 60_000
GENERATE_TIMEOUT_MS = 60_000
PROMPT = "a red cat"
# Where Gradio serves a result file; the galleries save PNG (format="png"), which keeps the parameters chunk.
SERVED_PNG = re.compile(r"/gradio_api/file=.*\.png$")

# The app --------------------------------------------------------------------------------------------------------


def running_unet(manager: ModelManager, sampler: str = "Euler"):
    """The UNet that a job run on the calling thread uses: the thread's own module tree over the model's weights
    (`ModelManager.pipeline`). Hooks on it see that job's calls, and no other job's."""
    return manager.pipeline(Task.TXT2IMG, sampler).unet


def same_weights(a, b) -> bool:
    """Whether two modules hold the very same weight tensors (a thread's own UNet and the model's)."""
    return all(x is y for x, y in zip(a.parameters(), b.parameters(), strict=True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_app(model: Path, *flags: str, log_name: str = "app.log") -> Iterator[str]:
    """`python app.py` as a user starts it, on `model` and a free port, with more `flags`: yields its URL."""
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / log_name).open("w")
    command = [sys.executable, "app.py", "--model", str(model), "--port", str(port), "--offline", *flags]
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(url, timeout=2).status_code in (200, 401):  # 401: the app has a login page
                break
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the app did not start: see {ARTIFACTS / log_name}")
        time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


# Its API, as a script calls it ------------------------------------------------------------------------------------

COMMON = ["prompt", "negative_prompt", "sampler", "steps", "guidance_scale", "seed"]
CONTRACT = {
    "/txt2img": [*COMMON, "width", "height"],
    "/img2img": [*COMMON, "image", "strength", "width", "height"],
    "/inpaint": [*COMMON, "image", "mask", "strength", "width", "height"],
}


def txt2img(client: Client, **overrides):
    args = dict(prompt="a red cat", negative_prompt="", sampler="Euler", steps=4, guidance_scale=7, seed=5)
    return client.predict(**{"width": 64, "height": 64, **args, **overrides}, api_name="/txt2img")


def long_job(client: Client, steps: int = 60, size: int = 256, seed: int = 4):
    """A /txt2img job that has started its steps (or a minute has passed)."""
    job = client.submit(
        prompt="cat", negative_prompt="", sampler="Euler", steps=steps, guidance_scale=7, seed=seed, width=size,
        height=size, api_name="/txt2img",
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while job.status().code.name not in ("PROGRESS", "ITERATING") and time.monotonic() < deadline:
        time.sleep(0.05)
    return job


def load(path: str) -> np.ndarray:
    """The RGB pixels of an image file the API returned."""
    return np.asarray(Image.open(path).convert("RGB"))


# The page ---------------------------------------------------------------------------------------------------------


def open_tab(page: Page, name: str) -> Locator:
    """Select a tab and return its panel: Gradio shows only the selected tab's panel."""
    tab = page.get_by_role("tab", name=name, exact=True)
    tab.click()
    expect(tab).to_have_attribute("aria-selected", "true")
    return page.get_by_role("tabpanel").filter(visible=True)


def shapes_run(shapes: ModelManager, folder: Path, steps: int) -> Path:
    """An Explain run of the bundled model (VAE factor 4, `shapes`: conftest's manager), saved as a replayable file
    in `folder`."""
    request = GenerationRequest(prompt="a large red circle on the left", sampler="Euler", steps=steps, seed=1)
    return save_run(explain(shapes, request), folder / f"shapes-{steps}-steps.safetensors")
