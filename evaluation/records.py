"""``results.json``: every evaluation of a run, each under its own key, kept side by side.

A key names everything that changes the numbers — dataset and altitude, direction, checkpoint,
input size, flip TTA, engine, device and precision — so evaluating at another size, from a packed file or
in another precision adds a record instead of replacing one. Each record also carries the test
folder and the time. Several ``test.py`` processes may evaluate one run at once: records are
merged into the file under an exclusive lock and written atomically, so no process drops another's
results and a reader never sees a half-written file.
"""
import json
from pathlib import Path
from typing import Optional

from utils.errors import UserError
from utils.files import atomic_write_text, locked

RESULTS_FILE = "results.json"
LOCK_SUFFIX = ".lock"


def record_key(record: dict) -> str:
    """``university/Drone->Satellite/last.pth/256x256/flip/float/cpu-fp32`` (the altitude follows a
    SUES-200 dataset name: ``sues/150/...``; the last part is the device type and precision)."""
    parts = [record["dataset"]] + ([str(record["altitude"])] if record.get("altitude") is not None else [])
    parts += [record["direction"], record["checkpoint"], f"{record['h']}x{record['w']}",
              "flip" if record["flip"] else "noflip", record["engine"],
              f"{record['device'].split()[0]}-{record['precision']}"]
    return "/".join(parts)


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


def record_result(path: Path, record: dict) -> str:
    """Store ``record`` under its :func:`record_key` in ``path``, keeping every other key as another
    process may just have written it; returns the key."""
    path, key = Path(path), record_key(record)
    with locked(lock_path(path)):
        results = load_results(path)
        results[key] = record
        atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True) + "\n")
    return key


def _fields(key: str, record: dict) -> dict:
    """A record's identifying fields; records written before keys named them (``dataset[/alt]/
    direction``) are read from their key."""
    if "direction" in record:
        return record
    parts = key.split("/")
    return dict(record, dataset=parts[0], direction=parts[-1],
                altitude=int(parts[1]) if len(parts) == 3 else None)


def latest_record(results: dict, dataset: str, direction: str, altitude: Optional[int] = None,
                  **match) -> Optional[dict]:
    """The newest record of one dataset/altitude/direction whose other fields equal ``match``
    (e.g. ``h=256, w=256``), or None."""
    candidates = [
        _fields(key, record) for key, record in results.items() if isinstance(record, dict)
    ]
    candidates = [r for r in candidates if (r["dataset"], r["direction"], r.get("altitude")) ==
                  (dataset, direction, altitude) and all(r.get(k) == v for k, v in match.items())]
    return max(candidates, key=lambda r: r.get("time", ""), default=None)
