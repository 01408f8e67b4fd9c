"""One job per session in the GPU queue: the rule (plain), Gradio's queue as sdplay reads it, the API and the page."""

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import gradio as gr
import pytest
import requests
from gradio.server_messages import ProcessCompletedMessage
from gradio_client import Client
from gradio_client.exceptions import ValidationError
from playwright.sync_api import Page, expect

from sdplay.runtime.queue_log import QueueLog, QueueSummary
from sdplay.ui.fair_share import NO_SESSION, QueuedJob, one_job_per_session, queued_jobs, refusal
from tests.helpers import GENERATE_TIMEOUT_MS, PROMPT, free_port, long_job, open_tab, txt2img

RUNNING = "You already have a job running. Wait for it to finish, or cancel it."


def job(session: str, running: bool = False, concurrency_id: str = "gpu") -> QueuedJob:
    return QueuedJob(session, concurrency_id, running, [])


def test_a_session_with_a_job_waiting_or_running_is_refused_with_where_it_is():
    jobs = [job("a", running=True), job("b"), job("x", concurrency_id="other"), job("c"), job(NO_SESSION)]
    assert refusal(jobs, "a", "gpu", web_page=False) == RUNNING
    assert refusal(jobs, "c", "gpu", web_page=True) == (
        "You already have a job in the queue (position 2 of 3). Wait for it to finish, or press Stop."
    )
    assert refusal(jobs, "d", "gpu", web_page=True) is None  # other sessions are not affected
    assert refusal(jobs, "x", "gpu", web_page=True) is None  # nor jobs of another queue
    assert refusal([], "a", "gpu", web_page=True) is None


def test_requests_without_a_session_share_one_place():
    message = refusal([job("a", running=True), job(NO_SESSION)], None, "gpu", web_page=False)
    assert message == (
        "Requests without a session share one place in the queue, and it is taken: a job is in the queue "
        "(position 1 of 1). Wait for it to finish, or send a session_hash (gradio_client does)."
    )
    assert refusal([job("a", running=True)], None, "gpu", web_page=False) is None


@pytest.fixture(scope="module")
def gated_demo():
    """A small app in this process whose GPU jobs wait for `release`, with the rule applied: the queue can be read."""
    release = threading.Event()

    def wait(text: str) -> str:
        release.wait(30)
        return text

    with gr.Blocks() as demo:
        text = gr.Textbox()
        gr.Button().click(wait, text, text, api_name="wait", concurrency_id="gpu", concurrency_limit=1)
        gr.Button().click(lambda t: t, text, text, api_name="echo")  # not in the GPU queue
    demo.queue(max_size=32)
    demo.log = QueueLog()  # what the admin's panel reads
    one_job_per_session(demo, "gpu", demo.log)
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True)
    yield demo, f"http://127.0.0.1:{port}/", release
    release.set()
    demo.close()


def test_gradio_queue_as_sdplay_reads_it(gated_demo):
    """Fails if Gradio changes the internals that `queued_jobs` reads (see its docstring)."""
    demo, url, release = gated_demo
    release.clear()
    before = demo.log.summary(0)
    first, second = Client(url, verbose=False), Client(url, verbose=False)

    def joined(count: int) -> None:  # submit() joins from a thread of its own: wait, so that the order is known
        deadline = time.monotonic() + 20
        while len(queued_jobs(demo)) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    running = first.submit("one", api_name="/wait")
    joined(1)
    waiting = second.submit("two", api_name="/wait")
    joined(2)
    raw = requests.post(f"{url}gradio_api/call/wait", json={"data": ["three"]}, timeout=10)
    assert raw.status_code == 200, raw.text
    assert queued_jobs(demo) == [
        QueuedJob(first.session_hash, "gpu", True, ["one"]),
        QueuedJob(second.session_hash, "gpu", False, ["two"]),
        QueuedJob(NO_SESSION, "gpu", False, ["three"]),
    ]
    assert first.predict("free", api_name="/echo") == "free"  # other queues are not gated
    with pytest.raises(ValidationError, match=re.escape("- queue: " + RUNNING)):
        first.predict("again", api_name="/wait")
    again = requests.post(f"{url}gradio_api/call/wait", json={"data": ["four"]}, timeout=10)
    assert again.status_code == 422 and "Requests without a session share one place" in again.text
    release.set()
    assert running.result(timeout=20) == "one" and waiting.result(timeout=20) == "two"
    assert requests.get(f"{url}gradio_api/call/wait/{raw.json()['event_id']}", timeout=20).text.endswith(
        'data: ["three"]\n\n'
    )
    assert queued_jobs(demo) == []
    # The admin's panel heard the three jobs of the GPU queue join, start and end (the echo is another queue's);
    # the two that waited behind the first waited while the test above ran.
    after = demo.log.summary(0)
    assert (after.finished - before.finished, after.started - before.started) == (3, 3)
    assert after.p95_wait > 0.05


