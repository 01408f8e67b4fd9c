"""The worker side of the `ray` executor: a Ray Serve deployment whose replicas each own one `ModelManager` on their
device and run the jobs that the front end (sdplay/runtime/ray_executor.py) sends them, streaming their previews back.

Operators who prefer Ray's own CLI deploy it with
`serve run --name sdplay sdplay.runtime.ray_worker:app model=... workers=N`.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JOB_ENDED, JobSpec, Raised, portable

if TYPE_CHECKING:
    import torch

    from sdplay.runtime.catalog import ModelSettings
    from sdplay.runtime.models import LoadedModel, MemoryOptions, ModelManager

APP_NAME = "sdplay"  # the Serve application's name: a front end started with --ray-address looks for it
DEPLOYMENT = "Worker"
ROOT = Path(__file__).resolve().parents[2]
RAY_MISSING = (
    "--executor ray needs Ray Serve, an optional dependency: pip install -r requirements-ray.txt "
    "(or pip install 'ray[serve]')."
)


def ray_serve() -> tuple[Any, Any]:
    """The `ray` and `ray.serve` modules, imported on first use: sdplay runs without them, and says how to install
    them when `--executor ray` asks for them."""
    try:
        import ray
        import ray.exceptions
        import ray.serve.exceptions
        from ray import serve
    except ImportError:
        raise UserError(RAY_MISSING) from None
    return ray, serve


@dataclass(frozen=True)
class ModelSource:
    """What `ModelManager.load` was given: every job carries it, and a replica serving another model loads it first,
    so that a switch reaches every replica on its next job."""

    source: str
    config: str | None = None

    def absolute(self) -> ModelSource:
        """Local paths made absolute: a replica does not run in this process's working folder."""

        def resolved(path: str | None) -> str | None:
            return str(Path(path).expanduser().resolve()) if path and Path(path).expanduser().exists() else path

        return ModelSource(resolved(self.source) or self.source, resolved(self.config))


@dataclass(frozen=True)
class WorkerOptions:
    """How each replica builds its model manager (app.py's --device, --dtype, --offline and memory flags) and how many
    torch threads it runs on (CPU replicas; None leaves torch's default)."""

    device: str | None = None
    dtype: str | None = None
    offline: bool = False
    memory: MemoryOptions | None = None
    threads: int | None = None


@dataclass(frozen=True)
class Placed:
    """The first item of every job's stream: the replica that runs it (and its process), for Stop and the tests."""

    replica: str
    pid: int


@dataclass(frozen=True)
class ModelDescription:
    """A loaded model without its weights: what the front end needs to know of it (sizes, tokenizer, settings) and
    nothing it would have to hold in memory. The weights stay on the replicas.

    `modules` gives each network's class and config; `weightless()` builds them on the meta device (no memory),
    so that every `LoadedModel` property the UI reads (`native_size`, `is_inpainting`, `allows_lcm`,
    `parameter_bytes`, the tokenizer, the explain captions' numbers) works as it does on a loaded one.
    """

    name: str
    source: str
    config: str | None
    modules: dict[str, tuple[type, Any]]  # name -> (class, config): vae, text_encoder, unet
    tokenizer: Any
    scheduler: Any
    scheduler_config: dict[str, Any]
    latent_rgb: torch.Tensor
    settings: ModelSettings
    device: str  # the replicas' device type and dtype, for the status line
    dtype: torch.dtype

    @classmethod
    def of(cls, manager: ModelManager) -> ModelDescription:
        import torch

        model = manager.model
        modules = {
            name: (type(module), module.config)
            for name, module in model.pipe.components.items()
            if isinstance(module, torch.nn.Module)
        }
        pipe = model.pipe
        return cls(
            model.name, model.source, model.config, modules, pipe.tokenizer, pipe.scheduler, model.scheduler_config,
            model.latent_rgb.cpu(), model.settings, manager.device.type, manager.dtype,
        )  # fmt: skip

    def weightless(self, loaded_by: str | None = None) -> LoadedModel:
        """The model as a `LoadedModel` whose networks live on the meta device: its facts without its weights."""
        from sdplay.runtime.models import LoadedModel, weightless_pipeline

        pipe = weightless_pipeline(self.modules, self.tokenizer, self.scheduler, self.dtype)
        return LoadedModel(
            self.name, self.source, self.config, pipe, self.scheduler_config, self.latent_rgb, self.settings, loaded_by
        )


