"""The command line: safe defaults, environment-variable equivalents, and refusals that explain themselves."""

import pytest

from app import DEFAULT_MODEL, parse_args


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
