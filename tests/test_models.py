"""The model manager on tiny random-weight pipelines: loading, sharing, isolation, switching, refusals."""

import gc
import shutil
import threading
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdplay.runtime.composition import local_manager
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JOB_ENDED, JobControl, JobSpec
from sdplay.runtime.generate import generate
from sdplay.runtime.models import (
    MemoryOptions,
    ModelSwitch,
    SwitchPolicy,
    pick_device,
    pick_dtype,
    shared_weight_ratio,
)
from sdplay.runtime.request import GenerationRequest, Limits, Task
from tests.helpers import same_weights


def test_loads_a_diffusers_folder_and_reports_it(manager, tiny_model):
    assert manager.model.native_size == 64
    assert manager.model.name == tiny_model.name
    status = manager.status()
    assert tiny_model.name in status and "cpu float32" in status and "MB" in status


def test_task_views_share_every_weight_tensor(manager):
    views = {task: manager.pipeline(task, "Euler") for task in Task}
    for name in ("unet", "vae", "text_encoder"):
        pointers = {task: [p.data_ptr() for p in getattr(view, name).parameters()] for task, view in views.items()}
        assert pointers[Task.TXT2IMG] == pointers[Task.IMG2IMG] == pointers[Task.INPAINT]
    assert shared_weight_ratio(manager) == 1.0
    assert type(views[Task.INPAINT]).__name__ == "StableDiffusionInpaintPipeline"


def test_task_views_keep_the_models_dtype(tiny_model):
    """The views share the base modules, so a view that cast them (as `from_pipe` does by default) casts them all."""
    manager = local_manager(device="cpu", dtype="bfloat16")
    manager.load(str(tiny_model))
    views = [manager.pipeline(task, "Euler") for task in Task]
    modules = [module for pipe in (*views, manager.model.pipe) for module in (pipe.unet, pipe.vae, pipe.text_encoder)]
    assert {module.dtype for module in modules} == {torch.bfloat16}


def test_each_request_gets_its_own_scheduler(manager):
    base = manager.model.pipe.scheduler
    first, second = manager.pipeline(Task.TXT2IMG, "DDIM"), manager.pipeline(Task.TXT2IMG, "DDIM")
    assert first.scheduler is not second.scheduler and first.scheduler is not base
    first.scheduler.set_timesteps(7)
    assert second.scheduler.timesteps is None or len(second.scheduler.timesteps) != 7
    assert type(manager.model.pipe.scheduler).__name__ == "PNDMScheduler"  # the base never changes


def test_pickle_checkpoints_are_refused_by_their_header(tmp_path):
    manager = local_manager(device="cpu")
    torch.save({"state_dict": {}}, tmp_path / "model.ckpt")
    with pytest.raises(UserError, match="pickle"):
        manager.load(str(tmp_path / "model.ckpt"))
    (tmp_path / "model.ckpt").rename(tmp_path / "renamed.safetensors")
    with pytest.raises(UserError, match="not a safetensors file"):
        manager.load(str(tmp_path / "renamed.safetensors"))


def test_a_folder_with_only_pickle_weights_is_refused(tiny_model, tmp_path):
    folder = shutil.copytree(tiny_model, tmp_path / "pickled")
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(UserError, match="only pickle weights"):
        local_manager(device="cpu").load(str(folder))


def test_missing_paths_and_unreachable_hub_ids_say_what_to_do(tmp_path):
    manager = local_manager(device="cpu", offline=True)
    with pytest.raises(UserError, match="No model at"):
        manager.load(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="--model"):
        manager.load("sdplay-tests/not-a-real-model")
    with pytest.raises(UserError, match="command line"):
        manager.load(str(tmp_path), allow_local=False)


def test_switching_models_releases_the_old_one(tiny_model, tiny_inpaint_model):
    manager = local_manager(device="cpu")
    manager.load(str(tiny_model))
    old_unet = weakref.ref(manager.model.pipe.unet)
    manager.load(str(tiny_inpaint_model))
    gc.collect()
    assert old_unet() is None
    assert manager.model.is_inpainting and manager.model.name == tiny_inpaint_model.name


