"""sdplay's entry point: parse flags (or their SDPLAY_* environment variables), load the model, serve the UI.

Run `python app.py --help` for the flags. It is also the `app_file` of a Hugging Face Space.
"""

import argparse
import ipaddress
import os
import sys
import tempfile
from pathlib import Path

from sdplay.runtime.disk import DEFAULT_MAX_DISK, parse_size  # the standard library only: --help stays instant

# Our own small model (sdplay/shapes), trained in this repo: it runs offline on any CPU in seconds.
BUNDLED_MODEL = Path(__file__).resolve().parent / "assets" / "shapes"
DEFAULT_MODEL = (
    str(BUNDLED_MODEL)
    if (BUNDLED_MODEL / "model_index.json").is_file()
    else "stable-diffusion-v1-5/stable-diffusion-v1-5"  # a checkout without assets/
)
# sdplay.runtime.models.SwitchPolicy's values: parsing flags imports no torch.
MODEL_POLICIES = ("catalog", "any", "locked")
# sdplay.runtime.executor.EXECUTORS, named here so that --help stays instant.
EXECUTORS = ("local", "zerogpu", "ray")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="sdplay: a Stable Diffusion playground in the browser.")
    parser.add_argument(
        "--model",
        default=env("SDPLAY_MODEL", DEFAULT_MODEL),
        help="Hub id, local diffusers folder, or .safetensors file [SDPLAY_MODEL]",
    )
    parser.add_argument(
        "--config",
        default=env("SDPLAY_CONFIG"),
        help="local diffusers folder with the configs for a .safetensors --model [SDPLAY_CONFIG]",
    )
    # A Hugging Face Space says where to listen in Gradio's variables (0.0.0.0:7860) and fronts the app itself.
    space = bool(env("SPACE_ID"))
    host = env("SDPLAY_HOST") or (space and env("GRADIO_SERVER_NAME")) or "127.0.0.1"
    port = env("SDPLAY_PORT") or (space and env("GRADIO_SERVER_PORT")) or "7860"
    parser.add_argument(
        "--host", default=host, help="address to bind [SDPLAY_HOST; on a Space GRADIO_SERVER_NAME]; default 127.0.0.1"
    )
    parser.add_argument("--port", type=int, default=int(port), help="[SDPLAY_PORT; on a Space GRADIO_SERVER_PORT]")
    parser.add_argument("--device", default=env("SDPLAY_DEVICE"), help="cpu, cuda, cuda:N or mps [SDPLAY_DEVICE]")
    parser.add_argument("--dtype", default=env("SDPLAY_DTYPE"), help="float16, bfloat16 or float32 [SDPLAY_DTYPE]")
    parser.add_argument(
        "--offline",
        action="store_true",
        default=env("SDPLAY_OFFLINE") == "1",
        help="never contact the Hugging Face Hub [SDPLAY_OFFLINE=1]",
    )
    parser.add_argument(
        "--auth",
        default=env("SDPLAY_AUTH"),
        help="user:password; required when --host is not a loopback address [SDPLAY_AUTH]",
    )
    parser.add_argument(
        "--models",
        choices=MODEL_POLICIES,
        default=env("SDPLAY_MODELS"),
        help="which models the web UI may switch to, for everyone: the listed ones (catalog), also any Hub id (any), "
        "none (locked); default: any on loopback, catalog on a Space or a network address [SDPLAY_MODELS]",
    )
    parser.add_argument(
        "--admin",
        default=env("SDPLAY_ADMIN"),
        help="user:password of a login that alone may switch models; it turns on the login page, so give the other "
        "users --auth [SDPLAY_ADMIN]",
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=int(env("SDPLAY_MAX_SIZE", "1024")),
        help="largest width or height a user may ask for [SDPLAY_MAX_SIZE]",
    )
    parser.add_argument(
        "--max-plot-cells",
        type=int,
        default=int(env("SDPLAY_MAX_PLOT_CELLS", "64")),
        help="most cells an X/Y/Z plot may have, checked before it runs [SDPLAY_MAX_PLOT_CELLS]",
    )
    parser.add_argument(
        "--max-plot-megapixels",
        type=float,
        default=float(env("SDPLAY_MAX_PLOT_MEGAPIXELS", "64")),
        help="most megapixels an X/Y/Z plot's images may have in all [SDPLAY_MAX_PLOT_MEGAPIXELS]",
    )
    parser.add_argument(
        "--max-disk",
        type=_size,
        default=env("SDPLAY_MAX_DISK", DEFAULT_MAX_DISK),
        help=f"disk space for the app's files in Gradio's cache folder (uploads, images, Explain exports); past it "
        f"the oldest go first (default {DEFAULT_MAX_DISK}). The folder is GRADIO_TEMP_DIR, else one of the app's own "
        "in the system's temporary folder [SDPLAY_MAX_DISK]",
    )
    parser.add_argument(
        "--cpu-offload",
        action="store_true",
        default=env("SDPLAY_CPU_OFFLOAD") == "1",
        help="CUDA only: keep idle submodels in RAM [SDPLAY_CPU_OFFLOAD=1]",
    )
    parser.add_argument(
        "--vae-tiling",
        action="store_true",
        default=env("SDPLAY_VAE_TILING") == "1",
        help="CUDA only: decode large images in tiles [SDPLAY_VAE_TILING=1]",
    )
    parser.add_argument(
        "--attention-slicing",
        action="store_true",
        default=env("SDPLAY_ATTENTION_SLICING") == "1",
        help="CUDA only: compute attention in slices [SDPLAY_ATTENTION_SLICING=1]",
    )
    zero = bool(env("SPACES_ZERO_GPU"))
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=env("SDPLAY_EXECUTOR") or ("zerogpu" if zero else "local"),
        help="what runs the model: local (this process), zerogpu (a ZeroGPU Space's GPU worker) or ray (a pool of "
        "Ray Serve workers, one per GPU; pip install -r requirements-ray.txt); default zerogpu on a ZeroGPU Space, "
        "else local [SDPLAY_EXECUTOR]",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(env("SDPLAY_WORKERS", "0")) or None,
        help="ray: how many workers (replicas, each with the model loaded) run jobs at once; default one per GPU "
        "of the Ray cluster, else one [SDPLAY_WORKERS]",
    )
    parser.add_argument(
        "--ray-address",
        default=env("SDPLAY_RAY_ADDRESS"),
        help="ray: join the Ray cluster at this address (auto: the one `ray start` started on this machine) instead "
        "of starting a local one; an sdplay application already deployed there (serve run) is used as it is "
        "[SDPLAY_RAY_ADDRESS]",
    )
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=int(env("SDPLAY_WORKER_THREADS", "0")) or None,
        help="ray, CPU workers: torch threads of each; default the cluster's cores shared out [SDPLAY_WORKER_THREADS]",
    )
    args = parser.parse_args(argv)
    if args.executor not in EXECUTORS:  # argparse checks the choices of flags, not of defaults
        parser.error(f"SDPLAY_EXECUTOR={args.executor} is not one of {', '.join(EXECUTORS)}.")
    if args.executor == "zerogpu" and not zero:
        parser.error("--executor zerogpu runs on a Hugging Face ZeroGPU Space only (SPACES_ZERO_GPU is not set).")
    if args.executor != "zerogpu" and zero:
        parser.error(f"On a ZeroGPU Space only --executor zerogpu reaches the GPU, not {args.executor}.")
    ray_flags = [
        flag
        for flag, value in (
            ("--workers", args.workers),
            ("--ray-address", args.ray_address),
            ("--worker-threads", args.worker_threads),
        )
        if value is not None
    ]
    if ray_flags and args.executor != "ray":
        parser.error(f"{', '.join(ray_flags)} {'is' if len(ray_flags) == 1 else 'are'} for --executor ray.")
    if any(count is not None and count < 1 for count in (args.workers, args.worker_threads)):
        parser.error("--workers and --worker-threads must be at least 1.")
    if not space and not _is_loopback(args.host) and not (args.auth or args.admin):
        parser.error(f"--host {args.host} opens the app to the network: also give --auth user:password.")
    for flag, login in (("--auth", args.auth), ("--admin", args.admin)):
        if login and not all(login.partition(":")[::2]):
            parser.error(f"{flag} takes user:password.")
    if args.auth and args.admin and args.auth.partition(":")[0] == args.admin.partition(":")[0]:
        parser.error("--admin needs a user name of its own, not --auth's.")
    if args.max_plot_cells < 1 or not args.max_plot_megapixels > 0:
        parser.error("--max-plot-cells and --max-plot-megapixels must be positive.")
    if args.models is None:  # switching changes the model for everyone: only the listed ones where strangers meet
        args.models = "catalog" if os.environ.get("SPACE_ID") or not _is_loopback(args.host) else "any"
    elif args.models not in MODEL_POLICIES:  # argparse checks the choices of flags, not of defaults
        parser.error(f"SDPLAY_MODELS={args.models} is not one of {', '.join(MODEL_POLICIES)}.")
    return args  # fmt: skip


