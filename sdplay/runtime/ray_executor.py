"""The `ray` executor: the front end's side of a pool of Ray Serve replicas (sdplay/runtime/ray_worker.py) that run the
jobs, one per replica at a time, on one machine's GPUs or a cluster's.

The UI, the API and Explain see an executor like the local one: `run(job)` streams a job's updates and result.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobSpec, Raised
from sdplay.runtime.ray_worker import (
    APP_NAME,
    DEPLOYMENT,
    ModelDescription,
    ModelSource,
    Placed,
    WorkerOptions,
    deployment,
    ray_serve,
)

if TYPE_CHECKING:
    from sdplay.runtime.generate import StepUpdate
    from sdplay.runtime.models import LoadedModel

WORKER_NICENESS = "RAY_worker_niceness"  # Ray's setting (read from the environment when Ray starts)
WORKER_LOST = (
    "The worker running this job stopped before it finished ({reason}). Ray is starting a new one: "
    "run the job again in a moment."
)


@dataclass
class _Running:
    """A job on the pool, as the front end follows it."""

    owner: str | None
    response: Any  # Ray Serve's DeploymentResponseGenerator
    placed: Placed | None = None
    shown: StepUpdate | None = None  # its latest update with previews: what a Stop keeps
    stopped: bool = False  # Stop cancelled it (not a closed page or a lost worker)


class RayExecutor:
    """Sends each job to a replica of the sdplay Serve application through a `DeploymentHandle` and streams back
    what the replica's own (local) executor yields.

    - Concurrency: a replica takes one job at a time (`max_ongoing_requests=1`), so the pool runs `workers` jobs at
      once; the front end's GPU queue admits that many (`build_demo(workers=...)`).
    - Stop: `interrupt(owner)` cancels that session's request; Serve raises `CancelledError` in the replica that
      runs it, which sets that job's cancel flag (ray_worker.Worker.run). Other jobs are untouched.
    - Models: every job carries the model the front end serves (`ModelSource`); a replica serving another loads it
      before the job, so a switch reaches every replica on its next job, and jobs already running finish on the
      model they started with. This process keeps the model's facts only (`ModelDescription.weightless`).
    - Uploads: a request's image path is sent as the file's bytes, since a replica on another machine cannot read
      this one's files. Results come back as CPU objects (PIL images, CPU tensors), so Explain replays need no
      worker.
    """

    name = "ray"

    def __init__(self, handle: Any, workers: int) -> None:
        self.handle = handle
        self.workers = workers
        self.seconds_per_step: dict[tuple[str, int, int, int], float] = {}
        self.serving: ModelSource | None = None  # set by `load`
        self.described: ModelDescription | None = None
        self._running: list[_Running] = []
        self._lock = threading.Lock()

    @classmethod
    def start(cls, workers: int | None, address: str | None, options: WorkerOptions, model: ModelSource) -> RayExecutor:
        """Start a local Ray instance (`address` None), or join the cluster at `address` ("auto": the one started
        on this machine with `ray start`). On a cluster already serving an sdplay application (deployed with
        `serve run`), use its replicas; else deploy `workers` replicas (default: one per GPU, else one), each with
        `options` and `model` loaded."""
        ray, serve = ray_serve()
        if not ray.is_initialized() and address is None:
            start_local_ray()
        elif not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, logging_level="WARNING")
            except ConnectionError as error:
                raise UserError(
                    f"Could not join the Ray cluster at {address} ({error}). Is it running (ray status)? If Ray "
                    "says the authentication token is missing, set RAY_AUTH_MODE=token."
                ) from None
        if address is not None and APP_NAME in serve.status().applications:
            return cls(serve.get_app_handle(APP_NAME), replicas(serve))
        gpus = int(ray.cluster_resources().get("GPU", 0))
        on_gpus = gpus > 0 and (options.device or "cuda").startswith("cuda")
        if options.device and options.device.startswith("cuda") and not gpus:
            raise UserError("--device cuda was asked for, but the Ray cluster has no GPU.")
        workers = workers or gpus or 1
        if not on_gpus and options.threads is None:  # CPU replicas share the cluster's cores
            options = replace(options, threads=max(1, int(ray.cluster_resources().get("CPU", 1)) // workers))
        if on_gpus:
            options = replace(options, device="cuda")  # each replica sees its own GPU as cuda:0
        serve.start(proxy_location="Disabled")  # no HTTP: jobs come through handles only
        handle = serve.run(deployment(workers, options, model, 1 if on_gpus else 0), name=APP_NAME, route_prefix=None)
        return cls(handle, workers)

    def load(self, source: str, config: str | None, allow_local: bool, by: str | None) -> LoadedModel:
        """Have a replica load `source` (checked there as `ModelManager.load` checks it), and serve it from now on;
        return it without its weights. The other replicas load it on their next job."""
        model = ModelSource(source, config).absolute() if allow_local else ModelSource(source, config)
        described = self._call("describe", model, allow_local)
        self.serving, self.described = ModelSource(described.source, described.config), described
        return described.weightless(by)

    def run(self, job: JobSpec) -> Iterator[Any]:
        """Yield the job's `StepUpdate`s, then its result; raise what it raised (`Cancelled` after a Stop, a
        `UserError` if its worker died). Closing the iterator cancels the job on its replica."""
        ray, serve = ray_serve()
        job = replace(job, request=with_upload_bytes(job.request))
        response = self.handle.options(stream=True).run.remote(job, self.serving)
        running = _Running(job.owner, response)
        with self._lock:
            self._running.append(running)
        ended = False
        try:
            for item in streamed(response):
                if isinstance(item, Placed):
                    running.placed = item
                    continue
                if isinstance(item, Raised):
                    ended = True
                    raise item.error
                if getattr(item, "previews", None):
                    running.shown = item
                yield item
            ended = True
        except serve.exceptions.RequestCancelledError:
            ended = True
            if not running.stopped:
                raise
            from sdplay.runtime.generate import Cancelled

            # The replica ended the job after its step; what it made there is not sent after a cancel, so the
            # latest preview shown is the one kept.
            raise Cancelled(replace(running.shown, stopped=True) if running.shown else None) from None
        except ray.exceptions.RayError as error:
            ended = True
            raise UserError(worker_error(error)) from None
        finally:
            with self._lock:
                self._running.remove(running)
            if not ended:  # closed by its consumer (Gradio's cancel, a page gone): stop it on its replica
                response.cancel()

    def interrupt(self, owner: str) -> bool:
        """Stop `owner`'s running jobs after their current step; False if it has none."""
        with self._lock:
            jobs = [running for running in self._running if running.owner == owner]
        for running in jobs:
            running.stopped = True
            running.response.cancel()
        return bool(jobs)

    def placements(self) -> dict[str | None, Placed | None]:
        """Each running job's owner and the replica that runs it (None while it waits for one)."""
        with self._lock:
            return {running.owner: running.placed for running in self._running}

    def describe(self) -> str:
        """The status line's part about where jobs run."""
        where = f"{self.described.device} {str(self.described.dtype).removeprefix('torch.')}" if self.described else ""
        busy = len(self.placements())
        return f"ray: {self.workers} worker{'s' if self.workers != 1 else ''} {where} · {busy} busy"

    def _call(self, method: str, *args: Any) -> Any:
        """A unary call to a replica: its result, or what it raised."""
        ray, _ = ray_serve()
        try:
            response = getattr(self.handle, method).remote(*args)
            if running_event_loop():  # Ray refuses to block a loop's thread: wait on another one
                with ThreadPoolExecutor(1) as waiter:
                    result = waiter.submit(response.result).result()
            else:
                result = response.result()
        except ray.exceptions.RayError as error:
            raise UserError(worker_error(error)) from None
        if isinstance(result, Raised):
            raise result.error
        return result