def test_a_failed_load_leaves_the_previous_model_working(tiny_model, tmp_path):
    manager = local_manager(device="cpu")
    manager.load(str(tiny_model))
    with pytest.raises(UserError):
        manager.load(str(tmp_path / "missing"))  # refused before anything is released
    broken = shutil.copytree(tiny_model, tmp_path / "broken")
    (broken / "unet" / "config.json").unlink()  # passes the checks, fails inside diffusers
    serving = manager.model
    with pytest.raises(Exception):  # noqa: B017 - whatever diffusers raises, the old model must stay
        manager.load(str(broken))
    assert manager.model is serving  # never released (and loaded again): the same model kept serving
    assert same_weights(manager.pipeline(Task.TXT2IMG, "Euler").unet, serving.pipe.unet)
    assert manager.model.loaded_by is None and "Loaded by" not in manager.status()


def test_overlong_and_odd_model_names_are_refused_before_touching_the_disk():
    manager = local_manager(device="cpu", offline=True)
    for name, allow_local in [("a" * 5000, True), ("a" * 5000, False), ("org/" + "x" * 300, False)]:
        with pytest.raises(UserError, match=r"not a model name \(\d+ characters\): give a Hub id, org/name"):
            manager.load(name, allow_local=allow_local)
    with pytest.raises(UserError, match="not a model name"):
        manager.load("models/a\0b")
    with pytest.raises(UserError, match="command line"):
        manager.load("../../etc", allow_local=False)


def test_the_status_line_says_who_switched_and_when(tiny_model):
    manager = local_manager(device="cpu")
    manager.load(str(tiny_model), by="ann")
    at = manager.model.loaded_at
    assert f"Loaded by ann at {at:%H:%M}" in manager.status()


def test_switch_policies_decide_which_models_load_and_who_may_switch():
    listed = {"shapes": "/srv/models/shapes", "stabilityai/sd-turbo": "stabilityai/sd-turbo"}
    anyone = ModelSwitch(listed)
    assert anyone.source("shapes", None) == ("/srv/models/shapes", True)  # listed: may be a local path
    assert anyone.source("org/other", None) == ("org/other", False)  # any Hub id, never a path
    catalog = ModelSwitch(listed, SwitchPolicy.CATALOG)
    assert catalog.source(" stabilityai/sd-turbo ", None) == ("stabilityai/sd-turbo", True)
    with pytest.raises(UserError, match="only the models in the list: shapes, stabilityai/sd-turbo"):
        catalog.source("org/other", None)
    locked = ModelSwitch(listed, SwitchPolicy.LOCKED, admin="teacher")
    assert not locked.open and catalog.open
    with pytest.raises(UserError, match="turned off"):
        locked.source("shapes", "teacher")  # nobody, not even the admin
    admin = ModelSwitch(listed, SwitchPolicy.CATALOG, admin="teacher")
    assert admin.source("shapes", "teacher") == ("/srv/models/shapes", True)
    for user in (None, "student", "Teacher"):
        with pytest.raises(UserError, match="Only the server's admin"):
            admin.source("shapes", user)
    with pytest.raises(UserError, match="Choose a model"):
        anyone.source("", None)


def test_device_and_dtype_are_picked_and_checked():
    assert pick_device().type == "cpu"  # no GPU on the test machines
    assert pick_dtype(None, torch.device("cpu")) == torch.float32
    assert pick_dtype(None, torch.device("cuda")) == torch.float16
    assert pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(UserError, match="dtype"):
        pick_dtype("float8", torch.device("cpu"))
    with pytest.raises(UserError, match="CUDA-only"):
        local_manager(device="cpu", memory=MemoryOptions(cpu_offload=True))


