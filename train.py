#!/usr/bin/env python
"""Train a BiCrossNet student (binary BNext + MCCG head) or its ConvNeXt teacher.

The student recipe (DESIGN.md §3): bi-gradual unfreezing (head → full-precision parameters →
binary weights), bi-partitioned optimization (Lion for binary latent weights, Adam/AdamW for the
rest), cross-entropy + cross-view triplet loss, and logit distillation from a frozen teacher.

    python train.py --name bicrossnet_t --data_dir data/University-1652/train \
        --teacher_path checkpoints/teacher
    python train.py --name teacher --model mccg_convnext_tiny --optimizer sgd --lr 0.01 \
        --bigradual_n1 0 --bigradual_n2 0 --steps 80 120 --epochs 200
    torchrun --nproc_per_node=4 train.py ...      # DistributedDataParallel, one process per GPU
"""
import argparse
import os
import random
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from datasets import DATASETS, SUES_ALTITUDES, build_train_set
from engine.distributed import DistributedContext, all_reduce_mean, barrier, init_distributed, shutdown
from engine.run_dir import prepare_run_dir, save_opts
from engine.training_log import MetricsTable, setup_logger
from losses.objective import BiCrossNetLoss
from models import TwoViewNet, build_model, is_model, list_models
from models._helpers import check_input_size, load_model_state, nonfinite_entries
from models.binary import anneal_temperature, apply_constraints_, count_exact_binary, recu_tau, set_recu_tau
from models.registry import model_option_names
from models.run import (LAST_CHECKPOINT, OPTS_FILE, checkpoint_name, load_checkpoint, load_opts, load_trained_model,
                        saved_checkpoints)
from optim.factory import OPTIMIZER_CHOICES, build_optimizers, build_schedulers
from optim.stepping import step_optimizers
from optim.unfreeze import BiGradualUnfreezing
from utils.device import DEVICE_CHOICES, configure_precision, resolve_device
from utils.errors import UserError, exit_on_user_error
from utils.files import remove_temporaries, save_checkpoint

# Flags that may differ when a run is resumed; every other flag is taken from the run's opts.yaml.
RESUME_OVERRIDES = ("epochs", "num_workers", "device", "amp", "tf32", "save_every", "max_bad_steps", "data_dir",
                    "teacher_path")
