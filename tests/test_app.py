"""The command line: safe defaults, environment-variable equivalents, and refusals that explain themselves; the one
table of options (sdplay/settings.py) behind the flags, the variables, --help and the README."""

import re
from dataclasses import fields
from pathlib import Path

import pytest

from app import DEFAULT_MODEL, parse_args
from sdplay.settings import EXECUTORS, MODEL_POLICIES, Settings, field_type, flag, row_option

README = Path(__file__).resolve().parents[1] / "README.md"


def test_defaults_are_safe():
    args = parse_args([])
    assert (args.host, args.port, args.model, args.auth, args.offline) == (
        "127.0.0.1",
        7860,
        DEFAULT_MODEL,
        None,
        False,
    )


def test_environment_variables_stand_in_for_flags(monkeypatch):
    monkeypatch.setenv("SDPLAY_MODEL", "stabilityai/sd-turbo")
    monkeypatch.setenv("SDPLAY_PORT", "9000")
    monkeypatch.setenv("SDPLAY_OFFLINE", "1")
    args = parse_args([])
    assert (args.model, args.port, args.offline) == ("stabilityai/sd-turbo", 9000, True)
    assert parse_args(["--port", "9100"]).port == 9100  # flags win over the environment


def test_listening_beyond_loopback_needs_auth(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--host", "0.0.0.0"])
    assert "--auth" in capsys.readouterr().err
    assert parse_args(["--host", "0.0.0.0", "--auth", "ann:secret"]).auth == "ann:secret"
    assert parse_args(["--host", "::1"]).host == "::1"
    with pytest.raises(SystemExit):
        parse_args(["--host", "0.0.0.0", "--auth", "no-colon"])


@pytest.fixture
def no_policy_environment(monkeypatch):
    for name in ("SPACE_ID", "SDPLAY_MODELS", "SDPLAY_ADMIN", "SDPLAY_AUTH"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_model_switching_defaults_to_the_catalog_where_strangers_meet(no_policy_environment, capsys):
    monkeypatch = no_policy_environment
    assert parse_args([]).models == "any"  # your own machine
    assert parse_args(["--host", "0.0.0.0", "--auth", "class:pw"]).models == "catalog"
    assert parse_args(["--host", "0.0.0.0", "--auth", "class:pw", "--models", "any"]).models == "any"
    monkeypatch.setenv("SPACE_ID", "ann/sdplay")
    assert parse_args([]).models == "catalog"
    monkeypatch.setenv("SDPLAY_MODELS", "locked")
    assert parse_args([]).models == "locked"
    monkeypatch.setenv("SDPLAY_MODELS", "everything")
    with pytest.raises(SystemExit):
        parse_args([])
    assert "SDPLAY_MODELS=everything is not one of catalog, any, locked" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--models", "everything"])


def test_the_admin_is_a_login_of_its_own(no_policy_environment, capsys):
    assert parse_args([]).logins() is None
    assert parse_args(["--auth", "class:pw:with:colons"]).logins() == [("class", "pw:with:colons")]
    both = parse_args(["--auth", "class:pw", "--admin", "teacher:chalk"])
    assert both.logins() == [("class", "pw"), ("teacher", "chalk")] and both.admin_user == "teacher"
    assert parse_args(["--host", "0.0.0.0", "--admin", "me:pw"]).logins() == [("me", "pw")]  # a login page too
    no_policy_environment.setenv("SDPLAY_ADMIN", "teacher:chalk")
    assert parse_args([]).admin == "teacher:chalk"
    for flags, message in [
        (["--admin", "teacher"], "--admin takes user:password"),
        (["--admin", "teacher:"], "--admin takes user:password"),
        (["--auth", ":pw"], "--auth takes user:password"),
        (["--auth", "teacher:pw"], "--admin needs a user name of its own"),
    ]:
        with pytest.raises(SystemExit):
            parse_args(flags)
        assert message in capsys.readouterr().err


def test_max_disk_reads_sizes_as_people_write_them(monkeypatch, capsys):
    monkeypatch.delenv("SDPLAY_MAX_DISK", raising=False)
    assert parse_args([]).max_disk == 2 * 10**9
    monkeypatch.setenv("SDPLAY_MAX_DISK", "500MB")
    assert parse_args([]).max_disk == 500 * 10**6
    assert parse_args(["--max-disk", "64MiB"]).max_disk == 64 * 2**20
    with pytest.raises(SystemExit):
        parse_args(["--max-disk", "lots"])
    assert "--max-disk: 'lots' is not a size: write it like 2GB, 500MB or 64MiB." in capsys.readouterr().err


# For each row of the table, a value other than its default that the other settings let stand.
SAMPLES = {
    "model": "someone/model",
    "config": "./configs",
    "host": "::1",
    "port": "9001",
    "device": "cpu",
    "dtype": "float32",
    "offline": "1",
    "auth": "ann:pw",
    "models": "locked",
    "admin": "teacher:chalk",
    "max_size": "512",
    "max_plot_cells": "9",
    "max_plot_megapixels": "2.5",
    "max_disk": "500MB",
    "cpu_offload": "1",
    "vae_tiling": "1",
    "attention_slicing": "1",
    "jobs": "3",
    "executor": "ray",
    "workers": "2",
    "ray_address": "auto",
    "worker_threads": "3",
}
ROWS = fields(Settings)


def row_id(row) -> str:
    return row.name


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_a_flag_and_its_variable_set_the_same_setting(row):
    assert row.name in SAMPLES, "give the new row a sample value above"
    text, spec = SAMPLES[row.name], row_option(row)
    needs = ["--executor", spec.executor] if spec.executor else []
    given = [flag(row)] if field_type(row) is bool else [flag(row), text]
    by_flag = Settings.from_command_line(needs + given, environ={})
    by_variable = Settings.from_command_line(needs, environ={spec.env: text})
    assert by_flag == by_variable and getattr(by_flag, row.name) != row.default
    assert Settings.from_command_line(needs, environ={spec.env: ""}) == Settings.from_command_line(needs, environ={})


@pytest.mark.parametrize(
    "row", [row for row in ROWS if field_type(row) is not str or row_option(row).choices], ids=row_id
)
def test_a_variable_with_a_value_its_flag_would_refuse_is_refused_by_name(row, capsys):
    with pytest.raises(SystemExit):
        Settings.from_command_line([], environ={row_option(row).env: "nonsense"})
    assert f"error: {row_option(row).env}" in capsys.readouterr().err
    if field_type(row) is not bool:
        with pytest.raises(SystemExit):
            Settings.from_command_line([flag(row), "nonsense"], environ={})
        assert f"error: argument {flag(row)}" in capsys.readouterr().err


def test_switches_read_the_usual_words_from_a_variable():
    for text, on in [("1", True), ("true", True), ("Yes", True), ("on", True), ("0", False), ("false", False)]:
        assert Settings.from_command_line([], environ={"SDPLAY_OFFLINE": text}).offline is on
    assert Settings.from_command_line(["--offline"], environ={"SDPLAY_OFFLINE": "0"}).offline  # the flag wins


def test_the_help_and_the_readme_name_every_flag_and_variable(capsys):
    with pytest.raises(SystemExit):
        Settings.from_command_line(["--help"], environ={})
    shown = capsys.readouterr().out
    readme = README.read_text()
    table = readme[readme.index("| flag | environment variable |") :].split("\n\n", 1)[0]
    for row in ROWS:
        spec = row_option(row)
        assert f"{flag(row)} " in shown and f"[{spec.env}" in shown
        assert re.search(rf"`{re.escape(flag(row))}[` ]", table), f"README's table of flags lacks {flag(row)}"
        assert re.search(rf"`{spec.env}[`=]", table), f"README's table of flags lacks {spec.env}"


def test_the_runtime_takes_views_of_the_settings():
    from sdplay.runtime.executor import EXECUTORS as RUNTIME_EXECUTORS
    from sdplay.runtime.models import MemoryOptions, SwitchPolicy
    from sdplay.runtime.ray_worker import WorkerOptions
    from sdplay.runtime.request import Limits, PlotLimits

    assert set(MODEL_POLICIES) == set(SwitchPolicy) and EXECUTORS == RUNTIME_EXECUTORS
    flags = ["--executor", "ray", "--max-size", "512", "--max-plot-cells", "9", "--cpu-offload", "--offline"]
    settings = Settings.from_command_line([*flags, "--device", "cpu", "--worker-threads", "2"], environ={})
    assert settings.limits() == Limits(max_size=512)
    assert settings.plot_limits() == PlotLimits(max_cells=9, max_megapixels=64.0)
    assert settings.memory() == MemoryOptions(cpu_offload=True)
    assert settings.worker_options() == WorkerOptions("cpu", None, True, MemoryOptions(cpu_offload=True), 2)
    assert Settings().limits() == Limits() and Settings().plot_limits() == PlotLimits()  # the same defaults
    assert Settings().memory() == MemoryOptions()
