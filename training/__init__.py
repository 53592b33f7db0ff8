"""What ``train.py`` drives: options and their resume merge, the trainer loop, checkpoints, logs,
per-epoch data loading and distributed helpers."""
