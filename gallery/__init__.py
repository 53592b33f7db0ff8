"""Gallery indexes for large search areas: descriptors of many gallery tiles in a faiss index,
saved with the run that made them, searched by query images (``search.py``)."""
