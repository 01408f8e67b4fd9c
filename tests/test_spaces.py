"""sdplay as a Hugging Face Space: the README's Spaces configuration, and where the app listens on a Space."""

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from packaging.specifiers import SpecifierSet

from app import parse_args
from sdplay.runtime.catalog import CATALOG
from tests.helpers import ARTIFACTS, ROOT, free_port

SPACE_KEYS = {
    "title",
    "emoji",
    "sdk",
    "sdk_version",
    "app_file",
    "python_version",
    "short_description",
    "models",
    "suggested_hardware",
    "license",
}
HARDWARE = {"cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "zero-a10g", "a10g-small", "a10g-large", "a100-large"}


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n"), "Spaces read their configuration from a YAML block at the README's top"
    block, rest = text.removeprefix("---\n").split("\n---\n", 1)
    assert rest.lstrip().startswith("# sdplay")  # GitHub shows the block as a table, then the README as before
    return yaml.safe_load(block)


def requirement(name: str) -> SpecifierSet:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        spec = line.split("#")[0].strip()
        if spec.startswith(name) and spec[len(name)] in "<>=!~":
            return SpecifierSet(spec[len(name) :])
    raise AssertionError(f"{name} is not in requirements.txt")


def test_the_readme_starts_with_a_valid_space_configuration():
    config = front_matter()
    assert SPACE_KEYS <= config.keys()
    assert config["sdk"] == "gradio" and config["sdk_version"] in requirement("gradio")
    assert config["app_file"] == "app.py" and (ROOT / config["app_file"]).is_file()
    assert config["python_version"] == "3.11"  # a string: YAML would read 3.10 as 3.1
    assert (config["title"], config["emoji"]) == ("sdplay", "🎨")
    assert 0 < len(config["short_description"]) <= 60  # the Hub's limit
    assert config["models"] == list(CATALOG)
    assert config["suggested_hardware"] in HARDWARE
    assert config["license"] == "other" and not list(ROOT.glob("LICENSE*"))  # no licence file yet: it claims none


def test_on_a_space_the_address_and_port_come_from_gradio_and_need_no_login(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/sdplay")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    args = parse_args([])
    assert (args.host, args.port, args.auth) == ("0.0.0.0", 7861, None)


def test_on_a_space_sdplay_variables_win_and_gradio_variables_are_checked(capsys):
    space = {"SPACE_ID": "someone/sdplay", "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861"}
    settings = parse_args([], space | {"SDPLAY_HOST": "127.0.0.1", "SDPLAY_PORT": "7000"})
    assert (settings.host, settings.port, settings.models) == ("127.0.0.1", 7000, "catalog")
    assert parse_args([], space | {"SPACES_ZERO_GPU": "true"}).executor == "zerogpu"
    with pytest.raises(SystemExit):
        parse_args([], space | {"GRADIO_SERVER_PORT": "auto"})
    assert "GRADIO_SERVER_PORT: 'auto' is not a whole number." in capsys.readouterr().err


def test_elsewhere_a_network_address_still_needs_a_login(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    assert parse_args([]).host == "127.0.0.1"  # Gradio's variable alone opens nothing
    with pytest.raises(SystemExit):
        parse_args(["--host", "0.0.0.0"])


def test_a_space_serves_on_all_addresses_without_auth(tiny_model: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDPLAY_")}
    env |= {"SPACE_ID": "x", "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": str(port)}
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "space.log").open("w") as log:
        command = [sys.executable, "app.py", "--model", str(tiny_model), "--offline"]
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    response = requests.get(f"http://127.0.0.1:{port}/", timeout=2)
                    break
                except requests.ConnectionError:
                    assert process.poll() is None and time.monotonic() < deadline, "see tests/artifacts/space.log"
                    time.sleep(0.5)
            assert response.status_code == 200  # no login page
            listening = {c.laddr for c in psutil.Process(process.pid).net_connections() if c.status == "LISTEN"}
            assert ("0.0.0.0", port) in listening
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_on_zerogpu_spaces_is_imported_before_torch(tmp_path: Path):
    """ZeroGPU's `spaces` patches torch's CUDA: it must come first. A stand-in package says what it found."""
    stand_in = 'import sys\nprint("spaces imported; torch already:", "torch" in sys.modules)\n'
    (tmp_path / "spaces.py").write_text(stand_in)
    env = os.environ | {"SPACES_ZERO_GPU": "true", "PYTHONPATH": str(tmp_path)}
    shown = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert shown.returncode == 0 and "spaces imported; torch already: False" in shown.stdout
    env.pop("SPACES_ZERO_GPU")  # off ZeroGPU it is not imported even where installed
    shown = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert shown.returncode == 0 and "spaces imported" not in shown.stdout
