"""The training engine that ``train.py`` drives: options and their resume merge, the trainer loop,
run directories, checkpoints, logs and distributed helpers."""
