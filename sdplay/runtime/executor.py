"""The one executor boundary: the function that runs a job (a `generate` or `explain` call) and streams its updates.

Three executors run it, named and chosen at start-up (`--executor`): `local` runs the job on one of the long-lived
job threads of this process; `zerogpu` wraps that one function with `@spaces.GPU`, which runs it in a forked worker
on a ZeroGPU Space and pickles what crosses: the `JobSpec` in; each `StepUpdate`, the result and any error out; `ray`
sends the `JobSpec` to a pool of Ray Serve replicas, each running it with a local executor of its own
(sdplay/runtime/ray_executor.py).
Importing this module imports no torch, so that app.py can import `spaces` before anything touches CUDA.
"""

from __future__ import annotations

import math
import os
import pickle
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from sdplay.runtime.request import Limits

# What a GPU job may take, for ZeroGPU's scheduler (shorter asks get better queue priority):
# seconds per denoising step per megapixel per image, with CFG, for a UNet of SD 1.5's size (860 M parameters),
# scaled by the loaded UNet's size. An estimate, not a measurement (no GPU was at hand): published SD 1.5 fp16 eager
# figures are ~55 steps/s at 512² on an H100 (0.07 s per megapixel-step); we ask for 3.5× that to cover a ZeroGPU
# slice of an H200, the first call's CUDA start and Explain's capture. To measure it, run `python bench/gpu.py` on
# the GPU (seconds per image / 20 steps / 0.262 megapixels) and keep a margin of 2× over the figure.
SECONDS_PER_MEGAPIXEL_STEP = 0.25
SD15_UNET_PARAMETERS = 860e6
MIN_GPU_SECONDS = 10  # the text encoder, the VAE decode and moving the weights in dominate short jobs
MAX_GPU_SECONDS = 120  # ZeroGPU's quota is per user and day: never reserve more than two minutes for one image job

# The executors, by the names `--executor` takes.
EXECUTORS = ("local", "zerogpu", "ray")
T = TypeVar("T")
R = TypeVar("R", contravariant=True)  # a job's request
Result = TypeVar("Result", covariant=True)  # what a job returns


@dataclass(frozen=True)
class JobControl:
    """How a running job is watched and stopped: the session that owns it (only it may stop it through the model
    manager), the flag that ends it after the step it is in, and who hears each of its updates."""

    owner: str | None = None
    cancel: threading.Event | None = None
    on_step: Callable[[Any], None] | None = None


class Job(Protocol[R, Result]):
    """The one job contract: a plain synchronous function of CPU objects that runs the model (`generate`, Explain's
    `explain`, the Inside views' model calls ...). `manager` is the process's model manager (typed loosely here: the
    executor sits below it); the job holds the manager's lock while it uses the model."""

    def __call__(self, manager: Any, request: R, limits: Limits, control: JobControl) -> Result: ...


@dataclass(frozen=True)
class JobSpec(Generic[R, Result]):
    """A job as data, picklable: `work` (pickled by its name) run on `request`, whose type is the job's own."""

    work: Job[R, Result]
    request: R
    limits: Limits
    owner: str | None = None  # the session that may stop it (`ModelManager.interrupt`)


@dataclass(frozen=True)
class Raised:
    """An error the job raised, as an item of the stream: ZeroGPU passes only `gr.Error` across as itself."""

    error: BaseException


class JobRunner(Protocol):
    """What the UI, the API and Explain use of an executor; they never know which one it is."""

    name: str  # one of EXECUTORS
    workers: int  # how many jobs it runs at once: the size of the front end's GPU queue
    seconds_per_step: dict[tuple[str, int, int, int], float]  # the ETA memory (see `Executor`)

    def run(self, job: JobSpec) -> Iterator[Any]:
        """Yield the job's `StepUpdate`s, then its result; raise what it raised. Closing it stops the job."""
        ...


@dataclass(frozen=True)
class RunningJob:
    """A job handed to the job threads: its `updates` (each `StepUpdate`, then the result or a `Raised`, then
    `JOB_ENDED`), the flag that stops it after the step it is in, and whether it has finished."""

    updates: queue.Queue
    cancel: threading.Event
    finished: threading.Event


