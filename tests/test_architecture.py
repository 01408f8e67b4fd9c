"""The code's shape, held by tools rather than by review: import-linter's contracts (pyproject.toml), the contract
that keeps gradio out covering every module that does without it, and no function longer than 80 lines."""

import ast
import tomllib
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, ast.Module]:
    """sdplay's modules (not its packages' __init__) by dotted name, parsed."""
    found = {}
    for path in sorted((ROOT / "sdplay").rglob("*.py")):
        if path.name == "__init__.py":
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def imported(tree: ast.Module) -> set[str]:
    """The top-level packages a module imports, anywhere in it (functions and TYPE_CHECKING blocks included)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_import_contracts_hold(monkeypatch, capsys):
    """Layers (page → features → UI kit → runtime), independent features but for the declared uses, no gradio
    below the UI, and no circles (pyproject.toml's [tool.importlinter])."""
    monkeypatch.chdir(ROOT)
    code = lint_imports(no_cache=True)
    report = capsys.readouterr().out
    assert code == 0, report
    assert "0 broken" in report and "4 kept" in report


def test_every_module_without_gradio_is_kept_without_it_by_the_contract():
    """A new engine module is gradio-free until someone adds gradio to it: the forbidden contract must name it
    (or a package above it), so that the linter, not a reviewer, keeps it that way."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (forbidden,) = [contract for contract in config if contract["type"] == "forbidden"]
    sources = forbidden["source_modules"]
    gradio_free = [name for name, tree in modules().items() if "gradio" not in imported(tree)]
    uncovered = [name for name in gradio_free if not any(name == s or name.startswith(f"{s}.") for s in sources)]
    assert uncovered == [], f"add these gradio-free modules to the forbidden contract in pyproject.toml: {uncovered}"


def test_no_function_is_longer_than_80_lines():
    """Small functions (DESIGN): a Gradio `build` lays out and wires, calling named functions defined beside it."""
    paths = [ROOT / "app.py", *sorted((ROOT / "sdplay").rglob("*.py"))]
    too_long = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert too_long == []
