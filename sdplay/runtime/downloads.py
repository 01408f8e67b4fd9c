"""Downloading a Hub model before it loads: only the files the loader reads, after a disk check, with progress.

Plain functions over huggingface_hub's public API; the model manager calls `fetch_model` and the UI shows its reports.
"""

import queue
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from sdplay.runtime.errors import UserError

# The folders StableDiffusionPipeline.from_pretrained reads. Not safety_checker: the loader passes None for it (SD
# 1.5's weighs 1.2 GB). image_encoder is optional (IP-Adapter) and read when a repo has one.
COMPONENT_FOLDERS = ("feature_extractor", "image_encoder", "scheduler", "text_encoder", "tokenizer", "unet", "vae")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".pkl", ".msgpack", ".h5", ".onnx", ".pb")
# Left free after a download: a full disk breaks everything else on the server (Gradio's uploads, temp files, logs).
SPARE_BYTES = 1_000_000_000
# How often the caller hears about a download in progress, besides after each file.
REPORT_EVERY_S = 0.25


@dataclass(frozen=True)
class HubFile:
    path: str  # in the repository: "unet/diffusion_pytorch_model.safetensors"
    size: int  # bytes


@dataclass(frozen=True)
class DownloadPlan:
    """What loading `repo` at commit `revision` needs: its `files`, and the `missing` ones not in the cache yet."""

    repo: str
    revision: str
    files: tuple[HubFile, ...]
    missing: tuple[HubFile, ...]

    @property
    def missing_bytes(self) -> int:
        return sum(file.size for file in self.missing)


@dataclass(frozen=True)
class DownloadProgress:
    """One report of a download: `done` of `total` bytes, while `file` downloads."""

    repo: str
    done: int
    total: int
    file: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def describe(self) -> str:
        if self.done >= self.total:
            return f"Downloaded {self.repo} ({size_text(self.total)}); loading it…"
        return f"Downloading {self.repo}: {size_text(self.done)} of {size_text(self.total)}"


Report = Callable[[DownloadProgress], None]


def size_text(size: int) -> str:
    """Bytes as people read them (decimal units, as the Hub shows sizes): "2.1 GB", "335 MB", "12 kB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}" if size < 10 * scale else f"{size / scale:.0f} {unit}"
    return f"{size} bytes"


def _plain_name(name: str, suffix: str) -> bool:
    """Whether `name` ends with `suffix` and names no variant: not "diffusion_pytorch_model.fp16.safetensors"."""
    return name.endswith(suffix) and "." not in name.removesuffix(suffix)


def needed_files(repo: str, sizes: dict[str, int]) -> list[str]:
    """The files of a repository (path -> size) that the loader reads: StableDiffusionPipeline.from_pretrained with
    use_safetensors=True and no variant, as diffusers itself would download them.

    That is model_index.json; every file of a component folder without weights (scheduler, tokenizer); and, of a
    folder with weights, config.json and the safetensors weights without a variant (shards and their index too).
    Never the single-file checkpoints at the top of a repository, pickles, fp16 or EMA variants.
    """
    if "model_index.json" not in sizes:
        raise UserError(f"{repo} is not a diffusers model (it has no model_index.json): sdplay cannot load it.")
    needed = ["model_index.json"]
    for folder in COMPONENT_FOLDERS:
        names = sorted(path.split("/")[1] for path in sizes if path.startswith(f"{folder}/") and path.count("/") == 1)
        if not any(name.endswith(WEIGHT_SUFFIXES) for name in names):
            needed += [f"{folder}/{name}" for name in names]
            continue
        weights = [name for name in names if _plain_name(name, ".safetensors")]
        if not weights:
            raise UserError(
                f"{repo} has no safetensors weights in {folder}/. sdplay loads only safetensors: pickle files can run "
                "arbitrary code when loaded."
            )
        index = [name for name in names if _plain_name(name, ".safetensors.index.json")]
        needed += [f"{folder}/{name}" for name in ["config.json", *index, *weights] if name in names]
    return needed


def plan_download(repo: str) -> DownloadPlan:
    """Ask the Hub which files loading `repo` needs and how large they are, and which of them the cache lacks.

    Raises what huggingface_hub raises when the Hub cannot be asked (a `UserError` if the model does not exist).
    """
    try:
        info = HfApi().model_info(repo, files_metadata=True)
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as error:
        print(f"sdplay: the Hub has no {repo} for us: {error!r}", file=sys.stderr, flush=True)
        raise UserError(
            f"The Hugging Face Hub has no model {repo!r} that sdplay may download (it may be private or gated): "
            "check the model id."
        ) from None
    sizes = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    files = tuple(HubFile(path, sizes[path]) for path in needed_files(repo, sizes))
    missing = tuple(file for file in files if not _cached(repo, file.path, info.sha))
    return DownloadPlan(repo, info.sha, files, missing)


def _cached(repo: str, path: str, revision: str) -> bool:
    return isinstance(try_to_load_from_cache(repo, path, revision=revision), str)


def free_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds `folder`, or would hold it: the cache does not exist before a first use."""
    folder = folder.expanduser().absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_disk_space(plan: DownloadPlan) -> None:
    """Refuse a download that would leave less than `SPARE_BYTES` free on the cache's disk, before it starts."""
    if not plan.missing:
        return  # a model in the cache loads even on a full disk
    free = free_bytes(Path(constants.HF_HUB_CACHE))
    if plan.missing_bytes + SPARE_BYTES > free:
        raise UserError(
            f"{plan.repo} needs {size_text(plan.missing_bytes)} more; this disk has {size_text(free)} free (and "
            f"sdplay keeps {size_text(SPARE_BYTES)} of it free). Free some space, or choose a smaller model."
        )


