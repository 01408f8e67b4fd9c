"""Gradio's cache folder under the byte cap (sdplay/ui/cache.py): oldest first, never a queued job's input; and
`python app.py --max-disk` keeps its own cache folder under the cap."""

import os
import re
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import gradio as gr
import numpy as np
import pytest
import requests
from gradio_client import Client, handle_file
from playwright.sync_api import Page, expect

from sdplay.runtime.disk import folder_size
from sdplay.runtime.images import GONE_MESSAGE
from sdplay.ui.cache import CacheCap
from sdplay.ui.fair_share import one_job_per_session, queued_jobs
from tests.helpers import GENERATE_TIMEOUT_MS, PROMPT, SERVED_PNG, free_port, open_tab, served_app, txt2img


def backdate(folder: Path, seconds: float = 3600) -> None:
    """Make every file under `folder` look `seconds` old: older than the grace that protects fresh files."""
    then = time.time() - seconds
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


@pytest.fixture
def cached_demo(tmp_path_factory):
    """A small app in this process with a cache folder of its own: /draw writes a PNG, /wait holds an upload in the
    GPU queue until `release` is set. For one test only: apps started meanwhile would inherit the folder."""
    folder, release = tmp_path_factory.mktemp("gradio-cache"), threading.Event()

    def draw(seed: float) -> np.ndarray:
        return np.random.default_rng(int(seed)).integers(0, 255, (32, 32, 3), dtype=np.uint8)

    def wait(path: str) -> str:
        release.wait(30)
        return Path(path).read_text()

    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(folder))  # read as Blocks are made, and as uploads are checked
        with gr.Blocks() as demo:
            seed, image, upload, text = gr.Number(), gr.Image(format="png"), gr.File(), gr.Textbox()
            gr.Button().click(draw, seed, image, api_name="draw")
            gr.Button().click(wait, upload, text, api_name="wait", concurrency_id="gpu", concurrency_limit=1)
        demo.queue()
        one_job_per_session(demo, "gpu")
        port = free_port()
        demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
        yield demo, f"http://127.0.0.1:{port}/", folder, release
        release.set()
        demo.close()


def test_the_oldest_files_go_but_not_a_queued_jobs_input(cached_demo, tmp_path):
    demo, url, folder, release = cached_demo
    client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
    for seed in range(4):
        client.predict(seed, api_name="/draw")
    inputs = []
    for name in ("running", "waiting"):
        (tmp_path / f"{name}.txt").write_text(name * 1000)
        inputs.append(Client(url, verbose=False).submit(handle_file(str(tmp_path / f"{name}.txt")), api_name="/wait"))
        deadline = time.monotonic() + 20
        while len(queued_jobs(demo)) < len(inputs) and time.monotonic() < deadline:
            time.sleep(0.02)
    backdate(folder)
    pngs = [path for path in folder.rglob("*.png")]
    assert len(pngs) == 4

    cleaning = CacheCap(demo, max_bytes=1).clean()

    assert sorted(path.name for path in folder.rglob("*") if path.is_file()) == ["running.txt", "waiting.txt"]
    assert set(cleaning.deleted) >= {str(path) for path in pngs} and cleaning.bytes_after == 2 * 7000
    assert not any(str(path) in files for files in demo.temp_file_sets for path in pngs)  # and Gradio forgot them
    release.set()
    assert [job.result(timeout=20) for job in inputs] == ["running" * 1000, "waiting" * 1000]


@pytest.fixture(scope="module")
def capped_app(tiny_model, tmp_path_factory):
    """`python app.py --max-disk 30KB` with a cache folder of its own."""
    folder = tmp_path_factory.mktemp("capped-cache")
    app = served_app(tiny_model, "--max-disk", "30KB", log_name="capped.log")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(folder))
        url = next(app)  # starts the app with this environment
    yield url, folder
    next(app, None)  # and stops it


def test_the_app_keeps_its_cache_under_max_disk(capped_app, tmp_path):
    url, folder = capped_app
    client = Client(url, verbose=False, download_files=str(tmp_path))
    for seed in range(6):
        txt2img(client, seed=seed)
    assert folder_size(folder) > 30_000  # six 64×64 PNGs of noise
    backdate(folder)
    deadline = time.monotonic() + 15  # the cap is applied every 5 s
    while folder_size(folder) > 30_000 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert 0 < folder_size(folder) <= 30_000
    assert txt2img(client, seed=99)[2] == 99  # and it serves on


def test_the_app_has_a_cache_folder_of_its_own(app_url, client):
    """Without GRADIO_TEMP_DIR, app.py gives Gradio a folder no other app shares: the cap counts all of it."""
    txt2img(client, seed=7)
    folder = Path(tempfile.gettempdir()) / f"sdplay-gradio-{urlparse(app_url).port}"
    assert any(folder.rglob("*.png"))


def test_an_input_deleted_from_the_cache_is_a_clear_error(app_url):
    """A page may still hold an upload that the cap has deleted since; using it says so."""
    folder = Path(tempfile.gettempdir()) / f"sdplay-gradio-{urlparse(app_url).port}"
    gone = {
        "path": str(folder / "0123abcd" / "image.png"),
        "orig_name": "image.png",
        "meta": {"_type": "gradio.FileData"},
    }
    parameters = requests.get(f"{app_url}gradio_api/info", timeout=10).json()["named_endpoints"]["/img2img"]
    values = {"prompt": "a red cat", "steps": 2, "image": gone}
    data = [values.get(p["parameter_name"], p["parameter_default"]) for p in parameters["parameters"]]
    started = requests.post(f"{app_url}gradio_api/call/img2img", json={"data": data}, timeout=10)
    stream = requests.get(f"{app_url}gradio_api/call/img2img/{started.json()['event_id']}", timeout=60).text
    assert "event: error" in stream and GONE_MESSAGE in stream and str(folder) not in stream


@pytest.mark.browser
def test_sending_a_result_deleted_since_says_so(page: Page, page_errors: list[str]) -> None:
    panel = open_tab(page, "Text-to-Image")
    panel.get_by_label("Prompt", exact=True).fill(PROMPT)
    panel.get_by_role("button", name="Generate").click()
    final = panel.locator(".results").get_by_role("img", name=re.compile(r"^Seed \d+$"))
    expect(final).to_have_attribute("src", SERVED_PNG, timeout=GENERATE_TIMEOUT_MS)
    final.evaluate("img => img.decode()")  # loaded: deleting it mid-transfer would be a different test
    Path(unquote(final.get_attribute("src").split("/gradio_api/file=")[1])).unlink()  # as the cap does
    panel.get_by_role("button", name="Send to Inpaint").click()
    expect(page.get_by_text(GONE_MESSAGE, exact=True)).to_be_visible(timeout=10_000)
    assert page_errors == []
