"""Hub downloads (sdplay/runtime/downloads.py) against a local stand-in for the Hub: the files chosen, the disk check,
the progress reports, and the load from the cache that follows, online and offline."""

import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from huggingface_hub import constants

from sdplay.page import build_demo
from sdplay.runtime.composition import local_manager
from sdplay.runtime.downloads import SPARE_BYTES, DownloadProgress, fetch_model, needed_files, size_text
from sdplay.runtime.errors import UserError
from sdplay.runtime.models import ModelSwitch, SwitchPolicy
from sdplay.runtime.request import Limits, Task
from tests.fake_hub import FakeHub, serving
from tests.helpers import free_port

REPO = "sdplay-tests/tiny"
# Files a real repository also holds that the loader must never fetch: a pickle, an fp16 variant, a single-file
# checkpoint at the top, and the safety checker the loader replaces with None.
DECOYS = [
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "v1-5-pruned-emaonly.safetensors",
    "safety_checker/config.json",
    "safety_checker/model.safetensors",
    "README.md",
]

# stable-diffusion-v1-5/stable-diffusion-v1-5's files as the Hub lists them (sizes of the weights in bytes).
SD15 = {
    ".gitattributes": 1_548, "README.md": 14_461, "model_index.json": 541, "v1-inference.yaml": 1_873,
    "v1-5-pruned.ckpt": 7_703_807_346, "v1-5-pruned.safetensors": 7_703_324_286,
    "v1-5-pruned-emaonly.ckpt": 4_265_380_512, "v1-5-pruned-emaonly.safetensors": 4_265_146_304,
    "feature_extractor/preprocessor_config.json": 342,
    "safety_checker/config.json": 4_723, "safety_checker/model.safetensors": 1_215_981_830,
    "safety_checker/model.fp16.safetensors": 608_018_440, "safety_checker/pytorch_model.bin": 1_216_064_769,
    "scheduler/scheduler_config.json": 308,
    "text_encoder/config.json": 617, "text_encoder/model.safetensors": 492_265_874,
    "text_encoder/model.fp16.safetensors": 246_144_152, "text_encoder/pytorch_model.bin": 492_305_335,
    "tokenizer/merges.txt": 524_619, "tokenizer/special_tokens_map.json": 472,
    "tokenizer/tokenizer_config.json": 806, "tokenizer/vocab.json": 1_059_962,
    "unet/config.json": 743, "unet/diffusion_pytorch_model.safetensors": 3_438_167_536,
    "unet/diffusion_pytorch_model.fp16.safetensors": 1_719_125_304, "unet/diffusion_pytorch_model.bin": 3_438_375_973,
    "unet/diffusion_pytorch_model.non_ema.safetensors": 3_438_167_536,
    "vae/config.json": 547, "vae/diffusion_pytorch_model.safetensors": 334_643_268,
    "vae/diffusion_pytorch_model.fp16.safetensors": 167_335_342, "vae/diffusion_pytorch_model.bin": 334_707_217,
}  # fmt: skip


@pytest.fixture
def hub(tiny_model, tmp_path, monkeypatch):
    """The tiny model as a Hub repository with decoys, served locally; huggingface_hub caches in tmp_path/cache."""
    folder = shutil.copytree(tiny_model, tmp_path / "repo")
    for decoy in DECOYS:
        (folder / decoy).parent.mkdir(exist_ok=True)
        (folder / decoy).write_bytes(b"{}" if decoy.endswith(".json") else b"not for sdplay")
    with serving(FakeHub({REPO: folder}), tmp_path / "cache", monkeypatch) as hub:
        yield hub


def repo_files(hub: FakeHub) -> dict[str, int]:
    return {path: len(data) for path, data in hub.files(REPO).items()}


def test_the_loader_needs_configs_and_plain_safetensors_only():
    needed = needed_files("stable-diffusion-v1-5/stable-diffusion-v1-5", SD15)
    assert needed == [
        "model_index.json",
        "feature_extractor/preprocessor_config.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert size_text(sum(SD15[path] for path in needed)) == "4.3 GB"  # of the repository's 41 GB
    shards = {"model_index.json": 1, "unet/config.json": 1, "unet/diffusion_pytorch_model.safetensors.index.json": 1}
    shards |= {f"unet/diffusion_pytorch_model-0000{i}-of-00002.safetensors": 9 for i in (1, 2)}
    shards |= {
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json": 1,
        "unet/x.fp16-00001-of-00001.safetensors": 9,
    }
    assert needed_files("a/b", shards) == [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
    ]
    with pytest.raises(UserError, match=r"a/b has no safetensors weights in unet/\. sdplay loads only safetensors"):
        needed_files("a/b", {"model_index.json": 1, "unet/config.json": 1, "unet/diffusion_pytorch_model.bin": 9})
    with pytest.raises(UserError, match="not a diffusers model"):
        needed_files("a/b", {"model.safetensors": 9})


def test_a_disk_too_small_refuses_before_downloading_anything(hub, tiny_model, tmp_path, monkeypatch):
    manager = local_manager(device="cpu")
    manager.load(str(tiny_model))
    before = manager.model
    free = 300_000_000
    asked: list[Path] = []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: asked.append(Path(path)) or SimpleNamespace(free=free))
    reports: list[DownloadProgress] = []
    with pytest.raises(UserError) as refused:
        manager.load(REPO, allow_local=False, progress=reports.append)
    needed = sum(repo_files(hub)[path] for path in needed_files(REPO, repo_files(hub)))
    message = str(refused.value)
    assert message.startswith(f"{REPO} needs {size_text(needed)} more; this disk has 300 MB free (and sdplay keeps ")
    assert str(tmp_path) not in message and "/tmp" not in message and "cache" not in message
    assert asked[0] in (tmp_path, tmp_path / "cache")  # the disk of the cache (which may not exist yet)
    assert hub.downloaded() == [] and reports == []
    assert not (tmp_path / "cache").exists() or not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))
    assert manager.model is before
    free = needed + SPARE_BYTES  # just enough: it downloads
    manager.load(REPO, allow_local=False, progress=reports.append)
    assert manager.model.name == REPO


