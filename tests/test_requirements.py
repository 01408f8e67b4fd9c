"""Every package our code imports is declared: a package that only arrives with another one (pandas with gradio)
is a missing dependency waiting to happen. CI proves the rest by installing into a fresh virtual environment."""

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Our own modules: the package, the app, the tests, and the bench scripts (which import each other by name, and the
# tests import bench.handmade).
LOCAL = {"sdplay", "app", "tests", "bench"} | {path.stem for path in (ROOT / "bench").glob("*.py")}


def imported_modules(files: list[Path]) -> dict[str, Path]:
    """Top-level module names imported by absolute imports in `files`, each with one file that imports it; an
    import inside `try: ... except ImportError` is optional (`spaces` on ZeroGPU) and not counted."""
    found: dict[str, Path] = {}
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        optional = {id(inner) for node in ast.walk(tree) if _catches_import_error(node) for inner in node.body}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.partition(".")[0], path)
    return found


def _catches_import_error(node: ast.AST) -> bool:
    names = {"ImportError", "ModuleNotFoundError"}
    return isinstance(node, ast.Try) and any(
        isinstance(handler.type, ast.Name) and handler.type.id in names for handler in node.handlers
    )


def declared(requirements: Path) -> set[str]:
    """Normalised distribution names in a requirements file, following `-r` includes."""
    names: set[str] = set()
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            names |= declared(requirements.parent / line[2:].strip())
        elif line:
            names.add(normalise(re.split(r"[<>=!~\[; ]", line)[0]))
    return names


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def undeclared(files: list[Path], requirements: Path) -> dict[str, Path]:
    distributions = packages_distributions()
    allowed = declared(requirements)
    missing = {}
    for module, path in imported_modules(files).items():
        if module in sys.stdlib_module_names or module in LOCAL:
            continue
        if not {normalise(d) for d in distributions.get(module, [module])} & allowed:
            missing[module] = path.relative_to(ROOT)
    return missing


def test_the_app_imports_only_packages_in_requirements_txt():
    files = [ROOT / "app.py", *sorted((ROOT / "sdplay").rglob("*.py"))]
    assert undeclared(files, ROOT / "requirements.txt") == {}


def test_tests_and_benchmarks_import_only_packages_in_requirements_dev_txt():
    files = sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py"))
    assert undeclared(files, ROOT / "requirements-dev.txt") == {}