RUNTIME_FLAGS = ("name", "checkpoint_dir", "resume", "overwrite") + RESUME_OVERRIDES
# Signals that stop training cleanly: Ctrl-C, and the SIGTERM that cluster schedulers send before a kill.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = p.add_argument_group("run")
    run.add_argument("--name", default="bicrossnet", help="run name; files go to <checkpoint_dir>/<name>/")
    run.add_argument("--checkpoint_dir", default="checkpoints", help="parent folder of run directories")
    run.add_argument("--resume", action="store_true",
                     help="continue the run <name> from its last.pth with the run's own settings; only "
                          + ", ".join(f"--{flag}" for flag in RESUME_OVERRIDES) + " may change")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory <name>")
    run.add_argument("--seed", type=int, default=1, help="random seed (CPU runs are bit-reproducible)")
    run.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="auto picks CUDA when present")
    run.add_argument("--amp", action="store_true", help="mixed precision (float16 autocast + GradScaler) on CUDA")
    run.add_argument("--tf32", action="store_true",
                     help="let CUDA float32 convolutions and matrix products use TF32 (default: IEEE float32)")
    run.add_argument("--save_every", type=int, default=0,
                     help="also keep net_<epoch>.pth every N epochs (0: only the final epoch); last.pth is always kept")
    run.add_argument("--max_bad_steps", type=int, default=10,
                     help="stop with an error after this many consecutive steps with a non-finite loss")

    data = p.add_argument_group("data")
    data.add_argument("--data_dir", default="data/University-1652/train",
                      help="training folder: University-1652/train, or SUES-200/train (with --altitude)")
    data.add_argument("--dataset", default="university", choices=DATASETS, help="dataset layout")
    data.add_argument("--altitude", type=int, default=None, choices=SUES_ALTITUDES,
                      help="SUES-200 altitude subfolder of --data_dir")
    data.add_argument("--h", type=int, default=256, help="input height")
    data.add_argument("--w", type=int, default=256, help="input width")
    data.add_argument("--batchsize", type=int, default=8, help="classes per step (per process under torchrun)")
    data.add_argument("--sample_num", type=int, default=1, help="times each class is drawn per epoch")
    data.add_argument("--views", type=int, default=2, choices=[2], help="views trained jointly (satellite + drone)")
    data.add_argument("--erasing_p", type=float, default=0.5, help="RandomErasing probability on drone images")
    data.add_argument("--color_jitter", action="store_true", help="add ColorJitter(0.1, 0.1, 0.1)")
    data.add_argument("--DA", action=argparse.BooleanOptionalAction, default=True,
                      help="AutoAugment (ImageNet policy) on drone images")
    data.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1), help="data-loading processes")
    data.add_argument("--on_bad_image", default="error", choices=["error", "skip"],
                      help="unreadable image files: stop with an error, or skip them with a warning")

    model = p.add_argument_group("model")
    model.add_argument("--model", default="bicrossnet_bnext_tiny",
                       help=f"network to train; one of: {', '.join(list_models())}")
    model.add_argument("--block", type=int, default=2, help="attention branches of the MCCG head (2 ⇒ 3 classifiers)")
    model.add_argument("--head_input", default="spatial", choices=["spatial", "pooled"],
                       help="feed the head the feature map (spatial) or the released code's pooled 1×1 map")
    model.add_argument("--binarizer", default="bnext", choices=["bnext", "recu"], help="binary weight quantizer")
    model.add_argument("--temperature", type=float, default=0.0,
                       help="initial BNext weight temperature (0: binary from the start; 1: real-valued)")
    model.add_argument("--temperature_decay", type=float, default=1.0,
                       help="multiply the BNext temperature by this each epoch (the BNext recipe uses 0.9)")
    model.add_argument("--backbone_weights", default=None,
                       help="ImageNet weights for the backbone (BNext .pth.tar, or timm/ConvNeXt checkpoint)")

    recipe = p.add_argument_group("optimization")
    recipe.add_argument("--optimizer", default="adamlion", choices=OPTIMIZER_CHOICES,
                        help="adamlion/adamwlion: Lion for binary weights, Adam(W) for the rest; "
                             "sgd: teacher recipe; adam/lion: one optimizer for everything")
    recipe.add_argument("--lr", type=float, default=0.006, help="learning rate of Adam/AdamW/SGD")
    recipe.add_argument("--lion_lr_ratio", type=float, default=1 / 6, help="Lion lr = lr × this")
    recipe.add_argument("--weight_decay", type=float, default=None,
                        help="weight decay (default: 5e-4 for sgd, 0.01 for adamwlion, 0 otherwise)")
    recipe.add_argument("--backbone_lr_scale", type=float, default=0.3, help="sgd: backbone lr = lr × this")
    recipe.add_argument("--epochs", type=int, default=300, help="training epochs")
    recipe.add_argument("--steps", type=int, nargs="+", default=[80, 120, 200], help="MultiStepLR milestones (epochs)")
    recipe.add_argument("--gamma", type=float, default=0.1, help="MultiStepLR decay factor")
    recipe.add_argument("--bigradual_n1", type=int, default=20,
                        help="epoch from which full-precision backbone parameters train (before: head only)")
    recipe.add_argument("--bigradual_n2", type=int, default=20, help="epoch from which binary weights train too")
    recipe.add_argument("--triplet_loss", type=float, default=0.3, help="triplet margin (0 disables the triplet loss)")

    kd = p.add_argument_group("distillation")
    kd.add_argument("--teacher_path", default=None, help="teacher run directory or checkpoint (enables distillation)")
    kd.add_argument("--kd_weight", type=float, default=2.0, help="weight of the distillation loss")
    kd.add_argument("--kd_temperature", type=float, default=4.0, help="softmax temperature of KL distillation")
    kd.add_argument("--kd_mode", default="kl", choices=["kl", "mse"],
                    help="kl: Hinton KL on softened logits; mse: the released logits+features MSE / 4")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:
        args = _merge_saved_opts(args, _given_flags(args, argv))
    _validate(args)
    return args


def _given_flags(args, argv) -> set:
    """Names of the flags present on the command line, even those repeating their default value."""
    absent = object()
    probe = build_parser()
    probe.set_defaults(**dict.fromkeys(vars(args), absent))
    return {key for key, value in vars(probe.parse_args(argv)).items() if value is not absent}