def logins(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """Gradio's login accounts: --auth's and --admin's (None: no login page)."""
    accounts = [login.split(":", 1) for login in (args.auth, args.admin) if login]
    return [(user, password) for user, password in accounts] or None


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    from sdplay.runtime.executor import zero_gpu

    zero_gpu()  # on a ZeroGPU Space, `spaces` must be imported before anything initialises CUDA; imports no torch
    args = parse_args(argv)
    if args.executor == "ray":
        from sdplay.runtime.ray_worker import RAY_MISSING

        try:
            import ray  # noqa: F401  (here only to fail early, before the model loads, with how to install it)
        except ImportError:
            sys.exit(f"sdplay: {RAY_MISSING}")
    # --max-disk caps the whole of Gradio's cache folder, so the app gets one of its own: Gradio's default
    # (<tmp>/gradio) is shared by every Gradio app on the machine. Gradio reads the variable as it makes each file.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(tempfile.gettempdir()) / f"sdplay-gradio-{args.port}"))
    # Imported after parsing so that --help is instant and flags can still set import-time environment.
    from sdplay.lesson.ui import i18n
    from sdplay.page import build_demo
    from sdplay.runtime.catalog import HUB_MODELS
    from sdplay.runtime.composition import local_manager
    from sdplay.runtime.errors import UserError
    from sdplay.runtime.models import MemoryOptions, ModelSwitch, SwitchPolicy
    from sdplay.runtime.request import Limits, PlotLimits
    from sdplay.ui.cache import CacheCap
    from sdplay.ui.style import CSS, JS

    try:
        memory = MemoryOptions(args.cpu_offload, args.vae_tiling, args.attention_slicing)
        if args.executor == "ray":
            manager = ray_manager(args, memory)
        else:
            manager = local_manager(args.device, args.dtype, offline=args.offline, memory=memory)
            print(f"sdplay: loading {args.model} on {manager.device} ...", flush=True)
        manager.load(args.model, config=args.config)
    except UserError as error:
        sys.exit(f"sdplay: {error}")
    if args.executor != "ray":  # a pool's workers set their own threads
        manager.executor.thread.own_torch_threads()
    local = {manager.model.name: args.model}
    if args.model != DEFAULT_MODEL and DEFAULT_MODEL == str(BUNDLED_MODEL):
        local[BUNDLED_MODEL.name] = DEFAULT_MODEL
    models = local | {hub_id: hub_id for hub_id in ([] if args.offline else HUB_MODELS)}
    admin = args.admin.partition(":")[0] if args.admin else None
    switch = ModelSwitch(models, SwitchPolicy(args.models), admin)
    plot_limits = PlotLimits(args.max_plot_cells, args.max_plot_megapixels)
    demo = build_demo(manager, Limits(max_size=args.max_size), switch, plot_limits, workers=manager.executor.workers)
    CacheCap(demo, args.max_disk).start()
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        auth=logins(args),
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


def ray_manager(args: argparse.Namespace, memory):
    """The front end's model manager on a pool of Ray Serve workers (`--executor ray`): they load the model and run
    the jobs; this process keeps the model's facts."""
    from sdplay.runtime.models import ModelManager
    from sdplay.runtime.ray_executor import RayExecutor
    from sdplay.runtime.ray_worker import ModelSource, WorkerOptions

    where = f"the Ray cluster at {args.ray_address}" if args.ray_address else "a local Ray instance"
    print(f"sdplay: starting the workers on {where} (or joining those deployed there) ...", flush=True)
    options = WorkerOptions(args.device, args.dtype, args.offline, memory, args.worker_threads)
    pool = RayExecutor.start(args.workers, args.ray_address, options, ModelSource(args.model, args.config))
    print(
        f"sdplay: {pool.workers} worker{'s' if pool.workers != 1 else ''} ready; loading {args.model} ...", flush=True
    )
    return ModelManager(device="meta", pool=pool)


if __name__ == "__main__":
    main()
