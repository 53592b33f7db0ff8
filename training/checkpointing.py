"""Checkpoints of a training run: what they hold, writing them (with --save_every and --keep_last),
and putting a run back in the state its last checkpoint recorded."""
from typing import Optional

from models._helpers import load_model_state, nonfinite_entries
from runs.checkpoints import load_checkpoint
from runs.layout import LAST_CHECKPOINT, checkpoint_name, saved_checkpoints
from utils.errors import UserError
from utils.files import link_or_copy, save_checkpoint

from .state import EpochStats, rng_state

__all__ = ["CheckpointMixin"]


class CheckpointMixin:
    """The checkpoint half of :class:`training.trainer.Trainer`, which provides the attributes used
    here (model, optimizers, schedulers, scaler, args, ctx, run_dir, logger, history, ...)."""

    def state(self, epoch: int, batches_done: int = 0, stats: Optional[EpochStats] = None) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "batches_done": batches_done,
            "epoch_stats": vars(stats) if stats is not None else None,
            "bad_steps": self.bad_steps,
            "history": self.history,
            "rng": rng_state(),
            "model_name": self.args.model,
            "num_classes": self.num_classes,
        }

    def save(self, epoch: int, batches_done: int = 0, stats: Optional[EpochStats] = None, keep: bool = False):
        """Write last.pth (and net_<epoch>.pth when ``keep``); ``epoch`` counts completed epochs.

        net_<epoch>.pth goes first: last.pth is what --resume reads, so a process killed between
        the two writes redoes the epoch and rewrites the same net_<epoch>.pth, instead of lacking it.
        """
        if not self.ctx.is_main:
            return
        state = self.state(epoch, batches_done, stats)
        nonfinite = nonfinite_entries(state["model"])
        if nonfinite:
            raise UserError(f"the weights hold NaN or infinite values ({len(nonfinite)} tensors, e.g. "
                            f"{', '.join(nonfinite[:3])}); not overwriting {self.run_dir / LAST_CHECKPOINT}, "
                            f"which keeps the last finite state (lower --lr, then --resume)")
        if keep:
            save_checkpoint(state, self.run_dir / checkpoint_name(epoch))
            link_or_copy(self.run_dir / checkpoint_name(epoch), self.run_dir / LAST_CHECKPOINT)
            self._prune_epoch_checkpoints()
        else:
            save_checkpoint(state, self.run_dir / LAST_CHECKPOINT)
        self.after_checkpoint()

    def _prune_epoch_checkpoints(self) -> None:
        """With --keep_last K, delete all but the K newest net_<epoch>.pth (last.pth is never one)."""
        if self.args.keep_last:
            epochs = sorted((p for p in self.run_dir.glob("net_*.pth") if p.stem[4:].isdigit()),
                            key=lambda p: int(p.stem[4:]))
            for path in epochs[:-self.args.keep_last]:
                path.unlink()

    def restore(self) -> None:
        """Continue from last.pth: weights, optimizer and scheduler states, and the epoch position."""
        path = self.run_dir / LAST_CHECKPOINT
        try:
            ckpt = load_checkpoint(path, map_location=self.device)
        except UserError as err:
            earlier = [name for name in saved_checkpoints(self.run_dir) if name != LAST_CHECKPOINT]
            if not earlier:
                raise
            raise UserError(f"{err}; to resume from an earlier epoch, copy one of {', '.join(earlier)} "
                            f"to {path}") from None
        if ckpt.get("num_classes", self.num_classes) != self.num_classes:
            raise UserError(f"{path} was trained with {ckpt['num_classes']} classes but --data_dir "
                            f"{self.args.data_dir} has {self.num_classes}")
        load_model_state(self.model, ckpt["model"], path, self.args.model)
        for key, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][key])
        for key, sched in self.schedulers.items():
            sched.load_state_dict(ckpt["schedulers"][key])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch, self.resume_batches = ckpt["epoch"], ckpt["batches_done"]
        self.bad_steps = ckpt.get("bad_steps", 0)
        self.history = ckpt.get("history")  # None in checkpoints older than the record: read metrics.csv
        if self.resume_batches:
            self.resume_stats = EpochStats(**ckpt["epoch_stats"])
            self.resume_rng = ckpt["rng"]
        if self.resume_batches:
            self.logger.info("resumed from %s: epoch %d/%d continues at batch %d", path, self.start_epoch + 1,
                             self.args.epochs, self.resume_batches + 1)
        else:
            self.logger.info("resumed from %s after epoch %d/%d", path, self.start_epoch, self.args.epochs)
