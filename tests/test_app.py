"""The command line: safe defaults, environment-variable equivalents, and refusals that explain themselves."""

import pytest

from app import DEFAULT_MODEL, logins, parse_args


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
    assert logins(parse_args([])) is None
    assert logins(parse_args(["--auth", "class:pw:with:colons"])) == [("class", "pw:with:colons")]
    both = parse_args(["--auth", "class:pw", "--admin", "teacher:chalk"])
    assert logins(both) == [("class", "pw"), ("teacher", "chalk")]
    assert logins(parse_args(["--host", "0.0.0.0", "--admin", "me:pw"])) == [("me", "pw")]  # a login page too
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
