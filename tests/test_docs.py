"""README.md and docs/*.md cannot drift from the code.

* Every ``--flag`` they write exists in the parser of the command it is written for. In a fenced
  code block a flag belongs to the command on its line (continuation lines joined; ``;``, ``&&`` and
  ``|`` separate commands): the flags after ``train.py``, ``test.py``, ``export.py``,
  ``scripts/NAME.py``, ``python -m MODULE`` or a recipe script (``train_and_evaluate*.sh`` hands its
  arguments to train.py). Flags before the command are its launcher's (``torchrun``); a command that
  takes no flags (``make``, ``scripts/demo.sh``) takes none, and a line with flags but no known
  command fails. In prose, a backticked span that holds a command is read the same way; any other
  backticked flag belongs to the commands named in the same sentence (a table row or list item is one
  sentence) or, when the sentence names none, to some command's parser. A shell comment's flags are
  read as prose.
* Every repository path they name in backticks exists: a path whose first folder is one of the
  repository's, or a source file named from inside a folder (``csrc/ops.cpp``); paths inside datasets
  and run folders are not the repository's. ``tests/x.py::test_name`` names a test that exists. Every
  relative link reaches a file, and its ``#anchor`` a heading there.
* README's folder map names every module of every package, and README names every script and
  every benchmark that runs as a command.
* The flags the documents say ``--resume`` may change are the code's.
"""
import argparse
import importlib
import importlib.util
import inspect
import os
import re
from fnmatch import fnmatch
from functools import lru_cache
from pathlib import Path
from unittest import mock

import pytest

from training.options import RESUME_OVERRIDES
from training.original_flags import REFUSED_FLAGS

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z*(\[])")
SCRIPT_NAME = re.compile(r"(?<![\w/.-])((?:scripts/)?\w+\.py|train_and_evaluate\w*\.sh)\b|python -m ([\w.]+)")
RECIPE = re.compile(r"(?:^|/)train_and_evaluate[\w*$]*\.sh$")
SOURCE_FILE = re.compile(r"\.(py|sh|md|txt|ini|cfg|toml|c|cpp|h|inc)$")
PATH_LIKE = re.compile(r"^[\w.\-/*…]+(?:::\w+)?$")
OUTSIDE = {"data", "checkpoints", "demo_runs", "weights"}  # where datasets, runs and downloads go, not the repository
NO_FLAGS = {"make"}          # commands that take no flags
UNCHECKED = {"pip", "pytest"}  # other projects' tools: their flags are theirs
TRAIN_EXTRAS = frozenset(REFUSED_FLAGS)  # original flags train.py recognises, to refuse them by name


# --------------------------------------------------------------------------- commands and their parsers


class _Captured(Exception):
    def __init__(self, parser):
        super().__init__("parser captured")
        self.parser = parser


def _capture(parser, *args, **kwargs):
    raise _Captured(parser)


def _module_of(command: str):
    if command.startswith("scripts/"):
        spec = importlib.util.spec_from_file_location(f"docs_{Path(command).stem}", ROOT / command)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    name = command[:-3] if command.endswith(".py") else command
    assert importlib.util.find_spec(name) is not None, f"{command}: no such script or module"
    return importlib.import_module(name)


def _parser_of(module) -> argparse.ArgumentParser:
    """The module's parser: from its parser-building function, or caught as its ``main`` parses."""
    for name in ("get_args_parser", "build_parser"):
        if callable(getattr(module, name, None)):
            return getattr(module, name)()
    entry = getattr(module, "parse_args", None) or getattr(module, "main", None)
    assert entry is not None, f"{module.__name__} has no parser"
    source = Path(inspect.getsourcefile(inspect.unwrap(entry))).read_text()
    assert "ArgumentParser" in source, f"{module.__name__} has no parser"
    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", _capture):
        with pytest.raises(_Captured) as caught:
            entry([])
    return caught.value.parser


@lru_cache(maxsize=None)
def flags_of(command: str) -> frozenset:
    """Every option string ``command`` accepts (``train.py``, ``scripts/compare_runs.py``, ``runs.convert``)."""
    if command in NO_FLAGS or command.endswith(".sh"):
        return frozenset()
    flags = _option_strings(_parser_of(_module_of(command)))
    return frozenset(flags | (TRAIN_EXTRAS if command == "train.py" else set()))


def _option_strings(parser: argparse.ArgumentParser) -> set:
    """The parser's ``--`` options and those of its sub-commands (``search.py build``)."""
    flags = set()
    for action in parser._actions:
        flags |= {option for option in action.option_strings if option.startswith("--")}
        if isinstance(action, argparse._SubParsersAction):
            flags = flags.union(*(_option_strings(sub) for sub in action.choices.values()))
    return flags


