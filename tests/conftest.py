"""Shared fixtures: tiny random-weight pipelines built in code, a loaded manager, the app on a free port, Chromium.

Nothing here touches the network: models are made on the spot and the app runs with --offline.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from sdplay.runtime.composition import local_manager
from sdplay.runtime.models import ModelManager
from sdplay.runtime.random_models import tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
LOAD_TIMEOUT_MS = 60_000
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_inpaint_model(tmp_path_factory) -> Path:
    return tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-inpainting", inpainting=True)


@pytest.fixture(scope="session")
def manager(tiny_model) -> ModelManager:
    """A manager with the tiny model loaded; tests that switch models make their own."""
    manager = local_manager(device="cpu")
    manager.load(str(tiny_model))
    return manager


@pytest.fixture(scope="session")
def shapes() -> ModelManager:
    """A manager with the bundled shapes model (assets/shapes) loaded, on the CPU; tests must not switch it."""
    manager = local_manager(device="cpu")
    manager.load(str(ROOT / "assets" / "shapes"))
    return manager


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


@pytest.fixture(scope="session")
def app_url(tiny_model) -> Iterator[str]:
    """`python app.py` as a user starts it, on the tiny model and a free port."""
    yield from served_app(tiny_model)


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright. CI installs Chromium, so there a missing one fails."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed: .ci/run installs it with apt-get install chromium.")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield browser
        browser.close()


# Keeps the text of every toast (errors, warnings, infos) the page shows, for the report of a failed test.
RECORD_TOASTS = """
window.sdplayToasts = [];
new MutationObserver(() => {
    for (const toast of document.querySelectorAll(".toast-body")) {
        const text = toast.innerText.trim();
        if (text && !window.sdplayToasts.includes(text)) window.sdplayToasts.push(text);
    }
}).observe(document, { subtree: true, childList: true });
"""
FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED] = True
    return report


@pytest.fixture
def page_errors() -> list[str]:
    return []


@pytest.fixture
def page(request: pytest.FixtureRequest, browser: Browser, app_url: str, page_errors: list[str]) -> Iterator[Page]:
    """A fresh page on the app whose uncaught exceptions and console errors go to `page_errors`.

    Console warnings are allowed: Gradio's image editor logs PixiJS deprecation and WebGL performance warnings.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(RECORD_TOASTS)
    page = context.new_page()
    page.on("pageerror", lambda error: page_errors.append(f"page error: {error}"))

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            page_errors.append(f"console error: {message.text} ({message.location})")

    page.on("console", on_console)
    # The page's load event (layout.py's `opened`) applies the loaded model's settings when it differs from the one the
    # app was built for, as after a test that switched models: wait for it, or it may overwrite what a test types.
    with page.expect_response(lambda response: response.url.endswith("/run/predict"), timeout=LOAD_TIMEOUT_MS):
        page.goto(app_url, timeout=LOAD_TIMEOUT_MS)
    expect(page.get_by_role("tab", name="Text-to-Image", exact=True)).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    yield page
    if request.node.stash.get(FAILED, False):  # Gradio's toasts go after seconds: say what they said
        print("Toasts shown:", page.evaluate("window.sdplayToasts"))
    context.close()