def test_a_download_reports_its_progress_on_the_calling_thread_and_then_loads_the_model(hub):
    manager = local_manager(device="cpu")
    reports: list[tuple[DownloadProgress, threading.Thread]] = []
    model = manager.load(REPO, progress=lambda report: reports.append((report, threading.current_thread())))
    sizes = repo_files(hub)
    needed = needed_files(REPO, sizes)
    assert sorted(hub.downloaded()) == sorted(needed) and not set(DECOYS) & set(hub.downloaded())
    done = [report.done for report, _ in reports]
    assert len(set(done)) >= 5 and done == sorted(done) and done[0] == 0
    last = reports[-1][0]
    assert last.done == last.total == sum(sizes[path] for path in needed) and last.fraction == 1.0
    assert last.describe() == f"Downloaded {REPO} ({size_text(last.total)}); loading it…"
    assert reports[1][0].describe().startswith(f"Downloading {REPO}: ")
    assert {thread for _, thread in reports} == {threading.current_thread()}  # where gr.Progress works
    assert model.name == REPO and manager.model is model and not model.is_inpainting
    image = manager.pipeline(Task.TXT2IMG, "Euler")("a red cat", num_inference_steps=1, height=64, width=64).images[0]
    assert image.size == (64, 64)


def test_a_cached_model_loads_again_without_downloading_online_and_offline(hub):
    local_manager(device="cpu").load(REPO)
    hub.requests.clear()
    reports: list[DownloadProgress] = []
    assert local_manager(device="cpu").load(REPO, progress=reports.append).name == REPO
    assert hub.downloaded() == [] and reports == []  # the Hub was asked for the list of files only
    hub.requests.clear()
    assert local_manager(device="cpu", offline=True).load(REPO, progress=reports.append).name == REPO
    assert hub.requests == [] and reports == []  # --offline never asks the Hub
    with pytest.raises(UserError, match=r"^The Hugging Face Hub has no model 'sdplay-tests/missing' that sdplay"):
        local_manager(device="cpu").load("sdplay-tests/missing")


def test_an_unreachable_hub_leaves_the_cache_to_serve_as_before(hub, monkeypatch):
    local_manager(device="cpu").load(REPO)
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the connection is refused
    monkeypatch.setattr(constants, "ENDPOINT", nowhere)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", nowhere + "/{repo_id}/resolve/{revision}/{filename}")
    reports: list[DownloadProgress] = []
    assert fetch_model(REPO, reports.append) is None and reports == []
    assert local_manager(device="cpu").load(REPO, progress=reports.append).name == REPO  # diffusers finds the cache
    with pytest.raises(UserError, match=r"Could not load 'sdplay-tests/other' from the Hugging Face Hub: check"):
        local_manager(device="cpu").load("sdplay-tests/other")


def test_a_failed_download_says_so_and_the_next_load_fetches_only_the_rest(hub):
    unet = hub.repos[REPO] / "unet" / "diffusion_pytorch_model.safetensors"
    kept = unet.read_bytes()
    manager = local_manager(device="cpu")
    original = hub.files

    def files_lost_midway(repo: str) -> dict[str, bytes]:
        files = original(repo)
        if any(method == "HEAD" for method, _ in hub.requests):  # after the plan: the unet's weights went away
            files.pop("unet/diffusion_pytorch_model.safetensors")
        return files

    hub.files = files_lost_midway
    with pytest.raises(UserError, match=rf"^Downloading {REPO} failed \(\w+\): check the internet connection"):
        manager.load(REPO)
    assert "unet/config.json" in hub.downloaded()
    hub.files, fetched = original, set(hub.downloaded())
    hub.requests.clear()
    assert unet.read_bytes() == kept and manager.load(REPO).name == REPO
    assert set(hub.downloaded()) == set(needed_files(REPO, repo_files(hub))) - fetched


def test_the_load_button_shows_the_download_and_a_refusal_names_no_path(hub, tiny_model, tmp_path, monkeypatch):
    manager = local_manager(device="cpu")
    manager.load(str(tiny_model))
    switch = ModelSwitch({tiny_model.name: str(tiny_model), REPO: REPO}, SwitchPolicy.CATALOG)
    demo = build_demo(manager, Limits(), switch)
    load_model = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", None) == "load_model")
    script = SimpleNamespace(username=None, headers={})
    shown: list[tuple[float, str]] = []

    def progress(fraction: float, desc: str) -> None:
        shown.append((fraction, desc))

    with monkeypatch.context() as small_disk:
        small_disk.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=10_000_000))
        with pytest.raises(gr.Error, match=rf"The model was not loaded: {REPO} needs .* disk has 10 MB free") as no:
            load_model(REPO, script, progress=progress)
    assert str(tmp_path) not in no.value.message and shown == [] and manager.model.name == tiny_model.name
    updates = load_model(REPO, script, progress=progress)
    assert manager.model.name == REPO and {"__type__": "update", "value": REPO} in updates.values()
    assert shown[0] == (0.0, f"Downloading {REPO}: 0 bytes of {size_text(manager_total(hub))}")
    assert shown[-1] == (1.0, f"Downloaded {REPO} ({size_text(manager_total(hub))}); loading it…")


def manager_total(hub: FakeHub) -> int:
    sizes = repo_files(hub)
    return sum(sizes[path] for path in needed_files(REPO, sizes))
