"""sdplay's settings: one table of options, each a command-line flag with its environment variable (for Hugging Face
Spaces), read into one frozen `Settings`; the runtime's small option objects (`Limits`, `MemoryOptions`, ...) are views.

The table is the `Settings` class itself: each field is a row giving, once, the flag (the field's name: `max_disk` is
`--max-disk`), the environment variable, the type (the field's), the default and the help. This module imports the
standard library only (and sdplay.runtime.disk, which does too), so that `python app.py --help` stays instant; the
views import their classes when they are called.
"""

import argparse
import ipaddress
import os
import types
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from sdplay.runtime.disk import DEFAULT_MAX_DISK, parse_size

if TYPE_CHECKING:
    from sdplay.runtime.models import MemoryOptions
    from sdplay.runtime.ray_worker import WorkerOptions
    from sdplay.runtime.request import Limits, PlotLimits

# Our own small model (sdplay/shapes), trained in this repo: it runs offline on any CPU in seconds.
BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "shapes"
DEFAULT_MODEL = (
    str(BUNDLED_MODEL)
    if (BUNDLED_MODEL / "model_index.json").is_file()
    else "stable-diffusion-v1-5/stable-diffusion-v1-5"  # a checkout without assets/
)
# sdplay.runtime.models.SwitchPolicy's values and sdplay.runtime.executor.EXECUTORS (tests/test_app.py checks them),
# named here so that reading the settings imports no torch.
MODEL_POLICIES = ("catalog", "any", "locked")
EXECUTORS = ("local", "zerogpu", "ray")
DESCRIPTION = "sdplay: a Stable Diffusion playground in the browser."


class SettingsError(ValueError):
    """Settings that cannot serve, with what to change; the command line shows it as argparse shows its own."""


@dataclass(frozen=True)
class Option:
    """A row of the table, beside its field. `help` ends with the variable in brackets unless it places `{env}`
    itself. Where neither the flag nor the variable is given, a Space (SPACE_ID set) reads `space_env` (Gradio's
    variables), then the field's default applies, and a default of None is decided by `derive(settings so far,
    environment)`. `executor` names the only executor the option is for."""

    env: str
    help: str
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None  # text → value; None: by the field's type
    space_env: str | None = None
    derive: Callable[[dict[str, Any], Mapping[str, str]], Any] | None = None
    executor: str | None = None


def option(
    env: str,
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    parse: Callable[[str], Any] | None = None,
    space_env: str | None = None,
    derive: Callable[[dict[str, Any], Mapping[str, str]], Any] | None = None,
    executor: str | None = None,
) -> Any:
    """A field of `Settings` that is a row of the table."""
    row = Option(env, help, choices, parse, space_env, derive, executor)
    return field(default=default, metadata={"option": row})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _model_policy(values: dict[str, Any], environ: Mapping[str, str]) -> str:
    # Switching changes the model for everyone: only the listed ones where strangers meet.
    return "catalog" if environ.get("SPACE_ID") or not is_loopback(values["host"]) else "any"