def start_local_ray(**options: Any) -> None:
    """Start a Ray instance on this machine (`options` go to `ray.init`), whose workers run at the usual priority.

    Ray starts its workers at nice 15, below every other process: on a busy machine the replicas, which do the work,
    would wait for the front end and anything else running (on 2 cores with 20 clients, a third of the throughput
    lost). A cluster's priority is set where it starts (README, Scaling out).
    """
    ray, _ = ray_serve()
    os.environ.setdefault(WORKER_NICENESS, "0")  # the instance reads it as it starts; an operator's choice stays
    ray.init(include_dashboard=False, logging_level="WARNING", **options)


def streamed(response: Any) -> Iterator[Any]:
    """The items of a streaming Ray response, raising what it raises. From a thread that runs an asyncio event loop
    (a notebook's, Playwright's), which Ray refuses to block, they are read on another thread."""
    if not running_event_loop():
        yield from response
        return
    items: queue.Queue = queue.Queue()
    done = object()

    def read() -> None:
        try:
            for item in response:
                items.put(item)
        except BaseException as error:  # raised again in the reading thread
            items.put(_Failure(error))
        items.put(done)

    threading.Thread(target=read, name="sdplay-ray-stream", daemon=True).start()
    while (item := items.get()) is not done:
        if isinstance(item, _Failure):
            raise item.error
        yield item


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def running_event_loop() -> bool:
    """Whether this thread runs an asyncio event loop (an async caller, or Playwright's sync API in a script)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def replicas(serve: Any) -> int:
    """How many replicas the sdplay application has (those starting included)."""
    states = serve.status().applications[APP_NAME].deployments[DEPLOYMENT].replica_states
    return max(1, sum(states.values()))


def with_upload_bytes(request: Any) -> Any:
    """`request` with an upload's path replaced by the file's bytes (`open_image` takes either): a replica on another
    machine cannot read this one's files. A file already gone stays a path, and the job says it is gone."""
    image = getattr(request, "image", None)
    if not isinstance(image, str | Path):
        return request
    try:
        return replace(request, image=Path(image).read_bytes())
    except OSError:
        return request


def worker_error(error: Exception) -> str:
    """What a user hears when the pool failed a job (not the job itself): a replica died, or Serve refused."""
    ray, _ = ray_serve()
    if isinstance(error, ray.exceptions.RayActorError):
        return WORKER_LOST.format(reason=type(error).__name__)
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"The worker pool could not run this job ({type(error).__name__}: {first[:200]}). Try again in a moment."