class Worker:
    """One replica: a model manager on this replica's device (its GPU, or CPU threads), loaded with `model` at start.

    Ray Serve sends it at most one request at a time (`max_ongoing_requests=1`): a replica is one job slot, like the
    local executor's one model.
    """

    def __init__(self, options: WorkerOptions, model: ModelSource) -> None:
        import torch

        from sdplay.runtime.composition import local_manager
        from sdplay.runtime.models import MemoryOptions

        if options.threads:
            torch.set_num_threads(options.threads)
        memory = options.memory or MemoryOptions()
        self.manager = local_manager(options.device, options.dtype, offline=options.offline, memory=memory)
        self.manager.load(model.source, config=model.config)
        # The job thread runs torch on the replica's threads; the threads that pickle previews, on one.
        self.manager.executor.threads.own_torch_threads()
        _, serve = ray_serve()
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # not in a Serve replica (a test that builds one in process)
            self.replica = f"process-{os.getpid()}"

    def describe(self, model: ModelSource, allow_local: bool) -> ModelDescription | Raised:
        """Load `model` if this replica serves another (as the web UI's model box may: `allow_local`), then
        describe it; an error comes back as a `Raised`, as in a job's stream."""
        try:
            self._serve(model, allow_local)
            return ModelDescription.of(self.manager)
        except Exception as error:
            return Raised(portable(error))

    async def run(self, job: JobSpec, model: ModelSource | None) -> AsyncIterator[Any]:
        """Run `job` on `model`: yield a `Placed`, then its step updates (`needs_sending` says which), then the
        result or a `Raised`.

        An async generator, because that is what Ray Serve cancels: when the front end cancels the request (Stop,
        or its client gone), Serve raises `CancelledError` at the `await` here, and the job's cancel flag ends it
        after the step it is in. A sync generator would run in a thread that Serve cannot reach, to its end.
        """
        yield Placed(self.replica, os.getpid())
        try:
            await asyncio.to_thread(self._serve, model, True)  # the front end checked it when it was chosen
        except Exception as error:
            yield Raised(portable(error))
            return
        running = self.manager.executor.start(job)
        sent = -math.inf  # when the latest item went
        try:
            while (item := await asyncio.to_thread(running.updates.get)) is not JOB_ENDED:
                if needs_sending(item, time.monotonic() - sent):
                    sent = time.monotonic()
                    yield item
        finally:
            # The job thread runs the next job only once this one has ended, so there is nothing to wait for here.
            running.cancel.set()

    def _serve(self, model: ModelSource | None, allow_local: bool) -> None:
        """Load `model` unless it is the one loaded (None: keep the one loaded)."""
        current = self.manager.model
        if model is not None and (current.source, current.config) != (model.source, model.config):
            self.manager.load(model.source, config=model.config, allow_local=allow_local)


def needs_sending(item: Any, since_sent: float) -> bool:
    """Whether a job's item goes to the front end, `since_sent` seconds after the previous one: every item but step
    updates; of those, the ones with previews or a stop, and progress alone at the previews' pace. Each item sent
    costs the replica CPU and the GIL that the job's own Python code needs (about 0.1 s of a 20-step CPU job when
    every step's update went), and a progress bar needs no more."""
    from sdplay.runtime.generate import PREVIEW_EVERY, StepUpdate

    if not isinstance(item, StepUpdate):
        return True
    return bool(item.previews) or item.stopped or since_sent >= PREVIEW_EVERY


def deployment(workers: int, options: WorkerOptions, model: ModelSource, gpus: float = 0):
    """The Serve application of `workers` replicas of `Worker` (each with `gpus` GPUs, or `options.threads` CPUs)."""
    _, serve = ray_serve()
    actor = {
        "num_cpus": 1 if gpus else options.threads or 1,
        "num_gpus": gpus,
        # A local Ray instance starts its workers elsewhere: they find sdplay where this process found it.
        "runtime_env": {
            "env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        },
    }
    return serve.deployment(
        Worker,
        name=DEPLOYMENT,
        num_replicas=workers,
        max_ongoing_requests=1,  # one job per replica; the others wait in Serve's queue
        ray_actor_options=actor,
        logging_config={"enable_access_log": False},
    ).bind(options, model.absolute())


def app(args: dict[str, str]):
    """The application builder for
    `serve run --name sdplay sdplay.runtime.ray_worker:app model=PATH_OR_HUB_ID workers=N`; further keys: config,
    device, dtype, offline (1), threads, gpus (per replica: 1 for one GPU each)."""
    known = {"model", "config", "workers", "device", "dtype", "offline", "threads", "gpus"}
    if unknown := set(args) - known:
        raise ValueError(f"unknown arguments {', '.join(sorted(unknown))}: use {', '.join(sorted(known))}")
    options = WorkerOptions(
        device=args.get("device"),
        dtype=args.get("dtype"),
        offline=args.get("offline") == "1",
        threads=int(args["threads"]) if "threads" in args else None,
    )
    model = ModelSource(args.get("model", str(ROOT / "assets" / "shapes")), args.get("config"))
    return deployment(int(args.get("workers", 1)), options, model, float(args.get("gpus", 0)))
