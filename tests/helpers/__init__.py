"""Helpers shared by the test modules, which import these and never each other:
``tiny_runs`` (train.py flags for tiny CPU runs, reading a run back), ``evaluation_cli`` (test.py in
this process, run folders written without training), ``errors`` (the one-line error contract) and
``files`` (folder and image snapshots)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