def all_commands() -> list:
    """Every command of the repository that parses flags."""
    commands = [p.name for p in sorted(ROOT.glob("*.py")) if "ArgumentParser" in p.read_text()]
    commands += [f"scripts/{p.name}" for p in sorted((ROOT / "scripts").glob("*.py"))]
    folders = [p for p in ROOT.iterdir() if p.is_dir() and p.name[0] not in "._" and p.name not in ("tests", "scripts")]
    for path in sorted(p for folder in folders for p in folder.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "ArgumentParser" not in path.read_text():
            continue
        if '__name__ == "__main__"' in path.read_text() or (path.parent / "__main__.py").exists():
            commands.append(".".join(parts[:-1] if (path.parent / "__main__.py").exists() else parts))
    return sorted(set(commands))


@lru_cache(maxsize=None)
def any_flag() -> frozenset:
    return frozenset().union(*(flags_of(command) for command in all_commands()))


def _command_at(tokens: list, i: int):
    """The command that ``tokens[i]`` starts, or None."""
    token = tokens[i].strip("\"'")
    if token == "-m" and i + 1 < len(tokens):
        return tokens[i + 1]
    if RECIPE.search(token):
        return "train.py"
    if re.fullmatch(r"(scripts/)?[\w.-]+\.(py|sh)", token) or token in NO_FLAGS | UNCHECKED:
        return token
    return None


def commands_in(line: str) -> list:
    """``(command or None, flags after it)`` for each command of one shell line (comments removed)."""
    found = []
    for part in re.split(r";|&&|\|\||\|", line):
        tokens = part.split()
        for i in range(len(tokens)):
            command = _command_at(tokens, i)
            if command is not None:
                start = i + 2 if tokens[i] == "-m" else i + 1
                found.append((command, FLAG.findall(" ".join(tokens[start:]))))
                break
        else:
            if FLAG.search(part):
                found.append((None, FLAG.findall(part)))
    return found


def wrong_flags(command, flags, where: str) -> list:
    """Flags ``command`` does not take; a ``python -m`` module must exist even when given none."""
    if command is None:
        return [f"{where}: {' '.join(flags)} on a line with no known command"]
    if command in UNCHECKED or not flags and (command.endswith((".py", ".sh")) or command in NO_FLAGS):
        return []
    known = flags_of(command)
    return [f"{where}: {command} has no flag {flag}" for flag in flags if flag not in known]


# --------------------------------------------------------------------------- reading the documents


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if ROOT in path.parents else path.name


def blocks(path: Path) -> list:
    """``("code", first line, [(line number, logical line)])`` and ``("text", first line, text)``
    units; a text unit is a paragraph, heading, list item or table row."""
    units, lines, start, in_code = [], [], 1, False

    def flush(next_start):
        nonlocal lines, start
        if lines:
            units.append(("code", start, _joined(lines, start)) if in_code else ("text", start, " ".join(lines)))
        lines, start = [], next_start

    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            flush(number + 1)
            in_code = not in_code
        elif in_code:
            lines.append(line)
        elif not line.strip() or line.startswith(("#", "|")) or re.match(r"\s*(- |\d+\. )", line):
            flush(number if line.strip() else number + 1)
            lines.extend([line] if line.strip() else [])
            if line.startswith(("#", "|")):
                flush(number + 1)
        else:
            lines.append(line)
    flush(0)
    return units


def _joined(lines: list, start: int) -> list:
    """``(line number, text)`` of each logical line: one ending in a backslash continues on the next."""
    logical, pending, first = [], [], start
    for number, line in enumerate(lines, start):
        first = first if pending else number
        pending.append(line.rstrip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            logical.append((first, " ".join(pending)))
            pending = []
    return [(number, text) for number, text in logical + [(first, " ".join(pending))] if text.strip()]


def sentences(text: str) -> list:
    """Split at sentence ends outside backticked spans."""
    spans = SPAN.findall(text)
    masked = SPAN.sub("`\0`", text)
    parts = SENTENCE_END.split(masked)
    spans = iter(spans)
    return [re.sub("\0", lambda _: next(spans), part) for part in parts]


def named_commands(sentence: str) -> set:
    names = set()
    for script, module in SCRIPT_NAME.findall(sentence):
        names.add("train.py" if script and RECIPE.search(script) else script or module)
    return {name for name in names if name not in UNCHECKED}


def prose_flag_errors(sentence: str, where: str) -> list:
    errors = []
    for span in SPAN.findall(sentence):
        commands = [c for c in commands_in(span) if c[0] is not None]
        for command, flags in commands:
            errors += wrong_flags(command, flags, where)
        if commands or not FLAG.search(span):
            continue
        named = named_commands(sentence) or set(all_commands())
        known = frozenset().union(*(flags_of(command) for command in named))
        errors += [f"{where}: {flag} is not a flag of {', '.join(sorted(named))}"
                   for flag in FLAG.findall(span) if flag not in known]
    return errors


def code_flag_errors(line: str, where: str) -> list:
    comment = re.search(r"(^|\s)#", line)
    code, comment = (line, "") if comment is None else (line[:comment.start()], line[comment.end():])
    errors = [e for command, flags in commands_in(code) for e in wrong_flags(command, flags, where)]
    return errors + [f"{where}: {flag} is no command's flag" for flag in FLAG.findall(comment)
                     if flag not in any_flag()]


def flag_errors(path: Path) -> list:
    errors = []
    for kind, start, content in blocks(path):
        if kind == "code":
            errors += [e for number, line in content for e in code_flag_errors(line, f"{_shown(path)}:{number}")]
        else:
            where = f"{_shown(path)}:{start}"
            errors += [e for sentence in sentences(content) for e in prose_flag_errors(sentence, where)]
    return errors


# --------------------------------------------------------------------------- paths and links


@lru_cache(maxsize=None)
def repository_files() -> tuple:
    """Every file of the repository, relative to its root: hidden folders (``.venv``) and the
    folders of datasets and runs are not walked."""
    files = []
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and not (folder == str(ROOT) and d in OUTSIDE)]
        files += [str(Path(folder, name).relative_to(ROOT)) for name in names]
    return tuple(files)


def missing_path(name: str):
    """Why ``name`` names no repository path, or None. A path from the repository root must exist;
    a source file named from inside a folder (``csrc/ops.cpp``) must end some repository path."""
    first = name.split("/")[0]
    if first in OUTSIDE or first.startswith("."):
        return None
    if (ROOT / first).exists():
        return None if list(ROOT.glob(name.rstrip("/"))) else f"{name} does not exist"
    if SOURCE_FILE.search(name) and not any(fnmatch(f, name) or fnmatch(f, "*/" + name) for f in repository_files()):
        return f"{name} does not exist"
    return None


def path_errors(path: Path) -> list:
    errors = []
    for kind, start, content in blocks(path):
        for span in SPAN.findall(content) if kind == "text" else []:
            name, _, test = span.partition("::")
            if not PATH_LIKE.match(span) or not ("/" in name or SOURCE_FILE.search(name)):
                continue
            problem = missing_path(name)
            if problem is None and test and not re.search(rf"^def {test}\(", (ROOT / name).read_text(), re.MULTILINE):
                problem = f"{name} has no test {test}"
            errors += [f"{_shown(path)}:{start}: {problem}"] if problem else []
    return errors


def slug(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lstrip("#").strip().replace("`", "").lower())
    return text.replace(" ", "-")


def link_errors(path: Path) -> list:
    errors = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file) if file else path
            where = f"{_shown(path)}:{number}"
            if not linked.is_file():
                errors.append(f"{where}: link to {file}, which does not exist")
            elif anchor and anchor not in {slug(h) for h in linked.read_text().splitlines() if h.startswith("#")}:
                errors.append(f"{where}: {linked.name} has no heading #{anchor}")
    return errors


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_exists_in_the_parser_of_its_command(document):
    assert flag_errors(document) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_and_link_exists(document):
    assert path_errors(document) + link_errors(document) == []