class _Tally:
    """The bytes a download has written so far, counted from huggingface_hub's progress bars on any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.finished = 0  # bytes of the files done
        self.current = 0  # bytes of the file downloading
        self.file = ""

    def start(self, file: HubFile) -> None:
        with self._lock:
            self.current, self.file = 0, file.path

    def add(self, count: int) -> None:
        with self._lock:
            self.current += count

    def finish(self, file: HubFile) -> None:
        with self._lock:
            self.finished, self.current = self.finished + file.size, 0

    def progress(self, plan: DownloadPlan) -> DownloadProgress:
        with self._lock:
            return DownloadProgress(plan.repo, self.finished + max(self.current, 0), plan.missing_bytes, self.file)

    def bar_class(self) -> type:
        """A class that stands in for the tqdm bar huggingface_hub draws for a file: it passes the bytes on."""
        tally = self

        class BytesWritten:
            # huggingface_hub creates it with tqdm's keywords and calls these; the bytes written to disk are counted
            # once, from update() (update_transfer() also reports the network's bytes, which can differ).
            def __init__(self, *args: object, initial: int = 0, total: int | None = None, **kwargs: object) -> None:
                self.total = total
                tally.add(initial)

            def update(self, count: float | None = 1) -> None:
                tally.add(int(count or 0))

            def update_transfer(self, count: float | None = 1) -> None:
                pass

            def set_postfix_str(self, *args: object, **kwargs: object) -> None:
                pass

            set_transfer_postfix_str = set_postfix_str
            refresh = close = set_postfix_str

            def __enter__(self) -> "BytesWritten":
                return self

            def __exit__(self, *exc: object) -> None:
                pass

        return BytesWritten


def download(plan: DownloadPlan, report: Report | None = None) -> None:
    """Download the plan's missing files into the Hub cache, reporting to `report` on the calling thread.

    The files download on a thread of their own, and the calling thread reports every `REPORT_EVERY_S` and after
    each file: huggingface_hub updates its bars from whichever thread moves the bytes (the Xet client's own, for
    most models), and a caller's progress display may only work from its own thread (Gradio's `gr.Progress`).
    Without `report`, huggingface_hub draws its own bars on the console. Finished files stay in the cache, so a
    download that failed goes on from there the next time.
    """
    if not plan.missing:
        return
    if report is None:
        for file in plan.missing:
            hf_hub_download(plan.repo, file.path)
        return
    tally = _Tally()
    events: queue.Queue[HubFile | BaseException | None] = queue.Queue()  # each file done, then None or the error

    def fetch_all() -> None:
        try:
            for file in plan.missing:
                tally.start(file)
                # The default branch, not the planned commit: so that the cache records it, and an offline load
                # (diffusers' local_files_only) finds the model by its name. The planned commit is almost always it.
                hf_hub_download(plan.repo, file.path, tqdm_class=tally.bar_class())
                tally.finish(file)
                events.put(file)
            events.put(None)
        except BaseException as error:  # raised again on the calling thread
            events.put(error)

    threading.Thread(target=fetch_all, name="sdplay-download", daemon=True).start()
    report(tally.progress(plan))
    while True:
        try:
            event = events.get(timeout=REPORT_EVERY_S)
        except queue.Empty:
            report(tally.progress(plan))
            continue
        if event is None:
            return  # the last file's report said it all
        if isinstance(event, BaseException):
            raise event
        report(tally.progress(plan))


def fetch_model(repo: str, report: Report | None = None) -> Path | None:
    """Make sure the cache holds what loading `repo` needs, and return the model's folder in the cache.

    Asks the Hub for the files and their sizes, refuses with a `UserError` if the disk is too small for the ones
    missing (before downloading any), then downloads them, reporting progress to `report`. None when the Hub
    cannot be reached: the loader then tries the cache, as it does offline.
    """
    try:
        plan = plan_download(repo)
    except UserError:
        raise
    except Exception as error:  # no connection, HF_HUB_OFFLINE, the Hub down: whatever it is, the cache may serve
        print(f"sdplay: could not ask the Hub about {repo}: {error!r}", file=sys.stderr, flush=True)
        return None
    check_disk_space(plan)
    try:
        download(plan, report)
    except Exception as error:
        print(f"sdplay: downloading {repo} failed: {error!r}", file=sys.stderr, flush=True)
        raise UserError(
            f"Downloading {repo} failed ({type(error).__name__}): check the internet connection and press Load again. "
            "The files already downloaded are kept."
        ) from None
    snapshot = try_to_load_from_cache(repo, "model_index.json", revision=plan.revision)
    if not isinstance(snapshot, str):
        raise UserError(f"{repo} changed on the Hub during the download: press Load again.")
    return Path(snapshot).parent
