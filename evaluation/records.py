"""``results.json``: every evaluation of a run, each under its own key, kept side by side.

A key names everything that changes the numbers — dataset and altitude, direction, single or
multi-query, checkpoint, input size, test scales, flip TTA, engine, device, precision and
descriptor kind (float, or binary codes ranked by Hamming distance) — so
evaluating at another size, from a packed file or in another precision adds a record instead of
replacing one. Each record also carries the test folder and the time. Several ``test.py``
processes may evaluate one run at once: records are merged into the file under an exclusive lock
and written atomically, so no process drops another's results and a reader never sees a
half-written file.

Records written before multi-scale tests, multi-query tests and binary descriptors existed have no
``scales``, ``query`` or ``descriptor`` field; they are read as the standard protocol (``scales``
[1.0], ``query`` "single", ``descriptor`` "float"), which is also what their keys, unchanged for
that protocol, say.
"""
import json
from pathlib import Path
from typing import Optional

from utils.errors import UserError
from utils.files import atomic_write_text, locked

RESULTS_FILE = "results.json"
LOCK_SUFFIX = ".lock"


# The standard protocol: one query per image, float descriptors at the input size only.
DEFAULT_FIELDS = {"query": "single", "scales": [1.0], "descriptor": "float"}


def scales_label(scales) -> str:
    """``[1.0, 1.1]`` -> ``1,1.1``: each scale exactly (its shortest repr), without a trailing ``.0``."""
    return ",".join(repr(float(s)).removesuffix(".0") for s in scales)


def record_key(record: dict) -> str:
    """``university/Drone->Satellite/last.pth/256x256/flip/float/cpu-fp32`` (the altitude follows a
    SUES-200 dataset name: ``sues/150/...``; then come the engine, the device type and precision).

    Only where a record departs from the standard protocol does its key say so: ``multi-query``
    after the direction, the scales after the size (``256x256/ms1,1.1``) and a descriptor kind
    other than float at the end (``.../cpu-fp32/binary``), so that keys of standard evaluations are
    those of files written before these options existed.
    """
    record = dict(DEFAULT_FIELDS, **record)
    parts = [record["dataset"]] + ([str(record["altitude"])] if record.get("altitude") is not None else [])
    parts += [record["direction"]] + (["multi-query"] if record["query"] == "multi" else [])
    parts += [record["checkpoint"], f"{record['h']}x{record['w']}"]
    parts += [f"ms{scales_label(record['scales'])}"] if list(map(float, record["scales"])) != [1.0] else []
    parts += ["flip" if record["flip"] else "noflip", record["engine"],
              f"{record['device'].split()[0]}-{record['precision']}"]
    parts += [record["descriptor"]] if record["descriptor"] != "float" else []
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
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be a results file; fix or delete it") from None
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
    """A record's identifying fields, the standard protocol's where it names none; records written
    before keys named them (``dataset[/alt]/direction``) are read from their key."""
    record = dict(DEFAULT_FIELDS, **record)
    if "direction" in record:
        return record
    parts = key.split("/")
    return dict(record, dataset=parts[0], direction=parts[-1],
                altitude=int(parts[1]) if len(parts) == 3 else None)


def latest_record(results: dict, dataset: str, direction: str, altitude: Optional[int] = None,
                  **match) -> Optional[dict]:
    """The newest record of one dataset/altitude/direction whose other fields equal ``match``
    (e.g. ``h=256, w=256``), or None.

    Unless ``match`` says otherwise (``query="multi"``, ``scales=[1, 1.1]``, ``descriptor="binary"``),
    only records of the standard protocol (single queries, scale 1, float descriptors) are considered.
    """
    match = dict(DEFAULT_FIELDS, **match)
    match["scales"] = [float(s) for s in match["scales"]]
    candidates = [
        _fields(key, record) for key, record in results.items() if isinstance(record, dict)
    ]
    candidates = [r for r in candidates if (r["dataset"], r["direction"], r.get("altitude")) ==
                  (dataset, direction, altitude) and all(r.get(k) == v for k, v in match.items())]
    return max(candidates, key=lambda r: r.get("time", ""), default=None)