def _merge_saved_opts(args, given: set) -> argparse.Namespace:
    """On ``--resume`` the run's own settings win; runtime flags given on the command line override
    them, and any other given flag must agree with the run (changing --h or --model mid-run would
    silently be ignored otherwise)."""
    opts_path = Path(args.checkpoint_dir) / args.name / OPTS_FILE
    saved = load_opts(opts_path.parent).get("args", {})
    conflicts = [f"--{key} {getattr(args, key)!r} (run: {saved[key]!r})" for key in sorted(given)
                 if key not in RUNTIME_FLAGS and key in saved and getattr(args, key) != saved[key]]
    if conflicts:
        raise UserError(f"--resume continues the run of {opts_path} with its own settings, but these flags "
                        f"differ from it: {', '.join(conflicts)}; drop them, or start a new run with another --name")
    merged = vars(args).copy()
    for key, value in saved.items():
        if key in merged and not (key in RUNTIME_FLAGS and key in given):
            merged[key] = value
    merged["resume"] = True
    return argparse.Namespace(**merged)


def _validate(args) -> None:
    if not is_model(args.model):
        raise UserError(f"--model {args.model!r} is not a known model; choose one of: {', '.join(list_models())}")
    if args.bigradual_n1 < 0 or args.bigradual_n2 < args.bigradual_n1:
        raise UserError(f"--bigradual_n2 ({args.bigradual_n2}) must be >= --bigradual_n1 ({args.bigradual_n1}) >= 0")
    if args.dataset == "sues" and args.altitude is None:
        raise UserError("--dataset sues needs --altitude (150, 200, 250 or 300)")
    if args.teacher_path is not None and not Path(args.teacher_path).exists():
        raise UserError(f"--teacher_path {args.teacher_path} does not exist; train a teacher first "
                        f"(train.py --model mccg_convnext_tiny ...) or drop the flag")
    for flag in ("batchsize", "epochs", "h", "w", "sample_num", "max_bad_steps"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    for flag in ("num_workers", "save_every"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    if args.batchsize < 2 and args.triplet_loss > 0:
        raise UserError("--batchsize must be at least 2 classes for the triplet loss (or pass --triplet_loss 0)")


def model_options(args) -> dict:
    """The options of ``--model``'s builder, as saved in opts.yaml (weights files are not part of it)."""
    candidates = {"block": args.block, "head_input": args.head_input, "binarizer": args.binarizer,
                  "temperature": args.temperature}
    accepted = model_option_names(args.model)
    return {k: v for k, v in candidates.items() if k in accepted}


def default_weight_decay(optimizer: str) -> float:
    return {"sgd": 5e-4, "adamwlion": 0.01}.get(optimizer, 0.0)


def grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """The loss scaler of float16 training on ``device`` (a no-op object when not ``enabled``)."""
    return torch.amp.GradScaler(device.type, enabled=enabled)


def seed_epoch(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Re-seed every RNG at each epoch start, so a run resumed at an epoch boundary is identical
    to the uninterrupted one. Returns the generator that drives shuffling and worker seeds."""
    value = seed * 100_003 + epoch * 101 + rank
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    generator = torch.Generator()
    generator.manual_seed(seed * 100_003 + epoch)
    return generator


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_teacher(path: str, num_classes: int, device: torch.device, logger) -> torch.nn.Module:
    """A frozen teacher in eval mode; its classifier must cover the student's classes."""
    teacher, opts, _ = load_trained_model(path)
    if opts["num_classes"] != num_classes:
        raise UserError(f"--teacher_path {path}: the teacher has {opts['num_classes']} classes but the training "
                        f"set has {num_classes}; distill from a teacher trained on the same data")
    teacher.requires_grad_(False)
    logger.info("teacher %s (%s) loaded from %s", opts["model"], opts.get("args", {}).get("name", "?"), path)
    return teacher.to(device).eval()


@dataclass
class EpochStats:
    """Running sums of the logged quantities; saved mid-epoch so an interrupted epoch resumes exactly."""
    sums: Dict[str, float] = field(default_factory=dict)
    steps: int = 0
    correct: int = 0
    seen: int = 0
    skipped: int = 0

    def add(self, terms: Dict[str, torch.Tensor], correct: int, seen: int) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.steps += 1
        self.correct += correct
        self.seen += seen

    def means(self) -> Dict[str, float]:
        out = {k: v / max(self.steps, 1) for k, v in self.sums.items()}
        out["train_acc"] = 100.0 * self.correct / max(self.seen, 1)
        out["skipped_steps"] = self.skipped
        return out


class Trainer:
    """Owns the model, optimizers and loop of one run; ``fit()`` trains from the current epoch."""

    def __init__(self, args, ctx: DistributedContext, run_dir: Path, logger):
        self.args, self.ctx, self.run_dir, self.logger = args, ctx, run_dir, logger
        self.device = resolve_device(args.device, ctx.local_rank)
        self.amp = args.amp and self.device.type == "cuda"
        if args.amp and not self.amp:
            logger.info("--amp applies to CUDA only; training in float32 on %s", self.device)
        self.precision = configure_precision(self.device, self.amp, args.tf32)

        self.dataset = build_train_set(
            args.data_dir, dataset=args.dataset, altitude=args.altitude, h=args.h, w=args.w,
            sample_num=args.sample_num, erasing_p=args.erasing_p, color_jitter=args.color_jitter, DA=args.DA,
            on_bad_image=args.on_bad_image)
        self.num_classes = self.dataset.num_classes
        if len(self.dataset) < args.batchsize * ctx.world_size:
            raise UserError(f"--data_dir {args.data_dir} has {len(self.dataset)} training items, fewer than one "
                            f"batch of {args.batchsize}×{ctx.world_size}; lower --batchsize")

        weights = {"backbone_weights": args.backbone_weights} if args.backbone_weights else {}
        torch.manual_seed(args.seed)  # identical initial weights on every process and every run
        self.model = build_model(args.model, self.num_classes, **model_options(args), **weights).to(self.device)
        check_input_size(self.model, args.h, args.w, args.model)
        apply_constraints_(self.model)
        self.teacher = load_teacher(args.teacher_path, self.num_classes, self.device, logger) \
            if args.teacher_path else None
        if self.teacher is not None:
            check_input_size(self.teacher, args.h, args.w, f"the teacher of {args.teacher_path}")
        self.criterion = BiCrossNetLoss(triplet_margin=args.triplet_loss,
                                        kd_weight=args.kd_weight if self.teacher is not None else 0.0,
                                        kd_temperature=args.kd_temperature, kd_mode=args.kd_mode)
        weight_decay = default_weight_decay(args.optimizer) if args.weight_decay is None else args.weight_decay
        self.optimizers = build_optimizers(self.model, args.optimizer, args.lr, lion_lr_ratio=args.lion_lr_ratio,
                                           weight_decay=weight_decay, backbone_lr_scale=args.backbone_lr_scale)
        self.schedulers = build_schedulers(self.optimizers, milestones=args.steps, gamma=args.gamma)
        self.scaler = grad_scaler(self.device, self.amp)
        self.unfreezing = BiGradualUnfreezing(self.model, args.bigradual_n1, args.bigradual_n2)
        self.sampler = DistributedSampler(self.dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                          shuffle=True, seed=args.seed, drop_last=True) if ctx.enabled else None
        self.start_epoch, self.resume_batches, self.resume_stats, self.resume_rng = 0, 0, None, None
        self.bad_steps = 0
        # Rows of metrics.csv; checkpoints carry them, so metrics.csv can be rebuilt on resume.
        # None until fit(): a fresh run starts empty, a resumed one from its checkpoint.
        self.history: Optional[List[dict]] = None
        self.phase = None
        self.network = None
        self.interrupted = 0  # number of the first stop signal received (set by the handler in main)
        self.stopped = False  # training stopped early on a signal, after saving

    # ----------------------------------------------------------------- checkpoints
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
        save_checkpoint(state, self.run_dir / LAST_CHECKPOINT)

    def restore(self) -> None:
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
        self.logger.info("resumed from %s at epoch %d%s", path, self.start_epoch,
                         f", batch {self.resume_batches}" if self.resume_batches else "")

    # ----------------------------------------------------------------- loop
    def _enter_phase(self, epoch: int) -> None:
        phase = self.unfreezing.apply(epoch)
        if phase == self.phase:
            return
        self.phase = phase
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.logger.info("epoch %d: bi-gradual phase %d (%s), %.2f M trainable parameters",
                         epoch, phase, BiGradualUnfreezing.phase_name(phase), trainable / 1e6)
        two_view = TwoViewNet(self.model)
        # DDP only synchronizes parameters that require gradients when it is built: rebuild per phase.
        self.network = DistributedDataParallel(
            two_view, device_ids=[self.device.index] if self.device.type == "cuda" else None
        ) if self.ctx.enabled else two_view

    def _step_binarizer_schedule(self, epoch: int) -> None:
        if self.args.binarizer == "recu" and "binarizer" in model_option_names(self.args.model):
            set_recu_tau(self.model, recu_tau(epoch, self.args.epochs))

    def _loader(self, epoch: int) -> DataLoader:
        generator = seed_epoch(self.args.seed, epoch, self.ctx.rank)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            sampler = self.sampler
        else:
            sampler = RandomSampler(self.dataset, generator=generator)
        return DataLoader(self.dataset, batch_size=self.args.batchsize, sampler=sampler, drop_last=True,
                          num_workers=self.args.num_workers, pin_memory=self.device.type == "cuda",
                          generator=generator)

    def train_epoch(self, epoch: int) -> Optional[Dict[str, float]]:
        self._enter_phase(epoch)
        self._step_binarizer_schedule(epoch)
        self.model.train()
        loader = self._loader(epoch)
        stats, skip = EpochStats(), 0
        if epoch == self.start_epoch and self.resume_batches:
            stats, skip = self.resume_stats, self.resume_batches
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.args.epochs}", disable=not self.ctx.is_main,
                   dynamic_ncols=True, leave=False)
        try:
            for index, (satellite, drone, labels) in enumerate(bar):
                if index < skip:
                    if index == skip - 1:
                        set_rng_state(self.resume_rng)
                    continue
                self.train_step(satellite, drone, labels, stats, epoch, index)
                bar.set_postfix(loss=f"{stats.sums.get('total', 0.0) / max(stats.steps, 1):.3f}")
                if self._stop_requested():
                    self.save(epoch, batches_done=index + 1, stats=stats)
                    self.logger.warning("interrupted: saved %s at epoch %d, batch %d; continue with --resume",
                                        self.run_dir / LAST_CHECKPOINT, epoch, index + 1)
                    return None
        except UserError as err:
            # An error re-raised from a DataLoader worker (an unreadable image) carries finished
            # frames that hold the loader iterator in a reference cycle. Clearing them shuts the
            # workers down now; left to the garbage collector, the shutdown stalls for seconds on
            # half-finalized queues, and the worker processes linger in the meantime.
            traceback.clear_frames(err.__traceback__)
            raise
        return stats.means()

    def _stop_requested(self) -> bool:
        """Whether a stop signal arrived in any process; all of them must stop after the same step,
        or the others would wait forever for the next gradient all-reduce."""
        if not self.ctx.enabled:
            return bool(self.interrupted)
        flag = torch.tensor(float(bool(self.interrupted)), device=self.device)
        return all_reduce_mean(flag, self.ctx).item() > 0

    def train_step(self, satellite, drone, labels, stats: EpochStats, epoch: int, index: int) -> None:
        satellite = satellite.to(self.device, non_blocking=True)
        drone = drone.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        # A forward that overflows poisons BatchNorm running statistics before the loss shows it:
        # keep the buffers to put back if the step is skipped.
        buffers = [b.detach().clone() for b in self.model.buffers()]
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            out_sat, out_drone = self.network(satellite, drone)
            teacher_sat = teacher_drone = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_sat = self.teacher.forward_heads(satellite)
                    teacher_drone = self.teacher.forward_heads(drone)
            total, terms = self.criterion(out_sat, out_drone, labels, teacher_sat, teacher_drone)
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
        predictions = out_sat[0][0].detach().argmax(1), out_drone[0][0].detach().argmax(1)
        correct = int(sum((p == labels).sum() for p in predictions))
        stats.add({k: all_reduce_mean(v, self.ctx) for k, v in terms.items()}, correct, 2 * labels.numel())

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
        self.logger.warning("epoch %d batch %d: %s; step skipped (%d in a row)", epoch, index, reason, self.bad_steps)
        if self.bad_steps >= self.args.max_bad_steps:
            raise UserError(f"training diverged: {self.bad_steps} consecutive steps with non-finite values at "
                            f"epoch {epoch}; {self.run_dir / LAST_CHECKPOINT} holds the last good state "
                            f"(lower --lr or raise --max_bad_steps)")

    def fit(self) -> None:
        args = self.args
        table = None
        if self.ctx.is_main:
            table = MetricsTable(self.run_dir, keep_through_epoch=self.start_epoch, rows=self.history)
        if self.history is None:  # a fresh run, or a checkpoint older than the record: start from the CSV
            self.history = list(table.rows) if table is not None else []
        self.logger.info("precision: %s on %s", self.precision, self.device)
        exact, total = count_exact_binary(self.model)
        self.logger.info("%s: %d classes, %d training items, %d binary convolutions (%d with exactly ±1 "
                         "forward weights)", args.model, self.num_classes, len(self.dataset), total, exact)
        for epoch in range(self.start_epoch, args.epochs):
            start = time.time()
            means = self.train_epoch(epoch)
            if means is None:
                self.stopped = True
                return
            for sched in self.schedulers.values():
                sched.step()
            if args.temperature_decay != 1.0:
                anneal_temperature(self.model, args.temperature_decay)
            exact, total = count_exact_binary(self.model)
            row = {"epoch": epoch + 1, "phase": self.phase, **means, "binary_exact": f"{exact}/{total}",
                   "seconds": round(time.time() - start, 2)}
            row.update({f"lr_{k}": o.param_groups[0]["lr"] for k, o in self.optimizers.items()})
            # The checkpoint (which carries the row) is written before metrics.csv: the CSV is never
            # ahead of the checkpoint, and a kill in between loses no row.
            self.history.append(row)
            last = epoch + 1 == args.epochs
            keep = last or (args.save_every > 0 and (epoch + 1) % args.save_every == 0)
            self.save(epoch + 1, keep=keep)
            barrier(self.ctx)
            self.logger.info("epoch %d/%d  %s", epoch + 1, args.epochs,
                             "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in row.items() if k != "epoch"))
            if table is not None:
                table.append(row)
                table.plot()
            if not last and self._stop_requested():
                self.stopped = True
                self.logger.warning("interrupted after epoch %d; continue with --resume", epoch + 1)
                return


def run_options(args, num_classes: int) -> dict:
    """What opts.yaml records: every flag, plus what test.py needs to rebuild the network."""
    return {"model": args.model, "model_options": model_options(args), "num_classes": num_classes,
            "dataset": args.dataset, "altitude": args.altitude, "h": args.h, "w": args.w, "args": vars(args)}


@exit_on_user_error
def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = init_distributed(resolve_device(args.device).type)
    try:
        run_dir = Path(args.checkpoint_dir) / args.name
        if ctx.is_main:
            run_dir = prepare_run_dir(args.checkpoint_dir, args.name, args.resume, args.overwrite)
        barrier(ctx)
        logger = setup_logger(run_dir, ctx.is_main)
        if ctx.is_main:
            for path in remove_temporaries(run_dir):
                logger.warning("removed %s, left by a write that was killed before it completed", path)
        trainer = Trainer(args, ctx, run_dir, logger)
        if args.resume:
            trainer.restore()
        elif ctx.is_main:
            save_opts(run_dir, run_options(args, trainer.num_classes))

        def on_signal(signum, _frame):
            # First signal: finish the current step, save and exit; a second one aborts at once.
            # DataLoader workers are forked after this is installed and inherit it, so a signal sent
            # to the whole process group (Ctrl-C in a terminal, a scheduler's SIGTERM) does not kill
            # them under the main process.
            trainer.interrupted = trainer.interrupted or signum
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

        previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
        try:
            trainer.fit()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if trainer.stopped:
            return 128 + (trainer.interrupted or signal.SIGINT)  # shell convention: 130 Ctrl-C, 143 SIGTERM
        logger.info("done: %s", run_dir)
        return 0
    finally:
        shutdown(ctx)


if __name__ == "__main__":
    raise SystemExit(main())
