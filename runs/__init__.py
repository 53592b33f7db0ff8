"""Run folders and the files in them: what a run writes and reads (``opts.yaml``, checkpoints),
the 1-bit packed model file, converters from the original MCCG / BiCrossNet checkpoints, and the
claim that gives one training process a run folder.

Modules are imported by name (``runs.checkpoints.load_run``, ``runs.packed.load_packed``): this
package imports none of them itself, so its command-line tools (``python -m runs.convert``,
``python -m runs.upgrade``) run without being imported twice.
"""
