"""The model manager: loads one Stable Diffusion model, shares its weights across tasks and jobs, and says which
jobs may run at once.

It owns all accelerator state. Nothing else in sdplay keeps a pipeline.
"""

import copy
import gc
import itertools
import json
import re
import struct
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path, PurePath
from typing import Any, Protocol

import diffusers
import psutil
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdplay.runtime.catalog import ModelSettings, model_settings
from sdplay.runtime.downloads import Report, fetch_model
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobControl, JobRunner, JobThreads
from sdplay.runtime.previews import fit_latent_rgb
from sdplay.runtime.request import Task
from sdplay.runtime.samplers import AUTOMATIC, build_scheduler, resolve

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_HUB_NAME = 96  # the Hub's limit on a user, organisation or repository name
MAX_PATH_CHARS = 1024  # far more than a model's path needs; Linux refuses over 255 bytes a folder, 4096 in all
PICKLE_SUFFIXES = {".bin", ".ckpt", ".pt", ".pth", ".pkl"}
DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
DTYPES |= {"float32": torch.float32, "fp32": torch.float32}
# The pipeline class of each task view. Named here, not looked up by diffusers' AutoPipelineFor*: importing those
# imports every pipeline diffusers has, about a second of every start-up, to map a class to its task variant.
VIEWS: dict[Task, type[DiffusionPipeline]] = {
    Task.TXT2IMG: StableDiffusionPipeline,
    Task.IMG2IMG: StableDiffusionImg2ImgPipeline,
    Task.INPAINT: StableDiffusionInpaintPipeline,
}


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, or the best one here: CUDA, then Apple MPS, then the CPU."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise UserError(f"Unknown device {requested!r}: use cpu, cuda, cuda:N or mps.") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU here.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    """fp16 on GPUs (half the memory, tensor cores), fp32 on the CPU (fp16 matmuls are slow or missing there)."""
    if requested:
        if requested not in DTYPES:
            raise UserError(f"Unknown dtype {requested!r}: use float16, bfloat16 or float32.")
        return DTYPES[requested]
    return torch.float32 if device.type == "cpu" else torch.float16


def check_safetensors(path: Path) -> None:
    """Refuse anything that is not a safetensors file, judged by its header: pickle checkpoints can run code."""
    with path.open("rb") as f:
        head = f.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        valid = 0 < size <= min(100_000_000, path.stat().st_size - 8)
        header = f.read(size) if valid else b""
    try:
        valid = valid and isinstance(json.loads(header), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        valid = False
    if not valid:
        raise UserError(
            f"{path.name} is not a safetensors file. sdplay loads only .safetensors weights: pickle checkpoints "
            "(.ckpt, .bin, .pt) can run arbitrary code when loaded. Convert it to safetensors first."
        )


def check_source_name(source: str, allow_local: bool) -> None:
    """Refuse a model name that is neither a Hub id nor (if `allow_local`) a plausible path, before it reaches the
    filesystem or the Hub: a 5000-character name made the filesystem raise "File name too long"."""
    if HUB_ID.fullmatch(source) and all(len(part) <= MAX_HUB_NAME for part in source.split("/")):
        return
    fits = len(source) <= MAX_PATH_CHARS and all(len(part.encode()) <= 255 for part in PurePath(source).parts)
    if fits and "\0" not in source:
        if allow_local:
            return
        if len(source) <= 2 * MAX_HUB_NAME + 1:
            raise UserError("Local paths can only be given on the command line (--model); here, use a Hub id.")
    raise UserError(
        f"That is not a model name ({len(source)} characters): give a Hub id, org/name, each part at most "
        f"{MAX_HUB_NAME} letters, digits, '-', '_' or '.'" + (", or a path to a model." if allow_local else ".")
    )


def check_diffusers_folder(folder: Path) -> None:
    """A diffusers folder must have a model_index.json and safetensors weights only."""
    if not (folder / "model_index.json").is_file():
        raise UserError(f"{folder} is not a diffusers model folder (it has no model_index.json).")
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [p for p in sub.iterdir() if p.is_file()]
        pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
        weights = [p for p in files if p.suffix == ".safetensors"]
        if pickles and not weights:
            raise UserError(
                f"{sub.name}/ holds only pickle weights ({', '.join(pickles)}). sdplay loads only safetensors: "
                "pickle files can run arbitrary code when loaded."
            )
        for path in weights:
            check_safetensors(path)


@dataclass
class LoadedModel:
    """One loaded model: the base pipeline whose modules every task view shares."""

    name: str
    source: str
    config: str | None
    pipe: StableDiffusionPipeline
    scheduler_config: dict[str, Any]
    latent_rgb: torch.Tensor  # the fitted latent -> RGB preview map (see previews.py)
    settings: ModelSettings  # what the model works best with (see catalog.py)
    loaded_by: str | None = None  # who switched to it from the web UI; None: the command line
    loaded_at: datetime = field(default_factory=lambda: datetime.now().astimezone())
    fast_unet: UNet2DConditionModel | None = None  # the few-step UNet of `settings.fast`, which the LCM sampler runs

    @property
    def native_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    @property
    def is_inpainting(self) -> bool:
        """Dedicated inpainting checkpoints take 9 input channels: latents, mask and masked-image latents."""
        return self.pipe.unet.config.in_channels == 9

    @property
    def allows_lcm(self) -> bool:
        """LCM-distilled models carry a guidance embedding (time_cond_proj_dim) or ship an LCM scheduler."""
        distilled = self.pipe.unet.config.get("time_cond_proj_dim") is not None
        return distilled or self.settings.fast is not None or type(self.pipe.scheduler).__name__ == "LCMScheduler"

    @property
    def parameter_bytes(self) -> int:
        modules = [m for m in self.pipe.components.values() if isinstance(m, torch.nn.Module)]
        modules += [self.fast_unet] if self.fast_unet is not None else []
        return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


@dataclass(eq=False)
class Job:
    """A job using the model; `cancel` is checked between denoising steps."""

    owner: str | None
    cancel: threading.Event = field(default_factory=threading.Event)
    alone: bool = True  # it has the model to itself (see `ModelManager.job`)


@dataclass(frozen=True)
class MemoryOptions:
    """Low-memory switches; they exist for CUDA only (elsewhere they either fail or do nothing)."""

    cpu_offload: bool = False
    vae_tiling: bool = False
    attention_slicing: bool = False


class SwitchPolicy(StrEnum):
    """Which models the web UI may switch to (`--models`): switching changes the model for everyone."""

    ANY = "any"  # the listed models and any Hub id (downloaded on first use)
    CATALOG = "catalog"  # only the listed models: the catalog's and the command line's
    LOCKED = "locked"  # none: the model given at start-up serves until the server stops


@dataclass(frozen=True)
class ModelSwitch:
    """The web UI's rules for switching models: the models it lists, which it accepts, and who may switch.

    `models` maps the names shown to their sources, so that server paths are never shown; `admin`, if set, is the
    only logged-in user who may switch.
    """

    models: dict[str, str]
    policy: SwitchPolicy = SwitchPolicy.ANY
    admin: str | None = None

    @property
    def open(self) -> bool:
        """Whether anyone at all may switch here (the Load button is shown)."""
        return self.policy != SwitchPolicy.LOCKED

    def source(self, name: str, user: str | None) -> tuple[str, bool]:
        """What `user` (None: not logged in) choosing `name` loads: its source and whether it may be a local path.
        A `UserError` says why not."""
        name = name.strip()
        if not self.open:
            raise UserError("This server serves one model only: switching models is turned off.")
        if self.admin is not None and user != self.admin:
            raise UserError("Only the server's admin may switch models here (everyone shares the model).")
        if not name:
            raise UserError("Choose a model first.")
        if name in self.models:
            return self.models[name], True
        if self.policy == SwitchPolicy.CATALOG:
            raise UserError(f"This server loads only the models in the list: {', '.join(self.models)}.")
        return name, False


def weightless_pipeline(
    modules: dict[str, tuple[type, Any]], tokenizer: Any, scheduler: Any, dtype: torch.dtype
) -> StableDiffusionPipeline:
    """A pipeline whose networks (`modules`: name -> class and config) live on the meta device: every fact a page
    reads of a model (sizes, configs, tokenizer, parameter counts) without its weights, built in milliseconds."""
    with torch.device("meta"):
        # diffusers models are built from their config dict, transformers models from their config object.
        built = {
            name: cls.from_config(config) if isinstance(config, dict) else cls(config)
            for name, (cls, config) in modules.items()
        }
    for module in built.values():
        torch.nn.Module.to(module, dtype)  # not diffusers' `to`, which warns about casting loaded weights
    return StableDiffusionPipeline(
        **built, tokenizer=tokenizer, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip


def folder_facts(folder: Path, dtype: torch.dtype) -> StableDiffusionPipeline:
    """A Stable Diffusion folder's pipeline from its configs and tokenizer, its weights on the meta device."""
    scheduler_class = json.loads((folder / "model_index.json").read_text())["scheduler"][1]
    if not re.fullmatch(r"\w+Scheduler", scheduler_class) or not hasattr(diffusers, scheduler_class):
        raise UserError(f"{folder.name}'s model_index.json names no diffusers scheduler.")
    modules = {
        "unet": (UNet2DConditionModel, UNet2DConditionModel.load_config(folder / "unet")),
        "vae": (AutoencoderKL, AutoencoderKL.load_config(folder / "vae")),
        "text_encoder": (CLIPTextModel, CLIPTextConfig.from_pretrained(folder / "text_encoder")),
    }
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    scheduler = getattr(diffusers, scheduler_class).from_pretrained(folder / "scheduler")
    return weightless_pipeline(modules, tokenizer, scheduler, dtype)