def _executor(values: dict[str, Any], environ: Mapping[str, str]) -> str:
    return "zerogpu" if environ.get("SPACES_ZERO_GPU") else "local"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the command line and the environment decide. `from_command_line` reads and checks them; the
    methods below give the runtime the small objects it takes."""

    model: str = option("SDPLAY_MODEL", DEFAULT_MODEL, "Hub id, local diffusers folder, or .safetensors file")
    config: str | None = option(
        "SDPLAY_CONFIG", None, "local diffusers folder with the configs for a .safetensors --model"
    )
    # A Hugging Face Space says where to listen in Gradio's variables (0.0.0.0:7860) and fronts the app itself.
    host: str = option(
        "SDPLAY_HOST", "127.0.0.1", "address to bind {env}; default 127.0.0.1", space_env="GRADIO_SERVER_NAME"
    )
    port: int = option("SDPLAY_PORT", 7860, "", space_env="GRADIO_SERVER_PORT")
    device: str | None = option("SDPLAY_DEVICE", None, "cpu, cuda, cuda:N or mps")
    dtype: str | None = option("SDPLAY_DTYPE", None, "float16, bfloat16 or float32")
    offline: bool = option("SDPLAY_OFFLINE", False, "never contact the Hugging Face Hub")
    auth: str | None = option("SDPLAY_AUTH", None, "user:password; required when --host is not a loopback address")
    models: str | None = option(
        "SDPLAY_MODELS",
        None,
        "which models the web UI may switch to, for everyone: the listed ones (catalog), also any Hub id (any), "
        "none (locked); default: any on loopback, catalog on a Space or a network address",
        choices=MODEL_POLICIES,
        derive=_model_policy,
    )
    admin: str | None = option(
        "SDPLAY_ADMIN",
        None,
        "user:password of a login that alone may switch models; it turns on the login page, so give the other "
        "users --auth",
    )
    max_size: int = option("SDPLAY_MAX_SIZE", 1024, "largest width or height a user may ask for")
    max_plot_cells: int = option(
        "SDPLAY_MAX_PLOT_CELLS", 64, "most cells an X/Y/Z plot may have, checked before it runs"
    )
    max_plot_megapixels: float = option(
        "SDPLAY_MAX_PLOT_MEGAPIXELS", 64.0, "most megapixels an X/Y/Z plot's images may have in all"
    )
    max_disk: int = option(
        "SDPLAY_MAX_DISK",
        parse_size(DEFAULT_MAX_DISK),
        f"disk space for the app's files in Gradio's cache folder (uploads, images, Explain exports); past it the "
        f"oldest go first (default {DEFAULT_MAX_DISK}). The folder is GRADIO_TEMP_DIR, else one of the app's own in "
        "the system's temporary folder",
        parse=parse_size,
    )
    cpu_offload: bool = option("SDPLAY_CPU_OFFLOAD", False, "CUDA only: keep idle submodels in RAM")
    vae_tiling: bool = option("SDPLAY_VAE_TILING", False, "CUDA only: decode large images in tiles")
    attention_slicing: bool = option("SDPLAY_ATTENTION_SLICING", False, "CUDA only: compute attention in slices")
    executor: str | None = option(
        "SDPLAY_EXECUTOR",
        None,
        "what runs the model: local (this process), zerogpu (a ZeroGPU Space's GPU worker) or ray (a pool of Ray "
        "Serve workers, one per GPU; pip install -r requirements-ray.txt); default zerogpu on a ZeroGPU Space, "
        "else local",
        choices=EXECUTORS,
        derive=_executor,
    )
    jobs: int | None = option(
        "SDPLAY_JOBS",
        None,
        "local: how many jobs run at once in this process, each on its share of the CPU's torch threads; default 2 "
        "on a CPU of 2 cores or more, else 1 (a GPU job fills the GPU by itself)",
        executor="local",
    )
    workers: int | None = option(
        "SDPLAY_WORKERS",
        None,
        "ray: how many workers (replicas, each with the model loaded) run jobs at once; default one per GPU of the "
        "Ray cluster, else one",
        executor="ray",
    )
    ray_address: str | None = option(
        "SDPLAY_RAY_ADDRESS",
        None,
        "ray: join the Ray cluster at this address (auto: the one `ray start` started on this machine) instead of "
        "starting a local one; an sdplay application already deployed there (serve run) is used as it is",
        executor="ray",
    )
    worker_threads: int | None = option(
        "SDPLAY_WORKER_THREADS",
        None,
        "ray, CPU workers: torch threads of each; default the cluster's cores shared out",
        executor="ray",
    )

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        """The command line: one flag per row; a flag left out is None here, so that its variable can stand in."""
        parser = argparse.ArgumentParser(description=DESCRIPTION)
        for row in fields(cls):
            kind, spec = field_type(row), row_option(row)
            if kind is bool:
                parser.add_argument(flag(row), action="store_true", default=None, help=_help(spec, kind))
            else:
                # int and float keep argparse's own messages; a row's own parser gives its message
                convert = _argparse_type(spec.parse) if spec.parse else None if kind is str else kind
                parser.add_argument(flag(row), type=convert, choices=spec.choices, default=None, help=_help(spec, kind))
        return parser

    @classmethod
    def from_command_line(cls, argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> "Settings":
        """The settings of `argv` (default sys.argv) over those of `environ` (default os.environ): argparse's exit,
        with its message, where they cannot serve."""
        parser = cls.parser()
        flags = vars(parser.parse_args(argv))
        try:
            return cls.resolve(flags, os.environ if environ is None else environ)
        except SettingsError as error:
            parser.error(str(error))

    @classmethod
    def resolve(cls, flags: Mapping[str, Any], environ: Mapping[str, str]) -> "Settings":
        """Each setting from its flag (given: not None), else its variable, else its default; then checked."""
        values = {
            row.name: flags[row.name] if flags.get(row.name) is not None else _from_environment(row, environ)
            for row in fields(cls)
        }
        for row in fields(cls):
            if values[row.name] is None and (derive := row_option(row).derive):
                values[row.name] = derive(values, environ)
        settings = cls(**values)
        if refusal := _refusal(settings, environ):
            raise SettingsError(refusal)
        return settings

    def logins(self) -> list[tuple[str, str]] | None:
        """Gradio's login accounts: --auth's and --admin's (None: no login page)."""
        accounts = [login.split(":", 1) for login in (self.auth, self.admin) if login]
        return [(user, password) for user, password in accounts] or None

    @property
    def admin_user(self) -> str | None:
        return self.admin.partition(":")[0] if self.admin else None

    def limits(self) -> "Limits":
        from sdplay.runtime.request import Limits

        return Limits(max_size=self.max_size)

    def plot_limits(self) -> "PlotLimits":
        from sdplay.runtime.request import PlotLimits

        return PlotLimits(self.max_plot_cells, self.max_plot_megapixels)

    def memory(self) -> "MemoryOptions":
        from sdplay.runtime.models import MemoryOptions

        return MemoryOptions(self.cpu_offload, self.vae_tiling, self.attention_slicing)

    def worker_options(self) -> "WorkerOptions":
        """How each Ray worker builds its model manager."""
        from sdplay.runtime.ray_worker import WorkerOptions

        return WorkerOptions(self.device, self.dtype, self.offline, self.memory(), self.worker_threads)


