"""The evaluation protocol that ``test.py`` drives: retrieval descriptors, Recall@K / AP metrics,
result records and retrieval pictures."""
