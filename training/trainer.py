"""The training loop of one run: building it from the flags, stepping, and recording each epoch
(checkpoints and resuming: ``training.checkpointing``; the data of every epoch: ``training.loading``).

The student recipe (docs/method.md §3): bi-gradual unfreezing, bi-partitioned optimization,
cross-entropy + cross-view triplet loss, and logit distillation from a frozen teacher.
"""
import re
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from datasets import build_train_set
from losses.objective import BiCrossNetLoss
from models import MultiViewNet, build_model
from models.mccg import init_classblock_bn
from models._helpers import check_input_size
from models.binary import BinarizerSchedule, apply_constraints_, count_exact_binary
from runs.checkpoints import load_trained_model
from runs.layout import LAST_CHECKPOINT
from optim.factory import build_optimizers, build_schedulers
from optim.stepping import step_optimizers
from optim.unfreeze import BiGradualUnfreezing, hold_frozen_batchnorm
from utils.device import configure_precision, resolve_device
from utils.errors import UserError

from .checkpointing import CheckpointMixin
from .distributed import DistributedContext, all_reduce_mean, barrier
from .loading import TrainLoader
from .options import default_weight_decay, model_options
from .state import EpochStats, seed_epoch, set_rng_state
from .training_log import EpochRecords, progress_enabled

