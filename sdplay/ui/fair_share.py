"""A fair share of the GPU queue: a session (a web page, a gradio_client Client) may have one job waiting or running.

Its next job is refused at once, saying where the first one is, so that one student cannot fill everyone's queue.
"""

import asyncio
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio import route_utils
from gradio.server_messages import ProcessCompletedMessage, ProcessStartsMessage

from sdplay.runtime.queue_log import QueueLog
from sdplay.ui.common import from_web_page

# Every request that names no session (a raw HTTP call to /gradio_api/call/<endpoint>) counts as this one session:
# together they hold at most one place in the queue, so a script cannot fill it by leaving the session out.
NO_SESSION = "(no session)"
# gradio_client raises a join refused with HTTP 422 and a validation detail as a ValidationError that carries our
# message, under this name; any other refusal reaches it as a bare status code, or as "Queue is full!".
REFUSAL_NAME = "queue"


@dataclass(frozen=True)
class QueuedJob:
    """An event in Gradio's queue, as much of it as sdplay needs."""

    session: str  # the session that sent it; `NO_SESSION` if it named none
    concurrency_id: str | None  # "gpu" for every event that runs the model
    running: bool
    inputs: list[Any]  # the payload of its inputs: a file input is a dict with the file's "path" on the server


def queued_jobs(demo: gr.Blocks, finished: weakref.WeakSet | None = None) -> list[QueuedJob]:
    """The jobs in `demo`'s queue: those running, then those waiting, in the order they will run; running events in
    `finished` (whose result is already sent) are left out.

    Gradio has no public view of its queue. This is the one place that reads its internals, as Gradio's own hot
    reload does (gradio/utils.py): `Queue.active_jobs` (per worker, None or the list of events it runs),
    `Queue.event_queue_per_concurrency_id` (each with `.queue`, the waiting events in order), and per `Event`:
    `session_hash` (its own `_id` when the request named none), `concurrency_id` and `data.data` (the inputs).
    tests/test_fair_share.py checks these against the installed Gradio. Lists are copied first: the server's event
    loop changes them while another thread (the disk cap's) reads.
    """
    queue = demo._queue
    running = [event for job in list(queue.active_jobs) if job for event in list(job) if event not in (finished or ())]
    waiting = [event for line in list(queue.event_queue_per_concurrency_id.values()) for event in list(line.queue)]

    def job(event, is_running: bool) -> QueuedJob:
        session = NO_SESSION if event.session_hash == event._id else event.session_hash
        inputs = list(event.data.data) if event.data is not None else []
        return QueuedJob(session, event.concurrency_id, is_running, inputs)

    return [job(event, True) for event in running] + [job(event, False) for event in waiting]


def refusal(jobs: list[QueuedJob], session: str | None, concurrency_id: str, web_page: bool) -> str | None:
    """Why a new job of `session` in the `concurrency_id` queue is refused, or None if it may join."""
    session = session or NO_SESSION
    line = [job for job in jobs if job.concurrency_id == concurrency_id]
    waiting = [job for job in line if not job.running]
    own = next((job for job in line if job.session == session), None)
    if own is None:
        return None
    where = "running" if own.running else f"in the queue (position {waiting.index(own) + 1} of {len(waiting)})"
    if session == NO_SESSION:
        return (
            f"Requests without a session share one place in the queue, and it is taken: a job is {where}. "
            "Wait for it to finish, or send a session_hash (gradio_client does)."
        )
    stop = "press Stop" if web_page else "cancel it"
    return f"You already have a job {where}. Wait for it to finish, or {stop}."


def one_job_per_session(demo: gr.Blocks, concurrency_id: str, log: QueueLog | None = None) -> None:
    """Refuse, as it asks to join, a job of a session that already has one waiting or running in `concurrency_id`'s
    queue. Events of other queues pass as they are. Call it after `demo.queue()`. `log` hears when each job of the
    queue joins, starts and ends (the admin's panel).

    Gradio has no public hook at the moment an event joins its queue: an event's `validator` runs there, but per
    event and with its inputs preprocessed, and two joins could pass it at once. So this wraps the queue's `push`
    (what Gradio's /queue/join and /call/<endpoint> routes await) on this one queue, checking and joining under one
    lock so that two requests of a session sent together cannot both get in.
    """
    queue = demo._queue
    push: Callable = queue.push
    joining = asyncio.Lock()
    # Gradio sends a job's result a moment before it takes the job off its worker (`Queue.process_events`): a
    # session that sends its next job as soon as it has the result must not find its last one still counted.
    finished: weakref.WeakSet = weakref.WeakSet()
    send_message: Callable = queue.send_message

    def send_and_note_results(event, message) -> None:
        if isinstance(message, ProcessCompletedMessage):
            finished.add(event)
        if log is not None and event.concurrency_id == concurrency_id:
            if isinstance(message, ProcessStartsMessage):
                log.started(event._id)
            elif isinstance(message, ProcessCompletedMessage):
                log.finished(event._id)
        send_message(event, message)

    async def push_one_per_session(body, request, username):
        try:
            fn = route_utils.get_fn(demo, None, body)
        except Exception:  # an unknown event: Gradio's own push answers it
            return await push(body=body, request=request, username=username)
        if fn.concurrency_id != concurrency_id:
            return await push(body=body, request=request, username=username)
        web_page = from_web_page(request)
        async with joining:
            message = refusal(queued_jobs(demo, finished), body.session_hash, concurrency_id, web_page)
            if message is None:
                at = log.clock() if log is not None else 0.0
                joined = await push(body=body, request=request, username=username)
                if log is not None and joined[0]:
                    log.joined(joined[1], at)
                return joined
        if web_page:  # the page shows an "error" refusal's text as an error toast, as it shows a gr.Error
            return False, message, "error"
        return False, [gr.validate(False, message) | {"parameter_name": REFUSAL_NAME}], "validator_error"

    queue.push = push_one_per_session
    queue.send_message = send_and_note_results