def flag(row: Field) -> str:
    return "--" + row.name.replace("_", "-")


def row_option(row: Field) -> Option:
    return row.metadata["option"]


def field_type(row: Field) -> type:
    """The field's type without its None: `int | None` is int."""
    if isinstance(row.type, types.UnionType):
        return next(kind for kind in get_args(row.type) if kind is not type(None))
    return row.type


def _help(spec: Option, kind: type) -> str:
    variable = f"{spec.env}=1" if kind is bool else spec.env
    where = f"[{variable}; on a Space {spec.space_env}]" if spec.space_env else f"[{variable}]"
    return spec.help.replace("{env}", where) if "{env}" in spec.help else " ".join(filter(None, (spec.help, where)))


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def converted(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return converted


# What a variable may say to turn a switch on or off (the flag turns it on).
SWITCH = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _switch(text: str) -> bool:
    if text.lower() not in SWITCH:
        raise ValueError(f"{text!r} is neither 1 (on) nor 0 (off).")
    return SWITCH[text.lower()]


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number.") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number.") from None


ENVIRONMENT_PARSERS: dict[type, Callable[[str], Any]] = {str: str, int: _whole, float: _number, bool: _switch}


def _from_environment(row: Field, environ: Mapping[str, str]) -> Any:
    """The row's value from its variable (an empty one counts as unset), else on a Space from Gradio's, else its
    default; a value the flag would refuse is refused, naming the variable."""
    spec = row_option(row)
    space = bool(environ.get("SPACE_ID"))
    for variable in (spec.env, spec.space_env if space else None):
        text = environ.get(variable, "") if variable else ""
        if not text:
            continue
        if spec.choices and text not in spec.choices:  # argparse checks the choices of flags, not of variables
            raise SettingsError(f"{variable}={text} is not one of {', '.join(spec.choices)}.")
        try:
            return (spec.parse or ENVIRONMENT_PARSERS[field_type(row)])(text)
        except ValueError as error:
            raise SettingsError(f"{variable}: {error}") from None
    return row.default


def _refusal(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """Why these settings cannot serve here, or None. The messages name the flags, which the variables stand for."""
    s, zero = settings, bool(environ.get("SPACES_ZERO_GPU"))
    if s.executor == "zerogpu" and not zero:
        return "--executor zerogpu runs on a Hugging Face ZeroGPU Space only (SPACES_ZERO_GPU is not set)."
    if s.executor != "zerogpu" and zero:
        return f"On a ZeroGPU Space only --executor zerogpu reaches the GPU, not {s.executor}."
    misplaced = [row for row in fields(s) if row_option(row).executor not in (None, s.executor)]
    if misplaced := [row for row in misplaced if getattr(s, row.name) is not None]:
        flags, verb = ", ".join(map(flag, misplaced)), "is" if len(misplaced) == 1 else "are"
        return f"{flags} {verb} for --executor {row_option(misplaced[0]).executor}."
    if any(count is not None and count < 1 for count in (s.jobs, s.workers, s.worker_threads)):
        return "--jobs, --workers and --worker-threads must be at least 1."
    if not environ.get("SPACE_ID") and not is_loopback(s.host) and not (s.auth or s.admin):
        return f"--host {s.host} opens the app to the network: also give --auth user:password."
    for name, login in (("--auth", s.auth), ("--admin", s.admin)):
        if login and not all(login.partition(":")[::2]):
            return f"{name} takes user:password."
    if s.auth and s.admin and s.auth.partition(":")[0] == s.admin.partition(":")[0]:
        return "--admin needs a user name of its own, not --auth's."
    if s.max_plot_cells < 1 or not s.max_plot_megapixels > 0:
        return "--max-plot-cells and --max-plot-megapixels must be positive."
    return None