def test_the_folder_map_names_every_module():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Folder map", 1)[1].split("```")[1]
    entries = re.split(r"\n(?=\S)", section)
    missing = []
    for package in sorted(p.parent for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests"):
        entry = next((e for e in entries if e.startswith(f"{package.name}/")), "")
        names = [p.name for p in package.glob("*.py") if not p.name.startswith("__")]
        names += [f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").exists()]
        missing += [f"{package.name}/{name}" for name in names if not re.search(rf"(?<![\w/]){re.escape(name)}", entry)]
    tools = [f"scripts/{p.name}" for p in (ROOT / "scripts").iterdir()]
    tools += [p.stem for p in (ROOT / "benchmarks").glob("*.py") if '__name__ == "__main__"' in p.read_text()]
    missing += [tool for tool in tools if tool not in readme]
    assert missing == []


def test_the_flags_resume_may_change_are_the_codes():
    found = [sentence for path in DOCUMENTS for kind, _, content in blocks(path) if kind == "text"
             for sentence in sentences(content) if "only these flags may change" in sentence]
    assert found, "no document lists the flags --resume may change"
    for sentence in found:
        assert set(FLAG.findall(sentence)) - {"--resume"} == {f"--{name}" for name in RESUME_OVERRIDES}


def test_the_checks_catch_a_planted_flag_and_path(tmp_path):
    """The checks above can fail: a made-up flag, in a code line and in prose, and a made-up path."""
    planted = tmp_path / "planted.md"
    planted.write_text("```bash\npython train.py --name run --no_such_flag\n```\n\n"
                       "Evaluate with `test.py` and `--no_such_flag`. See `models/no_such_module.py`.\n")
    assert flag_errors(planted) == ["planted.md:2: train.py has no flag --no_such_flag",
                                    "planted.md:5: --no_such_flag is not a flag of test.py"]
    assert path_errors(planted) == ["planted.md:5: models/no_such_module.py does not exist"]
