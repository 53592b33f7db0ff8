"""Shared fixtures: tiny synthetic University-1652 and SUES-200 datasets, generated once per session,
and each instruction-set path of the bit-packed engine in turn."""
import pytest

from datasets.synthetic import generate_sues, generate_university
from helpers.engine import ISAS
from models import bitpacked

TINY_UNIVERSITY = dict(train_places=6, test_places=5, distractor_places=2, drones_per_place=3,
                       image_size=64, seed=0)
TINY_SUES = dict(places=8, train_places=5, drones_per_place=3, image_size=64, altitudes=(150, 300), seed=0)


@pytest.fixture(scope="session")
def university_spec():
    """Generator arguments of ``university_root``."""
    return dict(TINY_UNIVERSITY)


@pytest.fixture(scope="session")
def sues_spec():
    """Generator arguments of ``sues_root``."""
    return dict(TINY_SUES)


@pytest.fixture(scope="session")
def university_root(tmp_path_factory):
    """Root (holding train/ and test/) of a tiny University-1652 look-alike; treat as read-only."""
    root = tmp_path_factory.mktemp("university")
    generate_university(root, **TINY_UNIVERSITY)
    return root


@pytest.fixture(scope="session")
def sues_root(tmp_path_factory):
    """Root (holding train/<alt>/ and test/<alt>/) of a tiny SUES-200 look-alike; treat as read-only."""
    root = tmp_path_factory.mktemp("sues")
    generate_sues(root, **TINY_SUES)
    return root


@pytest.fixture(params=ISAS)
def isa(request):
    """Each instruction-set path in turn (skipped where the CPU lacks it); the best one afterwards."""
    if request.param not in bitpacked.supported_isas():
        pytest.skip(f"this CPU cannot run {request.param}")
    bitpacked.set_isa(request.param)
    yield request.param
    bitpacked.set_isa()