# Frozen optimizers (bi-gradual phases 1-2) take no step, so their schedulers see none before stepping.
_FROZEN_SCHEDULER_WARNING = re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`")

__all__ = ["Trainer", "grad_scaler", "load_teacher", "teacher_views"]


def grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """The loss scaler of float16 training on ``device`` (a no-op object when not ``enabled``)."""
    return torch.amp.GradScaler(device.type, enabled=enabled)


def teacher_views(opts: dict) -> int:
    """The views a teacher trained on: its opts.yaml's (runs from before three views: 2)."""
    return int(opts.get("views") or opts.get("args", {}).get("views") or 2)


def load_teacher(path: str, num_classes: int, device: torch.device, logger, views: int = 2,
                 allow_fewer_views: bool = False) -> torch.nn.Module:
    """A frozen teacher in eval mode; its classifier must cover the student's classes, and it must
    have seen every view the student trains on (unless ``allow_fewer_views``)."""
    teacher, opts, _ = load_trained_model(path)
    if opts["num_classes"] != num_classes:
        raise UserError(f"--teacher_path {path}: the teacher has {opts['num_classes']} classes but the training "
                        f"set has {num_classes}; distill from a teacher trained on the same data")
    trained_views = teacher_views(opts)
    if trained_views < views and not allow_fewer_views:
        raise UserError(f"--teacher_path {path}: the teacher was trained on {trained_views} views and this "
                        f"student on {views}, so its classifiers never saw street images; train the teacher with "
                        f"--views {views}, or pass --allow_fewer_teacher_views to distil from it anyway")
    teacher.requires_grad_(False)
    logger.info("teacher %s (%s) loaded from %s", opts["model"], opts.get("args", {}).get("name", "?"), path)
    return teacher.to(device).eval()


class Trainer(CheckpointMixin):
    """Owns the model, optimizers and loop of one run; ``fit()`` trains from the current epoch."""

    def __init__(self, args, ctx: DistributedContext, run_dir: Path, logger):
        self.args, self.ctx, self.run_dir, self.logger = args, ctx, run_dir, logger
        self.device = resolve_device(args.device, ctx.local_rank)
        self.amp = args.amp and self.device.type == "cuda"
        if args.amp and not self.amp:
            logger.info("--amp applies to CUDA only; training in float32 on %s", self.device)
        self.precision = configure_precision(self.device, self.amp, args.tf32)
        self._build_data()
        self._build_networks()
        self._build_optimization()
        self.start_epoch, self.resume_batches, self.resume_stats, self.resume_rng = 0, 0, None, None
        self.bad_steps = 0
        # Rows of metrics.csv; checkpoints carry them, so metrics.csv can be rebuilt on resume.
        # None until fit(): a fresh run starts empty, a resumed one from its checkpoint.
        self.history: Optional[List[dict]] = None
        self.phase = None
        self.network = None
        self.loader: Optional[TrainLoader] = None  # created by the first epoch; its workers live until fit() ends
        self.binary_convs = count_exact_binary(self.model)[1]  # 0 for a full-precision teacher
        self.show_progress = ctx.is_main and progress_enabled(getattr(args, "progress", "auto"))
        self.epoch_steps = 0  # steps run by this process in the last epoch (a resumed one: the rest of it)
        self.interrupted = 0  # number of the first stop signal received (set by training.stop_signals)
        self.stopped = False  # training stopped early on a signal, after saving
        # Called after every checkpoint written; train.py uses it to commit the run's claim.
        self.after_checkpoint: Callable[[], None] = lambda: None

    # ----------------------------------------------------------------- building
    def _build_data(self) -> None:
        args, ctx = self.args, self.ctx
        self.dataset = build_train_set(
            args.data_dir, dataset=args.dataset, altitude=args.altitude, h=args.h, w=args.w,
            sample_num=args.sample_num, erasing_p=args.erasing_p, color_jitter=args.color_jitter, DA=args.DA,
            on_bad_image=args.on_bad_image, views=args.views, extra_google=args.extra_Google)
        self.num_classes = self.dataset.num_classes
        if len(self.dataset) < args.batchsize * ctx.world_size:
            raise UserError(f"--data_dir {args.data_dir} has {len(self.dataset)} training items, fewer than one "
                            f"batch of {args.batchsize}×{ctx.world_size}; lower --batchsize")
        self.sampler = DistributedSampler(self.dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                          shuffle=True, seed=args.seed, drop_last=True) if ctx.enabled else None

    def _build_networks(self) -> None:
        args = self.args
        weights = {"backbone_weights": args.backbone_weights} if args.backbone_weights else {}
        torch.manual_seed(args.seed)  # identical initial weights on every process and every run
        self.model = build_model(args.model, self.num_classes, **model_options(args), **weights).to(self.device)
        init_classblock_bn(self.model, args.classblock_bn_init)
        self._check_input_size(self.model, args.model)
        apply_constraints_(self.model)
        self.teacher = None
        if args.teacher_path:
            self.teacher = load_teacher(args.teacher_path, self.num_classes, self.device, self.logger, args.views,
                                        args.allow_fewer_teacher_views)
            self._check_input_size(self.teacher, f"the teacher of {args.teacher_path}")
        self.criterion = BiCrossNetLoss(triplet_margin=args.triplet_loss,
                                        kd_weight=args.kd_weight if self.teacher is not None else 0.0,
                                        kd_temperature=args.kd_temperature, kd_mode=args.kd_mode)

    def _check_input_size(self, model: torch.nn.Module, name: str) -> None:
        try:
            check_input_size(model, self.args.h, self.args.w, name)
        except ValueError as err:
            raise UserError(f"--h {self.args.h} --w {self.args.w}: {err}") from None

    def _build_optimization(self) -> None:
        args = self.args
        weight_decay = default_weight_decay(args.optimizer) if args.weight_decay is None else args.weight_decay
        self.optimizers = build_optimizers(self.model, args.optimizer, args.lr, lion_lr_ratio=args.lion_lr_ratio,
                                           weight_decay=weight_decay, backbone_lr_scale=args.backbone_lr_scale)
        self.schedulers = build_schedulers(self.optimizers, milestones=args.steps, gamma=args.gamma)
        self.scaler = grad_scaler(self.device, self.amp)
        self.unfreezing = BiGradualUnfreezing(self.model, args.bigradual_n1, args.bigradual_n2)
        self.binarizer_schedule = BinarizerSchedule(self.model, args.epochs, args.temperature_decay)

    # ----------------------------------------------------------------- one epoch
    def _enter_phase(self, epoch: int) -> None:
        phase = self.unfreezing.apply(epoch)
        if phase == self.phase:
            return
        self.phase = phase
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.logger.info("epoch %d: bi-gradual phase %d (%s), %.2f M trainable parameters",
                         epoch + 1, phase, self._phase_name(phase), trainable / 1e6)
        multi_view = MultiViewNet(self.model)
        # DDP only synchronizes parameters that require gradients when it is built: rebuild per phase.
        self.network = DistributedDataParallel(
            multi_view, device_ids=[self.device.index] if self.device.type == "cuda" else None
        ) if self.ctx.enabled else multi_view

    def _phase_name(self, phase: int) -> str:
        if self.binary_convs:
            return BiGradualUnfreezing.phase_name(phase)
        return "head only" if phase == 1 else f"all parameters; {self.args.model} has no binary weights"

    def _loader(self, epoch: int, skip_batches: int = 0):
        """The batches of ``epoch`` from the run's one loader (made on first use), from batch
        ``skip_batches`` on; the whole epoch's order and every item's draws are fixed by the seed."""
        if self.loader is None:
            self.loader = TrainLoader(self.dataset, self.args.batchsize, self.args.seed,
                                      num_workers=self.args.num_workers, pin_memory=self.device.type == "cuda",
                                      distributed=self.sampler)
        return self.loader.epoch(epoch, skip_batches)

    def close(self) -> None:
        """End the data-loading worker processes (a later epoch starts new ones)."""
        if self.loader is not None:
            self.loader.close()
            self.loader = None

    def train_epoch(self, epoch: int) -> Optional[Dict[str, float]]:
        """Train one epoch (the rest of it, when resuming mid-epoch); returns the epoch's mean
        metrics, or None when a stop signal ended it after saving."""
        self._enter_phase(epoch)
        self.binarizer_schedule.start_epoch(epoch)
        self.model.train()
        if self.args.frozen_bn == "freeze":
            hold_frozen_batchnorm(self.model)
        seed_epoch(self.args.seed, epoch, self.ctx.rank)
        stats, skip = EpochStats(), 0
        if epoch == self.start_epoch and self.resume_batches:
            stats, skip = self.resume_stats, self.resume_batches
        batches = self._loader(epoch, skip)
        if skip:
            set_rng_state(self.resume_rng)  # where the interrupted run stood after batch `skip`
        self.epoch_steps = 0
        bar = tqdm(total=self.loader.steps_per_epoch(), initial=skip, desc=f"epoch {epoch + 1}/{self.args.epochs}",
                   disable=not self.show_progress, dynamic_ncols=True, leave=False)
        try:
            for index, (*views, labels) in enumerate(batches, start=skip):
                self.train_step(views, labels, stats, epoch, index)
                self.epoch_steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{stats.sums.get('total', 0.0) / max(stats.steps, 1):.3f}")
                if self._stop_requested():
                    self.save(epoch, batches_done=index + 1, stats=stats)
                    self.logger.warning("interrupted: saved %s in epoch %d/%d after batch %d; continue with --resume",
                                        self.run_dir / LAST_CHECKPOINT, epoch + 1, self.args.epochs, index + 1)
                    return None
        except UserError as err:
            # An error re-raised from a DataLoader worker (an unreadable image) carries finished
            # frames that hold the loader iterator in a reference cycle: clear them, and end the
            # workers now rather than when the garbage collector gets to them.
            traceback.clear_frames(err.__traceback__)
            self.close()
            raise
        finally:
            bar.close()
        return stats.means()

    def _stop_requested(self) -> bool:
        """Whether a stop signal arrived in any process; all of them must stop after the same step,
        or the others would wait forever for the next gradient all-reduce."""
        if not self.ctx.enabled:
            return bool(self.interrupted)
        flag = torch.tensor(float(bool(self.interrupted)), device=self.device)
        return all_reduce_mean(flag, self.ctx).item() > 0

    # ----------------------------------------------------------------- one step
    def train_step(self, views, labels, stats: EpochStats, epoch: int, index: int) -> None:
        """One step on a batch of every view (satellite, drone[, street]) of the same classes."""
        views = [view.to(self.device, non_blocking=True) for view in views]
        labels = labels.to(self.device, non_blocking=True)
        # A forward that overflows poisons BatchNorm running statistics before the loss shows it:
        # keep the buffers to put back if the step is skipped.
        buffers = [b.detach().clone() for b in self.model.buffers()]
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            outputs = self.network(*views)
            teacher_outputs = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_outputs = [self.teacher.forward_heads(view) for view in views]
            total, terms = self.criterion(outputs, labels, teacher_outputs)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        finite = all_reduce_mean(torch.isfinite(total.detach()).float(), self.ctx)
        if finite.item() < 1.0:
            losses = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
            self._skip_step(buffers, stats, epoch, index, f"non-finite loss ({losses})")
            return
        self.scaler.scale(total).backward()
        # Under AMP the GradScaler skips steps with non-finite gradients (and lowers its scale) itself.
        if not self.scaler.is_enabled() and not self._finite_gradients():
            self._skip_step(buffers, stats, epoch, index, f"non-finite gradients (loss {total.item():.4g})")
            return
        self.bad_steps = 0
        if not step_optimizers(self.optimizers.values(), self.scaler):
            # The loss scale was too high for float16 gradients: the scaler skipped the step and
            # lowered its scale, as it does early in every AMP run. Not a divergence.
            self._restore_buffers(buffers)
            stats.skipped += 1
            return
        apply_constraints_(self.model)
        correct = int(sum((logits[0].detach().argmax(1) == labels).sum() for logits, _ in outputs))
        stats.add({k: all_reduce_mean(v, self.ctx) for k, v in terms.items()}, correct, len(views) * labels.numel())

    def _finite_gradients(self) -> bool:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=float("inf"))))

    def _restore_buffers(self, buffers) -> None:
        for buffer, saved in zip(self.model.buffers(), buffers):
            buffer.copy_(saved)

    def _skip_step(self, buffers, stats: EpochStats, epoch: int, index: int, reason: str) -> None:
        """Leave weights and buffers as they were; stop after --max_bad_steps bad steps in a row."""
        self._restore_buffers(buffers)
        self.bad_steps += 1
        stats.skipped += 1
        self.logger.warning("epoch %d batch %d: %s; step skipped (%d in a row)", epoch + 1, index + 1, reason,
                            self.bad_steps)
        if self.bad_steps >= self.args.max_bad_steps:
            raise UserError(f"training diverged: {self.bad_steps} consecutive steps with non-finite values in "
                            f"epoch {epoch + 1}; {self.run_dir / LAST_CHECKPOINT} holds the last good state "
                            f"(lower --lr or raise --max_bad_steps)")

    # ----------------------------------------------------------------- the run
    def fit(self) -> None:
        """Train from ``start_epoch`` to ``--epochs``, saving and logging after every epoch."""
        records = EpochRecords(self.run_dir, self.logger, self.args.epochs, self.start_epoch, self.history,
                               tensorboard=getattr(self.args, "tensorboard", False), write=self.ctx.is_main)
        if self.history is None:  # a fresh run, or a checkpoint older than the record: start from the CSV
            self.history = records.rows()
        self._log_start()
        try:
            for epoch in range(self.start_epoch, self.args.epochs):
                start = time.time()
                means = self.train_epoch(epoch)
                if means is None:
                    self.stopped = True
                    return
                learning_rates = self.learning_rates()  # the epoch's own, before the schedulers step
                self._step_schedulers(epoch)
                self.binarizer_schedule.end_epoch()
                last = epoch + 1 == self.args.epochs
                row = self._record_epoch(epoch, means, learning_rates, start, last)
                records.add(row, self.epoch_steps, pairs_per_step=self.args.batchsize * self.ctx.world_size,
                            steps_left=(self.args.epochs - epoch - 1) * self.loader.steps_per_epoch())
                if not last and self._stop_requested():
                    self.stopped = True
                    self.logger.warning("interrupted after epoch %d/%d; continue with --resume", epoch + 1,
                                        self.args.epochs)
                    return
        finally:
            self.close()
            records.close()

    def _log_start(self) -> None:
        self.logger.info("precision: %s on %s", self.precision, self.device)
        sample_num = self.args.sample_num
        items = (f"{self.num_classes} classes × {sample_num} draw{'s' if sample_num > 1 else ''} = "
                 f"{len(self.dataset)} training items per epoch")
        steps = len(self.dataset) // (self.args.batchsize * self.ctx.world_size)
        items += f", {steps} steps of {self.args.batchsize} pairs" + (
            f" × {self.ctx.world_size} processes" if self.ctx.enabled else "")
        if self.binary_convs:
            exact, total = count_exact_binary(self.model)
            items += f"; {total} binary convolutions ({exact} with exactly ±1 forward weights)"
        self.logger.info("%s: %s", self.args.model, items)

    def learning_rates(self) -> Dict[str, float]:
        """Each optimizer's learning rate now, as metrics.csv columns: the largest of its parameter
        groups (SGD's head group, at --lr; Lion's at --lr × --lion_lr_ratio)."""
        return {f"lr_{key}": max(group["lr"] for group in opt.param_groups) for key, opt in self.optimizers.items()}

    def _step_schedulers(self, epoch: int) -> None:
        """Step each lr schedule at the end of 0-based ``epoch``; Lion's waits --lion_schedule_start epochs."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_FROZEN_SCHEDULER_WARNING)
            for key, sched in self.schedulers.items():
                if key != "lion" or epoch >= self.args.lion_schedule_start:
                    sched.step()

    def _record_epoch(self, epoch: int, means: Dict[str, float], learning_rates: Dict[str, float], start: float,
                      last: bool) -> dict:
        """Checkpoint the finished epoch, its row in the record included; returns the row. The
        checkpoint goes first: metrics.csv is never ahead of it, and a kill in between loses no row."""
        row = {"epoch": epoch + 1, "phase": self.phase, **means}
        if self.binary_convs:
            exact, total = count_exact_binary(self.model)
            row["binary_exact"] = f"{exact}/{total}"
        if self.scaler.is_enabled():
            row["loss_scale"] = self.scaler.get_scale()
            if means["skipped_steps"] and "total" not in means:
                self.logger.warning(
                    "epoch %d: the float16 loss scaler skipped all %d steps (gradient overflow), so the weights "
                    "did not change; it halves its scale (now %g) at each skip, which takes up to ~16 steps at "
                    "the start of an AMP run", epoch + 1, means["skipped_steps"], row["loss_scale"])
        row["seconds"] = round(time.time() - start, 2)
        row.update(learning_rates)
        self.history.append(row)
        keep = last or (self.args.save_every > 0 and (epoch + 1) % self.args.save_every == 0)
        self.save(epoch + 1, keep=keep)
        barrier(self.ctx)
        return row
