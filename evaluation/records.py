"""``results.json``: the metrics of every evaluation of a run, kept side by side.

Several ``test.py`` processes may evaluate one run at the same time (two directions, two
altitudes): each record is merged into the file under an exclusive lock and written atomically,
so no process drops another's results and a reader never sees a half-written file.
"""
import json
from pathlib import Path

from utils.errors import UserError
from utils.files import atomic_write_text, locked

RESULTS_FILE = "results.json"
LOCK_SUFFIX = ".lock"


def load_results(path: Path) -> dict:
    """The records of ``path`` (``{}`` when it does not exist yet); a damaged file is a UserError."""
    path = Path(path)
    if not path.exists():
        return {}
    if not path.is_file():
        raise UserError(f"{path} is not a file; move it away so the results can be saved")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); fix or delete it") from None
    if not isinstance(results, dict):
        raise UserError(f"{path} does not hold a JSON object; fix or delete it")
    return results


def lock_path(path: Path) -> Path:
    """The hidden lock file guarding ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


def record_result(path: Path, key: str, record: dict) -> None:
    """Store ``record`` under ``key`` in ``path``, keeping every other key as another process
    may just have written it."""
    path = Path(path)
    with locked(lock_path(path)):
        results = load_results(path)
        results[key] = record
        atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True) + "\n")
