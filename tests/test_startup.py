"""Start-up: what `python app.py` imports and prints before it serves, and work it skips (bench/startup.py times it)."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from sdplay.runtime import models
from sdplay.runtime.composition import local_manager
from tests.helpers import ARTIFACTS, ROOT

# What app.py's main() imports before it loads the model; printing which diffusers pipeline families came with it.
IMPORT_THE_APP = """
import json, sys
import sdplay.runtime.models, sdplay.page
families = [m for m, module in sys.modules.items() if m.startswith("diffusers.pipelines.") and m.count(".") == 2
            and hasattr(module, "__path__")]
print(json.dumps(sorted(families)))
"""


@pytest.fixture(scope="module")
def app_imports() -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", IMPORT_THE_APP], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )


def test_starting_the_app_prints_no_torchvision_warning(app_url):
    log = (ARTIFACTS / "app.log").read_text()
    assert "sdplay: loading" in log
    assert "torchvision" not in log


def test_importing_the_app_prints_nothing(app_imports):
    assert app_imports.stderr == ""


def test_the_app_imports_only_the_stable_diffusion_pipelines(app_imports):
    # diffusers' AutoPipelineFor* would import the code of every pipeline family it knows, dozens of them.
    assert json.loads(app_imports.stdout) == ["diffusers.pipelines.stable_diffusion"]


def test_flags_are_parsed_without_importing_the_libraries():
    libraries = "{'torch', 'diffusers', 'gradio', 'PIL', 'numpy'}"
    check = f"import sys, app; app.parse_args([]); print(sorted({libraries} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_first_load_skips_the_garbage_collection(tiny_model, monkeypatch):
    collections = []
    monkeypatch.setattr(models, "gc", SimpleNamespace(collect=lambda: collections.append(1)))
    manager = local_manager(device="cpu")
    manager.load(str(tiny_model))
    assert collections == []  # nothing to release yet: a full collection after the imports costs ~0.3 s
    manager.load(str(tiny_model))
    assert collections == [1]  # a switch still gives the old model's memory back