class WorkerPool(JobRunner, Protocol):
    """An executor whose workers each hold the model (the `ray` executor): the manager loads and stops through it."""

    def load(self, source: str, config: str | None, allow_local: bool, by: str | None) -> LoadedModel: ...

    def interrupt(self, owner: str) -> bool: ...

    def describe(self) -> str: ...


class ModelManager:
    """Loads a model once, hands out task views that share its weights, and runs jobs on its job threads: as many
    at once as it has threads (`jobs`), except the jobs that need the model alone.

    With a `pool` (the `ray` executor) the pool's workers hold the weights and run the jobs, each with a manager of
    its own; this one then keeps the model's facts only (its configs, tokenizer and settings, weights on the meta
    device: see ray_executor.py), which is all the front end reads.
    """

    def __init__(
        self,
        device: str | None = None,
        dtype: str | None = None,
        offline: bool = False,
        memory: MemoryOptions = MemoryOptions(),
        pool: WorkerPool | None = None,
        jobs: int = 1,
    ) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.offline = offline
        self.memory = memory
        if self.device.type != "cuda" and memory != MemoryOptions():
            raise UserError("CPU offload, VAE tiling and attention slicing are CUDA-only options.")
        self._model: LoadedModel | None = None
        self._jobs: set[Job] = set()  # the jobs running now
        self._changed = threading.Condition()  # a job started or ended; guards `_jobs` and `_waiting_alone`
        self._waiting_alone = 0  # jobs waiting to have the model alone: no new job starts before them
        self._loaded = threading.Event()  # clear while a model loads in the background (`load_later`)
        self._loaded.set()
        self._load_failed: str | None = None  # which background load failed, for the status line
        # Each job thread's own module tree of a shared UNet (and its own tokenizer): see `pipeline`.
        self._own: dict[tuple[int, int], Any] = {}
        # The threads of this process that touch the weights: loads run on them, and a local executor's jobs.
        self.threads = JobThreads(jobs)
        self.pool = pool
        # What runs jobs on this model (here, in a ZeroGPU worker, or on a Ray pool; it holds the ETA memory): given by
        # whoever composes the app (sdplay/runtime/composition.py), never built here. A pool is its own executor.
        self.executor: JobRunner | None = pool

    @property
    def jobs_elsewhere(self) -> bool:
        """ZeroGPU, Ray: only the workers have the GPU, not this process."""
        return self.executor is not None and self.executor.name != "local"

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            raise UserError("No model is loaded. Pick one in the Model box and press Load.")
        return self._model

    def load(
        self,
        source: str,
        config: str | None = None,
        allow_local: bool = True,
        by: str | None = None,
        progress: Report | None = None,
    ) -> LoadedModel:
        """Load `source` (Hub id, diffusers folder or .safetensors file with a local `config` folder); `by` names
        who asked, for the status line (None: the command line). `allow_local=False` (the web UI) refuses paths on
        this disk.

        A Hub model's files download first, on the calling thread, after a disk check (see downloads.py), with
        reports to `progress` (None: huggingface_hub's bars on the console); then it loads from the cache.

        The new model is checked, downloaded, built and moved to the device before the old one is released, so a
        load that fails leaves the serving model untouched. The price: memory holds both models for a moment (SD
        1.5 in fp16 is ~2 GB); a machine too small for that fails the load and keeps serving the old model.
        """
        source = source.strip()
        if self.pool is not None:  # the workers load it (and download it): this process keeps its facts
            with self._using(JobControl(), alone=True):
                self._model = self.pool.load(source, config, allow_local, by)
                return self._model
        load = self._loader(source, config, allow_local, progress)

        def switch() -> LoadedModel:
            with self._using(JobControl(), alone=True):  # after the jobs that use the old model
                model = self._prepare(source, config, load(), by)
                self._serve(model)
                return model

        # On a job thread, behind the jobs queued before it: the threads that run the model are the only ones that
        # touch its weights (see JobThreads).
        return self.threads.call(switch)

    def load_later(self, source: str) -> LoadedModel:
        """Start loading `source`, a local diffusers folder, on a job thread, and return at once its facts: its
        configs, settings and tokenizer, weights on the meta device, which is all a page needs to be built. Until
        the weights are in, every job waits for them (`job`) and the status line says so; a failed load leaves no
        model, and the status line says why. For start-up: the page answers while the model loads."""
        check_source_name(source, allow_local=True)
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise UserError(f"{source!r} is not a diffusers folder: only a folder loads in the background.")
        check_diffusers_folder(folder)
        try:
            pipe = folder_facts(folder, self.dtype)
        except (OSError, ValueError, KeyError) as error:  # a config missing or unreadable
            raise UserError(f"{folder.name} is not a complete diffusers folder: {type(error).__name__}.") from error
        settings = model_settings(source, folder, pipe.scheduler)
        no_previews_yet = torch.zeros(pipe.vae.config.latent_channels + 1, 3)  # fitted on the weights: jobs wait
        facts = LoadedModel(folder.name, source, None, pipe, dict(pipe.scheduler.config), no_previews_yet, settings)
        self._model, self._load_failed = facts, None
        self._loaded.clear()

        def load() -> None:
            try:
                self.load(source)
            except Exception as error:  # the page is up: it says so, and the model box can load another
                print(f"sdplay: loading {source} failed: {error!r}", file=sys.stderr, flush=True)
                # Its message may name server paths: the page says where to look instead.
                self._model, self._load_failed = None, f"{facts.name} failed to load: the server's log says why"
            finally:
                self._loaded.set()

        self.threads.run(load)
        return facts

    @property
    def loading(self) -> bool:
        """Whether a model loads in the background now (`load_later`)."""
        return not self._loaded.is_set()

    def _loader(self, source: str, config: str | None, allow_local: bool, progress: Report | None = None):
        """Check the source before anything is loaded (and download a Hub model's files, reporting to `progress`),
        and return the function that loads it."""
        check_source_name(source, allow_local)
        common = dict(dtype=self.dtype, safety_checker=None, requires_safety_checker=False)
        path = Path(source).expanduser()
        looks_local = path.suffix in PICKLE_SUFFIXES | {".safetensors"} or source.startswith(("/", ".", "~"))
        if path.exists() or looks_local or not HUB_ID.fullmatch(source):
            if not allow_local:
                raise UserError("Local paths can only be given on the command line (--model); here, use a Hub id.")
            if path.is_dir():
                check_diffusers_folder(path)
                return lambda: StableDiffusionPipeline.from_pretrained(
                    path, use_safetensors=True, local_files_only=True, **common
                )
            if path.is_file():
                check_safetensors(path)
                if config is not None and not (Path(config) / "model_index.json").is_file():
                    raise UserError(f"--config {config} is not a diffusers folder (it has no model_index.json).")
                return lambda: StableDiffusionPipeline.from_single_file(
                    path,
                    config=config,
                    local_files_only=self.offline or config is not None,
                    **common,
                )
            raise UserError(
                f"No model at {source!r}: give a Hub id (org/name), a diffusers folder or a .safetensors file."
            )

        # Here, on the caller's thread, where its progress display works; None: the Hub could not be asked, and
        # diffusers looks in the cache, as offline.
        folder = None if self.offline else fetch_model(source, progress)

        def from_hub() -> StableDiffusionPipeline:
            try:
                return StableDiffusionPipeline.from_pretrained(
                    folder or source,
                    use_safetensors=True,
                    local_files_only=self.offline or folder is not None,
                    **common,
                )
            except (OSError, ValueError) as error:
                # The library's own message is long and can name cache folders on the server: log it, show ours.
                print(f"sdplay: loading {source} failed: {error!r}", file=sys.stderr, flush=True)
                where = "this machine's cache (offline)" if self.offline else "the Hugging Face Hub"
                raise UserError(
                    f"Could not load {source!r} from {where}: check the model id and the internet connection. "
                    "Without internet, start sdplay with --model PATH (a local diffusers folder or .safetensors file)."
                ) from error

        return from_hub

    def _prepare(self, source: str, config: str | None, pipe: StableDiffusionPipeline, by: str | None) -> LoadedModel:
        pipe.set_progress_bar_config(disable=True)
        if self.memory.cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        if self.memory.vae_tiling:
            pipe.vae.enable_tiling()
        if self.memory.attention_slicing:
            pipe.enable_attention_slicing()
        folder = Path(source).expanduser()
        name = folder.name if folder.exists() else source
        settings = model_settings(source, folder if folder.is_dir() else config and Path(config), pipe.scheduler)
        fast_unet = None
        if settings.fast is not None and folder.is_dir():  # checked with the folder: safetensors only
            fast_unet = UNet2DConditionModel.from_pretrained(
                folder / settings.fast.unet, use_safetensors=True, local_files_only=True, dtype=self.dtype
            ).to(self.device)
        elif settings.fast is not None:  # a single file's --config folder: no place for a second UNet
            settings = replace(settings, fast=None)
        return LoadedModel(
            name, source, config, pipe, dict(pipe.scheduler.config), fit_latent_rgb(pipe.vae), settings, by,
            fast_unet=fast_unet,
        )  # fmt: skip

    def _serve(self, model: LoadedModel) -> None:
        """Serve `model` from now on, and give the old one's memory back. One assignment: a page being built or a
        handler reading `model` meanwhile (another thread) finds the old model or the new one, never none."""
        released, self._model = self._model is not None, model
        self._own.clear()
        if not released:
            return  # nothing to give back, and a full collection right after start-up's imports costs ~0.3 s
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def pipeline(self, task: Task, sampler: str, schedule: str = AUTOMATIC) -> DiffusionPipeline:
        """A view of the loaded model for `task`, with its own fresh scheduler; it shares every weight tensor. The LCM
        sampler runs the model's few-step UNet, if it has one (`ModelSettings.fast`).

        Its UNet and tokenizer are the calling thread's own: a module tree over the shared weights, made once per
        thread, so that the hooks and attention processors a job attaches (previews, Explain's recording) reach no
        job running beside it, and a tokenizer whose settings no other thread changes mid-call.
        """
        model = self.model
        scheduler = build_scheduler(sampler, model.scheduler_config, schedule)
        unet = model.fast_unet if model.fast_unet is not None and resolve(sampler)[0] == "LCM" else model.pipe.unet
        # The base pipeline's own modules, as loaded (no safety checker). Not `VIEWS[task].from_pipe`: it casts the
        # shared modules to float32 unless given a dtype, and given one it warns and takes ~30 ms instead of ~1.
        components = model.pipe.components | {
            "scheduler": scheduler, "unet": self._own_copy(unet), "tokenizer": self._own_copy(model.pipe.tokenizer)
        }  # fmt: skip
        view = VIEWS[task](**components, requires_safety_checker=False)
        view.set_progress_bar_config(disable=True)
        return view

    def _own_copy(self, shared: Any) -> Any:
        """The calling thread's copy of `shared`: its own objects over the same weight tensors."""
        key = (threading.get_ident(), id(shared))
        if key not in self._own:
            tensors = (
                itertools.chain(shared.parameters(), shared.buffers()) if isinstance(shared, torch.nn.Module) else ()
            )
            self._own[key] = copy.deepcopy(shared, memo={id(tensor): tensor for tensor in tensors})
        return self._own[key]

    @contextmanager
    def job(self, control: JobControl = JobControl(), alone: bool = True) -> Iterator[Job]:
        """Use the model for one job, once a model loading in the background is in; `interrupt(control.owner)`
        from another thread sets its cancel flag.

        `alone` waits until no other job runs, and holds the next ones back until it ends: for what changes the
        shared modules (a load, the Inside views' hooks on the model itself). A job that uses only `pipeline`'s views
        runs beside the others (`alone=False`).
        """
        self._loaded.wait()
        with self._using(control, alone) as job:
            yield job

    @contextmanager
    def _using(self, control: JobControl, alone: bool) -> Iterator[Job]:
        job = Job(control.owner, control.cancel or threading.Event(), alone)
        with self._changed:
            self._waiting_alone += alone
            try:
                self._changed.wait_for(
                    lambda: not self._jobs if alone else not self._waiting_alone and not self._alone()
                )
            finally:
                self._waiting_alone -= alone
            self._jobs.add(job)
        try:
            yield job
        finally:
            with self._changed:
                self._jobs.discard(job)
                self._changed.notify_all()

    @property
    def running_jobs(self) -> int:
        """How many jobs use the model now."""
        return len(self._jobs)

    def _alone(self) -> bool:
        return any(job.alone for job in self._jobs)

    def interrupt(self, owner: str | None) -> bool:
        """Ask the owner's running jobs to stop at the next step; only their owner may. No owner (a request without a
        session) stops nothing, and a job without an owner can only be stopped through its own cancel flag."""
        if self.pool is not None:  # the job runs on a worker: the pool stops it there
            return owner is not None and self.pool.interrupt(owner)
        with self._changed:
            owned = [job for job in self._jobs if owner is not None and job.owner == owner]
        for job in owned:
            job.cancel.set()
        return bool(owned)

    def status(self) -> str:
        """One line for the UI: model, device, dtype and memory in use."""
        rss = psutil.Process().memory_info().rss / 2**20
        if self._model is None:
            failed = f" ({self._load_failed})" if self._load_failed else ""
            return f"No model loaded{failed} · {self.device.type} · RAM {rss:.0f} MB"
        model = self._model
        where = f"{self.device.type} {str(self.dtype).removeprefix('torch.')}"
        if self.loading:
            return (
                f"Loading {model.name} on {where} … the page works meanwhile, and a job waits for it · RAM {rss:.0f} MB"
            )
        line = f"{model.name} · {self.pool.describe() if self.pool is not None else where}"
        line += f" · weights {model.parameter_bytes / 2**20:.1f} MB · RAM {rss:.0f} MB"
        if self.device.type == "cuda" and not self.jobs_elsewhere:
            line += f" · VRAM {torch.cuda.memory_allocated(self.device) / 2**20:.0f} MB"
        if model.loaded_by is not None:  # switched from the web UI: everyone sharing the server should know
            line += f" · Loaded by {model.loaded_by} at {model.loaded_at:%H:%M %Z}"
        return line


def shared_weight_ratio(manager: ModelManager) -> float:
    """Unique parameter bytes over all task views divided by one view's: 1.00 means the views share every tensor."""

    def tensors(pipe: DiffusionPipeline) -> dict[int, int]:
        modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
        return {p.data_ptr(): p.numel() * p.element_size() for m in modules for p in m.parameters()}

    views = [tensors(manager.pipeline(task, "Euler")) for task in Task]
    union: dict[int, int] = {}
    for view in views:
        union |= view
    return sum(union.values()) / sum(views[0].values())
