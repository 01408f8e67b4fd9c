"""Shared fixtures: tiny random-weight pipelines built in code, a loaded manager, the app on a free port, Chromium.

Nothing here touches the network: models are made on the spot and the app runs with --offline. The plain helpers
that test modules share (paths, timeouts, the app's start, its API, the page's tabs) are in tests/helpers.py.
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from sdplay.explain import export
from sdplay.runtime.composition import local_manager
from sdplay.runtime.models import ModelManager
from sdplay.runtime.random_models import tiny_pipeline
from tests.helpers import LOAD_TIMEOUT_MS, SHAPES, served_app

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
    manager.load(str(SHAPES))
    return manager


@pytest.fixture
def no_tensor_is_built(monkeypatch):
    """Fail if the file gets past its header: no tensor may be built from a file that breaks the contract."""

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was loaded")

    monkeypatch.setattr(export, "safe_open", refuse)
    monkeypatch.setattr(export, "load_file", refuse, raising=False)


@pytest.fixture(scope="session")
def app_url(tiny_model) -> Iterator[str]:
    """`python app.py` as a user starts it, on the tiny model and a free port; two jobs at once, as on a 2-core CPU
    by default (stated, so that the queue tests know it on any machine)."""
    yield from served_app(tiny_model, "--jobs", "2")


@pytest.fixture(scope="session")
def client(app_url) -> Client:
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that drives Chromium carries the `browser` marker, so that `-m "not browser"` leaves out them all."""
    unmarked = [
        item.nodeid
        for item in items
        if "browser" in getattr(item, "fixturenames", ()) and item.get_closest_marker("browser") is None
    ]
    if unmarked:
        raise pytest.UsageError(f"mark these Chromium tests with @pytest.mark.browser: {', '.join(unmarked)}")


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


@pytest.fixture
def torch_threads_kept() -> Iterator[None]:
    """For tests that run a training script: its `--threads` sets torch's thread count for the whole process, and a
    thread started later (a forked ZeroGPU worker's job thread) would compute with another count than the manager's
    job thread, and differ in the last bits."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