def test_one_job_at_a_time_and_interrupt_reaches_only_its_owner(manager):
    entered = threading.Event()
    with manager.job(JobControl(owner="alice")) as job:
        assert not manager.interrupt("bob")
        assert not manager.interrupt(None) and not job.cancel.is_set()  # a request without a session stops nothing
        assert manager.interrupt("alice") and job.cancel.is_set()

        def second_job():
            with manager.job(JobControl(owner="bob")):
                entered.set()

        waiter = threading.Thread(target=second_job)
        waiter.start()
        assert not entered.wait(0.3)  # blocked while alice's job holds the lock
    waiter.join(5)
    assert entered.is_set()


def test_on_zerogpu_the_status_line_asks_cuda_nothing(manager, monkeypatch):
    """On ZeroGPU the main process has no GPU (only the workers that run the jobs do): no CUDA call there."""

    def no_gpu_here(*args):
        raise RuntimeError("CUDA called in ZeroGPU's main process")

    monkeypatch.setattr(torch.cuda, "memory_allocated", no_gpu_here)
    monkeypatch.setattr(manager, "device", torch.device("cuda"))
    with pytest.raises(RuntimeError):
        manager.status()  # a CUDA machine's server reports VRAM
    monkeypatch.setattr(manager, "executor", SimpleNamespace(name="zerogpu"))
    assert manager.status().startswith(f"{manager.model.name} · cuda")


def test_a_model_loading_in_the_background_serves_its_facts_at_once_and_jobs_wait_for_its_weights(tiny_model):
    manager = local_manager(device="cpu")
    prepare, go = manager._prepare, threading.Event()

    def held(*args):  # the load stays in progress until the test lets it go
        assert go.wait(30)
        return prepare(*args)

    manager._prepare = held
    facts = manager.load_later(str(tiny_model))
    assert manager.model is facts and facts.name == tiny_model.name and manager.loading
    assert next(facts.pipe.unet.parameters()).is_meta and facts.native_size == 64 and facts.settings.steps == 20
    assert manager.status().startswith(f"Loading {tiny_model.name} on cpu float32 … the page works meanwhile")
    request = GenerationRequest(prompt="a red cat", sampler="Euler", steps=3, seed=2)
    job = manager.executor.start(JobSpec(generate, request, Limits()))
    assert not job.finished.wait(0.5)  # it waits for the weights
    go.set()
    assert job.finished.wait(60) and not manager.loading
    items = []
    while (item := job.updates.get(timeout=60)) is not JOB_ENDED:
        items.append(item)
    result = items[-1]
    loaded_first = local_manager(device="cpu")
    loaded_first.load(str(tiny_model))
    expected = loaded_first.executor.run(JobSpec(generate, request, Limits()))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(list(expected)[-1].images[0]))
    assert not next(manager.model.pipe.unet.parameters()).is_meta and manager.status().startswith(tiny_model.name)


def test_a_background_load_that_fails_leaves_no_model_and_says_so_without_paths(tiny_model, tmp_path):
    manager = local_manager(device="cpu")

    def broken(*args):
        raise OSError(f"no file at {tmp_path}/secret")

    manager._prepare = broken
    manager.load_later(str(tiny_model))
    with pytest.raises(UserError, match="No model is loaded"):
        generate(manager, GenerationRequest(prompt="a red cat", steps=2))
    status = manager.status()
    assert status.startswith(f"No model loaded ({tiny_model.name} failed to load: the server's log says why)")
    assert str(tmp_path) not in status
    with pytest.raises(UserError, match="not a complete diffusers folder"):
        broken_folder = shutil.copytree(tiny_model, tmp_path / "no-unet-config")
        (broken_folder / "unet" / "config.json").unlink()
        manager.load_later(str(broken_folder))


def test_a_switch_never_leaves_the_manager_without_a_model(tiny_model, tiny_inpaint_model, monkeypatch):
    """A page built (or a handler run) while a model loads in the background reads `model` from another thread: at
    no moment of the switch may it find none (CI once saw "No model is loaded" while the page was being built)."""
    manager = local_manager(device="cpu")
    manager.load(str(tiny_model))
    serving = []
    monkeypatch.setattr(gc, "collect", lambda: serving.append(manager._model))  # when the old model is let go
    new = manager.load(str(tiny_inpaint_model))
    assert serving == [new]