JOB_ENDED = object()  # the last item of `RunningJob.updates`


def zero_gpu() -> ModuleType | None:
    """The `spaces` package on a ZeroGPU Space (`SPACES_ZERO_GPU` set and the package installed), else None.

    Off Spaces the package is optional and not installed by requirements.txt.
    """
    if not os.environ.get("SPACES_ZERO_GPU"):
        return None
    try:
        import spaces
    except ImportError:
        return None
    return spaces


class JobThreads:
    """The long-lived daemon threads that run the work they are given, in the order given: the only threads of the
    process that run the model (loading it included). `count` of them run jobs at once, each on its share of the
    CPU's torch threads (`torch_threads`), fixed for the thread's life: a job computes with the same thread count
    whether it runs alone or beside others, so the same request gives the same pixels either way.

    libgomp gives each thread that runs a parallel torch op a pool of its own, and once the pools hold more threads
    than there are cores it all but stops spinning between ops. On the bundled model a second pool (the model loaded
    on the main thread, the jobs run here) made every image ~30% slower, plain diffusers in the same process too; a
    new thread per job starts cold every time (a new malloc arena, a new pool). With one torch thread each, the job
    threads make no pools at all. Daemon: quitting never waits.
    """

    def __init__(self, count: int = 1) -> None:
        if count < 1:
            raise ValueError("at least one job thread")
        self.count = count
        self.torch_threads = 0  # set when the threads start: the process's torch threads, shared out
        self._work: queue.Queue[Callable[[], None]] = queue.Queue()
        self._starting = threading.Lock()
        self._threads: list[threading.Thread] = []

    def run(self, work: Callable[[], None]) -> None:
        """Queue `work` (which must not raise) behind what the threads were given before."""
        self._start()
        self._work.put(work)

    def _start(self) -> None:
        """Start the threads on first use (creating them starts nothing), and again in a forked process (ZeroGPU's
        worker), which inherits the thread objects but not the threads."""
        with self._starting:
            if self._threads and all(thread.is_alive() for thread in self._threads):
                return
            import torch

            self.torch_threads = max(1, torch.get_num_threads() // self.count)
            self._work = queue.Queue()
            counted = threading.Barrier(self.count + 1)  # every thread has set its torch threads
            self._threads = [
                threading.Thread(target=self._loop, args=(self._work, self.torch_threads, counted), daemon=True,
                                 name=f"sdplay-jobs-{number}")
                for number in range(self.count)
            ]  # fmt: skip
            for thread in self._threads:
                thread.start()
            counted.wait()  # before the caller sets other threads' count (`own_torch_threads`)

    def call(self, work: Callable[[], T]) -> T:
        """Run `work` on a job thread (at once when called from one), wait for it, and return what it returns or
        raise what it raised."""
        if threading.current_thread() in self._threads:
            return work()
        finished: queue.Queue[tuple[bool, Any]] = queue.Queue()

        def run() -> None:
            try:
                finished.put((True, work()))
            except BaseException as error:  # raised again in the caller's thread
                finished.put((False, error))

        self.run(run)
        returned, value = finished.get()
        if not returned:
            raise value
        return value

    def own_torch_threads(self) -> int:
        """Make the job threads the only threads of the process that run torch ops on several threads, and return
        how many each has. It waits for nothing they run (a model loading in the background).

        torch fixes a thread's count when the thread first uses torch, from the latest `torch.set_num_threads`:
        after this, threads that start using torch (a server's request handlers drawing Explain views, reading
        uploads) run it on one, so that libgomp keeps one pool. For a server: it changes the whole process.
        """
        import torch

        self._start()  # each thread sets its own count as it starts, from the share computed here
        torch.set_num_threads(1)
        return self.torch_threads

    @staticmethod
    def _loop(work: queue.Queue[Callable[[], None]], torch_threads: int, counted: threading.Barrier) -> None:
        import torch

        torch.set_num_threads(torch_threads)  # this thread's, before its first op
        # torch initialises a thread's count at its first op, from the process's latest count: do it now, while
        # that is still ours (the caller of `_start` waits for this before it sets another).
        torch.get_num_threads()
        counted.wait()
        while True:
            work.get()()


class Executor:
    """Runs jobs on one model manager's model, as many at once as it has job threads, and remembers each model's
    speed for the ETA.

    `gpu` is the decorator factory that wraps the boundary (`spaces.GPU` on ZeroGPU, a test's simulation of it);
    None runs it in this process.
    """

    def __init__(self, manager: Any, gpu: Callable[..., Callable] | None = None) -> None:
        self.manager = manager  # a `ModelManager`: its threads run the jobs, and it says which may share the model
        self.name = "local" if gpu is None else "zerogpu"
        self.threads: JobThreads = manager.threads
        self.workers = self.threads.count  # how many jobs run at once: the size of the front end's GPU queue
        # Seconds per step of the last run with each (model, width, height, batch): the ETA shown before a first step.
        self.seconds_per_step: dict[tuple[str, int, int, int], float] = {}
        self._boundary = self.execute if gpu is None else gpu(duration=self.gpu_seconds)(self.execute)

    def run(self, job: JobSpec) -> Iterator[Any]:
        """Yield the job's `StepUpdate`s, then its result; raise what it raised. Closing the iterator (a UI's Stop)
        stops the job within a step."""
        with closing(self._boundary(job)) as items:  # closed at once on Stop, not whenever it is collected
            for item in items:
                if isinstance(item, Raised):
                    raise item.error
                yield item

    def execute(self, job: JobSpec) -> Iterator[Any]:
        """The boundary: run `job` on a job thread, yielding each `StepUpdate`, then the result or a `Raised`.

        Plain CPU objects in and out. Closing it sets the job's cancel flag: the job ends after the step it is in,
        and the model is free again when `close()` returns.
        """
        running = self.start(job)
        try:
            while (item := running.updates.get()) is not JOB_ENDED:
                yield item
        finally:
            running.cancel.set()
            running.finished.wait()

    def start(self, job: JobSpec) -> RunningJob:
        """Queue `job` on the job threads and return at once; its items arrive in `updates`. For callers that cannot
        close a generator from where they wait (a Ray replica, whose waits are asyncio's: see ray_executor.py)."""
        running = RunningJob(queue.Queue(), threading.Event(), threading.Event())

        def work() -> None:
            try:
                control = JobControl(job.owner, running.cancel, running.updates.put)
                running.updates.put(job.work(self.manager, job.request, job.limits, control))
            except BaseException as error:  # handed to the consumer, which raises it
                running.updates.put(Raised(portable(error)))
            finally:
                running.finished.set()
            running.updates.put(JOB_ENDED)

        self.threads.run(work)
        return running

    def gpu_seconds(self, job: JobSpec) -> int:
        """How long `job` may hold a ZeroGPU GPU: steps × megapixels × batch × the model's per-step cost, bounded."""
        request, model = job.request, self.manager.model
        from sdplay.runtime.request import GenerationRequest  # imports torch: not when this module is imported

        if not isinstance(request, GenerationRequest):  # Explain's Decode x̂₀: at most 30 VAE decodes
            return MIN_GPU_SECONDS
        # A size of 0 means the model's own for text-to-image, the input image's (at most max_size) otherwise.
        default = model.native_size if request.task == "txt2img" else job.limits.max_size
        megapixels = (request.width or default) * (request.height or default) / 1e6
        scale = sum(p.numel() for p in model.pipe.unet.parameters()) / SD15_UNET_PARAMETERS
        seconds = request.steps * megapixels * request.batch_size * SECONDS_PER_MEGAPIXEL_STEP * scale
        return min(MAX_GPU_SECONDS, max(MIN_GPU_SECONDS, math.ceil(seconds)))


def portable(error: BaseException) -> BaseException:
    """`error` if it pickles (it crosses ZeroGPU's boundary), else a `RuntimeError` with its class and message."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