def test_joins_of_one_session_sent_together_get_one_place(gated_demo):
    demo, url, release = gated_demo
    release.clear()
    fn_index = next(index for index, fn in demo.fns.items() if fn.api_name == "wait")
    body = {"data": ["x"], "fn_index": fn_index, "session_hash": "one-session"}
    barrier = threading.Barrier(8)

    def join() -> int:
        barrier.wait()
        return requests.post(f"{url}gradio_api/queue/join", json=body, timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(lambda _: join(), range(8)))
    release.set()
    assert codes == [200] + [422] * 7
    deadline = time.monotonic() + 20
    while queued_jobs(demo) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_session_may_send_its_next_job_as_soon_as_it_has_the_result(gated_demo):
    """Gradio sends a job's result a moment before it takes the job off its worker (longer on a busy server): the
    rule must not count a job whose result is out, or a script (or a quick hand) that retries at once is refused."""
    demo, url, release = gated_demo
    release.clear()
    fn_index = next(index for index, fn in demo.fns.items() if fn.api_name == "wait")
    body = {"data": ["x"], "fn_index": fn_index, "session_hash": "quick"}
    assert requests.post(f"{url}gradio_api/queue/join", json=body, timeout=10).status_code == 200
    deadline = time.monotonic() + 20
    while not any(demo._queue.active_jobs) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert requests.post(f"{url}gradio_api/queue/join", json=body, timeout=10).status_code == 422  # still running
    (event,) = next(job for job in demo._queue.active_jobs if job)
    demo._queue.send_message(event, ProcessCompletedMessage(output={"data": ["x"]}, success=True))  # the moment
    assert requests.post(f"{url}gradio_api/queue/join", json=body, timeout=10).status_code == 200
    release.set()
    while queued_jobs(demo) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_one_job_per_session_through_the_api(app_url):
    """The app runs two jobs at once (`--jobs 2`): two sessions' long jobs run, a third session's waits."""
    own, other, third = (Client(app_url, verbose=False) for _ in range(3))
    running = [long_job(own), long_job(other, seed=6)]
    waiting = third.submit(
        prompt="a red cat", negative_prompt="", sampler="Euler", steps=2, guidance_scale=7, seed=8, width=64,
        height=64, api_name="/txt2img",
    )  # fmt: skip
    deadline = time.monotonic() + 20  # until the third session's job has joined the queue
    while waiting.status().code.name != "IN_QUEUE" and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(ValidationError, match=re.escape(RUNNING)):
        txt2img(own)
    with pytest.raises(ValidationError, match=re.escape("You already have a job in the queue (position 1 of 1).")):
        txt2img(third)
    for job in running:
        job.cancel()
    assert waiting.result(timeout=120)[2] == 8  # the third session's job was accepted and ran
    assert txt2img(own)[2] == 5  # and each session may send its next job once the first is done


@pytest.mark.browser
def test_the_page_says_so_when_its_second_job_is_refused(page: Page, page_errors: list[str]) -> None:
    panel = open_tab(page, "Text-to-Image")
    panel.get_by_label("Prompt", exact=True).fill(PROMPT)
    for name, value in {"Steps": "150", "Width": "512", "Height": "512"}.items():  # slow enough
        panel.get_by_label(f"number input for {name}").fill(value)
    panel.get_by_role("button", name="Generate").click()
    expect(panel.get_by_role("progressbar", name=re.compile(r"^Step \d+\/150"))).to_be_visible(
        timeout=GENERATE_TIMEOUT_MS
    )
    explain = open_tab(page, "Explain")
    explain.get_by_label("Prompt", exact=True).fill(PROMPT)
    explain.get_by_role("button", name="Explain", exact=True).click()
    message = "You already have a job running. Wait for it to finish, or press Stop."
    expect(page.get_by_text(message, exact=True)).to_be_visible(timeout=10_000)
    panel = open_tab(page, "Text-to-Image")
    panel.get_by_role("button", name="Stop").click()
    stopped = panel.locator(".results").get_by_role("img", name=re.compile(r"^Stopped at step \d+ of 150$"))
    expect(stopped).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    # The browser logs the refused join (HTTP 400) as a failed resource; nothing else may go wrong.
    refused = [error for error in page_errors if "400 (Bad Request)" in error and "/queue/join" in error]
    assert len(refused) == 1 and len(page_errors) == 1, page_errors


def test_the_queue_log_counts_the_last_minute_and_its_p95_wait():
    now = [0.0]
    log = QueueLog(clock=lambda: now[0])
    for number in range(20):  # job n joins at n and starts n/10 s later: waits 0.0 ... 1.9 s
        log.joined(f"job {number}", at=float(number))
        now[0] = number + number / 10
        log.started(f"job {number}")
        log.finished(f"job {number}")
    log.started("early")  # the queue may start a job before its join is heard: it still counts, from its join
    log.joined("early", at=now[0] - 5.0)
    log.joined("waiting", at=now[0])
    summary = log.summary(1)  # 21 waits: the 20th smallest is the p95 (nearest rank)
    assert (summary.finished, summary.waiting, summary.started) == (20, 1, 21)
    assert summary.p95_wait == pytest.approx(1.9)
    assert summary.describe().endswith("20 jobs/min · 1 waiting now · p95 wait 1.9 s (21 started)")
    now[0] += 45.0  # jobs 0-5 ended more than a minute ago; of the 15 waits left, the largest is the p95
    summary = log.summary(0)
    assert (summary.finished, summary.started, summary.p95_wait) == (14, 15, pytest.approx(5.0))
    now[0] += 60.0
    assert log.summary(0) == QueueSummary(finished=0, waiting=0, p95_wait=None, started=0)
    assert log.summary(0).describe().endswith("no job started")
