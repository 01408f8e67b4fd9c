"""sdplay's entry point: parse flags (or their SDPLAY_* environment variables), load the model, serve the UI.

Run `python app.py --help` for the flags (their table is sdplay/settings.py). It is also the `app_file` of a Hugging
Face Space.
"""

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

# The standard library only: --help stays instant.
from sdplay.settings import BUNDLED_MODEL, DEFAULT_MODEL, Settings


def parse_args(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of the command line (default sys.argv) over those of the environment (default os.environ)."""
    return Settings.from_command_line(argv, environ)


def main(argv: list[str] | None = None) -> None:
    from sdplay.runtime.executor import zero_gpu

    zero_gpu()  # on a ZeroGPU Space, `spaces` must be imported before anything initialises CUDA; imports no torch
    settings = parse_args(argv)
    if settings.executor == "ray":
        require_ray()
    # --max-disk caps the whole of Gradio's cache folder, so the app gets one of its own: Gradio's default
    # (<tmp>/gradio) is shared by every Gradio app on the machine. Gradio reads the variable as it makes each file.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(tempfile.gettempdir()) / f"sdplay-gradio-{settings.port}"))
    # Imported after parsing so that --help is instant and flags can still set import-time environment.
    from sdplay.page import build_demo
    from sdplay.ui.cache import CacheCap

    manager = loaded_manager(settings)
    switch = model_switch(settings, manager)
    demo = build_demo(
        manager, settings.limits(), switch, plot_limits=settings.plot_limits(), workers=manager.executor.workers
    )
    CacheCap(demo, settings.max_disk).start()
    launch(demo, settings)


def require_ray() -> None:
    """Fail early, before the model loads, with how to install Ray."""
    from sdplay.runtime.ray_worker import RAY_MISSING

    try:
        import ray  # noqa: F401
    except ImportError:
        sys.exit(f"sdplay: {RAY_MISSING}")


def loaded_manager(settings: Settings):
    """The model manager on the executor the settings name, with the model loaded (or the process ends, saying why).

    A local diffusers folder on the local executor (the bundled model, `--model ./folder`) loads in the background:
    the page is built from the folder's configs and answers at once, and a job waits for the weights. A Hub model,
    a single file, ZeroGPU's forked workers and Ray's replicas load first, as before.
    """
    from sdplay.runtime.composition import local_manager
    from sdplay.runtime.errors import UserError

    try:
        if settings.executor == "ray":
            manager = ray_manager(settings)
        else:
            memory = settings.memory()
            manager = local_manager(
                settings.device, settings.dtype, offline=settings.offline, memory=memory, jobs=settings.jobs
            )
            print(f"sdplay: loading {settings.model} on {manager.device} ...", flush=True)
        if settings.executor == "local" and settings.config is None and Path(settings.model).expanduser().is_dir():
            manager.load_later(settings.model)
        else:
            manager.load(settings.model, config=settings.config)
    except UserError as error:
        sys.exit(f"sdplay: {error}")
    if settings.executor != "ray":  # a pool's workers set their own threads
        manager.executor.threads.own_torch_threads()
    return manager


def model_switch(settings: Settings, manager):
    """The web UI's rules for switching models: the models it lists (names shown → sources), the policy, the admin."""
    from sdplay.runtime.catalog import HUB_MODELS
    from sdplay.runtime.models import ModelSwitch, SwitchPolicy

    local = {manager.model.name: settings.model}
    if settings.model != DEFAULT_MODEL and DEFAULT_MODEL == str(BUNDLED_MODEL):
        local[BUNDLED_MODEL.name] = DEFAULT_MODEL
    models = local | {hub_id: hub_id for hub_id in ([] if settings.offline else HUB_MODELS)}
    return ModelSwitch(models, SwitchPolicy(settings.models), settings.admin_user)


def launch(demo, settings: Settings) -> None:
    from sdplay.lesson.ui import i18n
    from sdplay.ui.style import CSS, JS

    demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        auth=settings.logins(),
        max_file_size="64mb",  # Explain exports of SD 1.5 runs at 512² reach ~25 MB
        enable_monitoring=False,
        allowed_paths=[],
        show_error=False,
        share=False,
        run_history=False,
        js=JS,
        css=CSS,
        i18n=i18n(),  # the Lesson tab's texts, in the browser's language
    )


def ray_manager(settings: Settings):
    """The front end's model manager on a pool of Ray Serve workers (`--executor ray`): they load the model and run
    the jobs; this process keeps the model's facts."""
    from sdplay.runtime.models import ModelManager
    from sdplay.runtime.ray_executor import RayExecutor
    from sdplay.runtime.ray_worker import ModelSource

    where = f"the Ray cluster at {settings.ray_address}" if settings.ray_address else "a local Ray instance"
    print(f"sdplay: starting the workers on {where} (or joining those deployed there) ...", flush=True)
    source = ModelSource(settings.model, settings.config)
    pool = RayExecutor.start(settings.workers, settings.ray_address, settings.worker_options(), source)
    workers = f"{pool.workers} worker{'s' if pool.workers != 1 else ''}"
    print(f"sdplay: {workers} ready; loading {settings.model} ...", flush=True)
    return ModelManager(device="meta", pool=pool)


if __name__ == "__main__":
    main()
