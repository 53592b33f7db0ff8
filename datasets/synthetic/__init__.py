"""Deterministic synthetic look-alikes of University-1652 and SUES-200.

The real benchmarks cannot be downloaded here, yet training, retrieval and export must run end to
end on data with their exact folder layouts. Each class is a procedurally generated *place*: a
vector scene of ground texture, fields, roads, buildings (distinct footprints, heights and roof
colours) and trees. The satellite image is a north-up orthographic render of the scene; drone
images render the same scene through a perspective homography with a random heading, altitude and
tilt, with extruded walls, another sun position, a colour/lighting shift, haze and occluders. The
layout and roof colours survive across views while the pixels do not, so matching a drone image to
its satellite image has to be learned, and places stay distinguishable. Street and google images
are ground-level perspective photos from the place's roads (``street``): only the buildings'
colours and shapes link them to the other views, and some google frames show another place.

Same seed => byte-identical files: every random draw comes from a generator keyed by
``(seed, place, stream, ...)`` and images are written without metadata at a fixed JPEG quality.

Modules: ``scene`` (the place model), ``render`` (aerial views), ``street`` (ground-level views),
``layouts`` (the dataset writers), ``cli`` (``python -m datasets.synthetic --layout university
--out data/synthetic-university``).
"""
from .cli import main
from .layouts import MANIFEST, generate_sues, generate_university

__all__ = ["MANIFEST", "generate_sues", "generate_university", "main"]
