"""The house rules of the repository layout, read from the source itself: imports point down the
floors of the data flow, none hides inside a function, and files and functions stay short."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lowest floor first: a module may import its own package and the floors below it.
FLOORS = ["utils", "datasets", "models", ("losses", "optim", "runs"), ("training", "evaluation")]
ENTRY_POINTS = ("train.py", "test.py", "export.py")
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def floor_of(package: str) -> int:
    for index, floor in enumerate(FLOORS):
        if package == floor or package in floor:
            return index
    return len(FLOORS)  # entry points, scripts, benchmarks: the top


def library_modules():
    for floor in FLOORS:
        for package in (floor,) if isinstance(floor, str) else floor:
            yield from sorted((ROOT / package).rglob("*.py"))


def project_imports(tree: ast.AST):
    """``(node, top-level package)`` of every import of a project package."""
    packages = {p for floor in FLOORS for p in ((floor,) if isinstance(floor, str) else floor)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] in packages:
                yield node, name.split(".")[0]


@pytest.mark.parametrize("path", list(library_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_and_stay_at_module_level(path):
    tree = ast.parse(path.read_text())
    own = path.relative_to(ROOT).parts[0]
    upward = [f"line {node.lineno}: {package}" for node, package in project_imports(tree)
              if floor_of(package) > floor_of(own)]
    assert not upward, f"{path.name} imports up a floor: {upward}"
    for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        hidden = [node.lineno for node, _ in project_imports(function)]
        hidden += [n.lineno for n in ast.walk(function) if isinstance(n, ast.ImportFrom) and n.level > 0]
        assert not hidden, f"{path.name}: project import inside {function.name}() at lines {hidden}"


def all_sources():
    folders = [p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "tests"]
    yield from (ROOT / name for name in ENTRY_POINTS)
    for folder in folders:
        yield from sorted(folder.rglob("*.py"))


@pytest.mark.parametrize("path", list(all_sources()), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_stay_short(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path.name} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "parser" not in node.name:
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}: {node.name}() has {length} lines"


def test_no_import_cycle_between_folders():
    edges = {}
    for path in library_modules():
        own = path.relative_to(ROOT).parts[0]
        for _, package in project_imports(ast.parse(path.read_text())):
            if package != own:
                edges.setdefault(own, set()).add(package)
    mutual = [(a, b) for a in edges for b in edges[a] if a in edges.get(b, set())]
    assert not mutual, f"folders importing each other: {mutual}"
