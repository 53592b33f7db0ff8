"""The house rules of the repository layout, read from the source itself: imports point down the
floors of the data flow (the import-linter contracts in .importlinter), none hides inside a function,
test modules share tests/helpers instead of importing each other, and files (<= 400 lines) and
functions (<= 60 lines besides the docstring) stay short."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "datasets", "models", "losses", "optim", "runs", "training", "evaluation")
ENTRY_POINTS = ("train.py", "test.py", "export.py")
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def lint_imports(cwd=ROOT):
    """``lint-imports`` of this environment run on the repository at ``cwd``; returns the finished process."""
    return subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_imports_point_down_the_floors():
    done = lint_imports()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("planted, package", [("models/binary.py", "runs.layout"),
                                              ("utils/files.py", "train"),
                                              ("evaluation/metrics.py", "training")])
def test_the_contracts_catch_an_upward_import(tmp_path, planted, package):
    """A copy of the packages with one upward import breaks a contract: the check can fail."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    with open(tmp_path / planted, "a") as f:
        f.write(f"\nimport {package}\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1 and "1 broken" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{Path(planted).with_suffix('').as_posix().replace('/', '.')} -> {package}" in done.stdout
    assert f"import {package}" not in (ROOT / planted).read_text()


def project_imports(tree: ast.AST):
    """Line numbers of every import of a project package, relative imports included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        if getattr(node, "level", 0) > 0 or any(name.split(".")[0] in PACKAGES for name in names):
            yield node.lineno


def library_modules():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", list(library_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_stay_at_module_level(path):
    for function in (n for n in ast.walk(ast.parse(path.read_text()))
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        hidden = list(project_imports(function))
        assert not hidden, f"{path.name}: project import inside {function.name}() at lines {hidden}"


def all_sources():
    folders = [p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "tests"]
    yield from (ROOT / name for name in ENTRY_POINTS)
    for folder in folders:
        yield from sorted(folder.rglob("*.py"))


def docstring_lines(function) -> int:
    """Lines of the function's docstring: a long explanation is welcome, long code is not."""
    first = function.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


@pytest.mark.parametrize("path", list(all_sources()), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_stay_short(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path.name} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1 - docstring_lines(node)
            assert length <= MAX_FUNCTION_LINES, f"{path.name}: {node.name}() has {length} lines besides its docstring"


@pytest.mark.parametrize("path", sorted((ROOT / "tests").glob("test_*.py")), ids=lambda p: p.name)
def test_test_modules_share_helpers_not_each_other(path):
    imported = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported.append(node.module or "")
    assert not [name for name in imported if name.startswith("test_")], "import shared code from tests/helpers"
