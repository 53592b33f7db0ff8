#!/usr/bin/env python
r"""Train a BiCrossNet student (binary BNext + MCCG head) or its ConvNeXt teacher.

The student recipe (docs/method.md §3): bi-gradual unfreezing (head → full-precision parameters →
binary weights), bi-partitioned optimization (Lion for binary latent weights, Adam/AdamW for the
rest), cross-entropy + cross-view triplet loss, and logit distillation from a frozen teacher.

    python train.py --name bicrossnet_t --data_dir data/University-1652/train \
        --teacher_path checkpoints/teacher
    python train.py --name teacher --model mccg_convnext_tiny    # the teacher recipe's defaults (see below)
    torchrun --nproc_per_node=4 train.py ...      # DistributedDataParallel, one process per GPU

A teacher model (mccg_convnext_*) trains with the teacher recipe's defaults wherever the command line
leaves a flag out: --optimizer sgd --lr 0.01 --epochs 200 --steps 80 120 --bigradual_n1 0
--bigradual_n2 0. The defaults listed below are the student recipe's. opts.yaml records the recipe
and the flags given explicitly.
"""
import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Dict, Tuple

from datasets import BAD_IMAGE_MODES, DATASETS, SUES_ALTITUDES
from datasets.pairs import VIEWS
from training.distributed import barrier, init_distributed, shutdown
from training.options import (PRESETS, PROGRESS_CHOICES, RECIPE_DEFAULTS, RESUME_OVERRIDES, apply_recipe_defaults, given_flags,
                              merge_saved_opts, recipe_of, run_options, start_warnings, validate)
from training.original_flags import check_original_flags, dataset_name, optimizer_name
from runs.claim import RunClaim, save_opts
from runs.layout import run_folder
from training.stop_signals import stop_on_signals
from training.trainer import Trainer
from training.training_log import attach_log_file, setup_logger
from losses import KD_MODES
from models import list_models
from models.bnext import BINARIZERS
from models.mccg import BLOCKS, CLASSBLOCK_BN_INITS, HEAD_INPUTS
from optim.factory import OPTIMIZER_CHOICES
from optim.unfreeze import FROZEN_BN_CHOICES
from utils.cli import HelpFormatter, add_checkpoint_dir, add_device_flags
from utils.device import resolve_device
from utils.errors import UserError, exit_on_user_error
from utils.files import remove_temporaries


class TrainingHelpFormatter(HelpFormatter):
    """The shared help layout, with the teacher recipe's default beside a flag's where it differs."""

    def _get_help_string(self, action):
        teacher = RECIPE_DEFAULTS["teacher"]
        if action.dest not in teacher:
            return super()._get_help_string(action)
        return f"{action.help} (default: %(default)s; teachers, mccg_convnext_*: {_value_text(teacher[action.dest])})"


def _value_text(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=TrainingHelpFormatter)
    _add_run_flags(parser.add_argument_group("run"))
    _add_data_flags(parser.add_argument_group("data"))
    _add_model_flags(parser.add_argument_group("model"))
    _add_optimization_flags(parser.add_argument_group("optimization"))
    _add_distillation_flags(parser.add_argument_group("distillation"))
    return parser


def _add_run_flags(run) -> None:
    """Where the run lives, how it runs, and when it saves or gives up."""
    run.add_argument("--name", default="bicrossnet", help="run name; files go to <checkpoint_dir>/<name>/")
    add_checkpoint_dir(run)
    run.add_argument("--resume", action="store_true",
                     help="continue the run <name> from its last.pth with the run's own settings; only "
                          + ", ".join(f"--{flag}" for flag in RESUME_OVERRIDES) + " may change")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory <name>")
    run.add_argument("--seed", type=int, default=1, help="random seed (CPU runs are bit-reproducible)")
    add_device_flags(run)
    run.add_argument("--amp", "--fp16", "--autocast", dest="amp", action="store_true",
                     help="mixed precision (float16 autocast + GradScaler) on CUDA; --fp16 and --autocast are the "
                          "original scripts' names for it")
    run.add_argument("--save_every", type=int, default=0,
                     help="also keep net_<epoch>.pth every N epochs (0: only the final epoch); last.pth is always kept")
    run.add_argument("--keep_last", type=int, default=0,
                     help="keep only the K newest net_<epoch>.pth files (0: keep all)")
    run.add_argument("--max_bad_steps", type=int, default=10,
                     help="stop with an error after this many consecutive steps with a non-finite loss")
    run.add_argument("--progress", default="auto", choices=PROGRESS_CHOICES,
                     help="per-step progress bars on stderr; auto: only when stderr is a terminal (the log has "
                          "one line per epoch either way)")
    run.add_argument("--tensorboard", action="store_true",
                     help="also write the per-epoch metrics as TensorBoard scalars to <run>/tensorboard/")


def _add_data_flags(data) -> None:
    """The training set and its augmentations."""
    data.add_argument("--data_dir", default="data/University-1652/train",
                      help="training folder: University-1652/train, or SUES-200/train (with --altitude)")
    data.add_argument("--dataset", default="university", type=dataset_name, choices=DATASETS,
                      help="dataset layout (the released scripts' 'sue' is accepted for sues)")
    data.add_argument("--altitude", type=int, default=None, choices=SUES_ALTITUDES,
                      help="SUES-200 altitude subfolder of --data_dir")
    data.add_argument("--h", type=int, default=256, help="input height")
    data.add_argument("--w", type=int, default=256, help="input width")
    data.add_argument("--batchsize", type=int, default=8, help="classes per step (per process under torchrun)")
    data.add_argument("--views", type=int, default=2, choices=sorted(VIEWS),
                      help="views per training item: 2 = satellite + drone (the paper's setting); 3 adds a "
                           "street image (University-1652 only), as MCCG's --views 3")
    data.add_argument("--extra_Google", action="store_true",
                      help="with --views 3: draw street images from train/google/ too (noisier; MCCG's flag)")
    data.add_argument("--sample_num", type=int, default=1, help="times each class is drawn per epoch")
    data.add_argument("--erasing_p", type=float, default=0.5, help="RandomErasing probability on drone images")
    data.add_argument("--color_jitter", action="store_true", help="add ColorJitter(0.1, 0.1, 0.1)")
    data.add_argument("--autoaugment", dest="DA", action=argparse.BooleanOptionalAction, default=True,
                      help="AutoAugment (ImageNet policy) on drone and street images (the original scripts' --DA, "
                           "whose meaning differs between them, is refused)")
    data.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                      help="data-loading processes; by default min(8, CPU cores)")
    data.add_argument("--on_bad_image", default="error", choices=BAD_IMAGE_MODES,
                      help="unreadable image files: stop with an error, or skip them with a warning")


def _add_model_flags(model) -> None:
    """The network and its binarizers."""
    model.add_argument("--model", default="bicrossnet_bnext_tiny",
                       help=f"network to train; one of: {', '.join(list_models())}")
    model.add_argument("--block", type=int, default=2, choices=BLOCKS,
                       help="attention branches of the MCCG head (2 ⇒ 3 classifiers)")
    model.add_argument("--head_input", default="spatial", choices=HEAD_INPUTS,
                       help="feed the head the feature map (spatial) or the released code's pooled 1×1 map")
    model.add_argument("--classblock_bn_init", default="constant", choices=CLASSBLOCK_BN_INITS,
                       help="initial BatchNorm scale of the head's bottlenecks: constant 1 (MCCG and the released "
                            "code) or normal N(1, 0.02) (the University-1652 baseline)")
    model.add_argument("--binarizer", default="bnext", choices=BINARIZERS, help="binary weight quantizer")
    model.add_argument("--temperature", type=float, default=0.0,
                       help="initial BNext weight temperature (0: binary from the start; 1: real-valued)")
    model.add_argument("--temperature_decay", type=float, default=1.0,
                       help="multiply the BNext temperature by this each epoch (the BNext recipe uses 0.9)")
    model.add_argument("--backbone_weights", default=None,
                       help="ImageNet weights for the backbone (BNext .pth.tar, or timm/ConvNeXt checkpoint)")


def _add_optimization_flags(recipe) -> None:
    """Optimizers, schedules, bi-gradual unfreezing and the triplet margin."""
    recipe.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                        help="student recipe: paper (this project's reading of the paper) or release (what the "
                             "released scripts ran: " + " ".join(_flag_text(k, v) for k, v in PRESETS["release"].items())
                             + "); flags given explicitly win")
    recipe.add_argument("--optimizer", default="adamlion", type=optimizer_name, choices=OPTIMIZER_CHOICES,
                        help="adamlion/adamwlion: Lion for binary weights, Adam(W) for the rest; "
                             "sgd: teacher recipe; adam/lion: one optimizer for everything")
    recipe.add_argument("--lr", type=float, default=0.006, help="learning rate of Adam/AdamW/SGD")
    recipe.add_argument("--lion_lr_ratio", type=float, default=1 / 6, help="Lion lr = lr × this")
    recipe.add_argument("--lion_schedule_start", type=int, default=0,
                        help="Lion's lr schedule steps only after this many epochs (the released code: 31)")
    recipe.add_argument("--weight_decay", type=float, default=None,
                        help="weight decay; None: 5e-4 for sgd, 0.01 for adamwlion, 0 otherwise")
    recipe.add_argument("--backbone_lr_scale", type=float, default=0.3, help="sgd: backbone lr = lr × this")
    recipe.add_argument("--epochs", type=int, default=300, help="training epochs")
    recipe.add_argument("--steps", type=int, nargs="+", default=[80, 120, 200], help="MultiStepLR milestones (epochs)")
    recipe.add_argument("--gamma", type=float, default=0.1, help="MultiStepLR decay factor")
    recipe.add_argument("--bigradual_n1", type=int, default=20,
                        help="epochs that train the head only, before the full-precision backbone parameters "
                             "train too (epoch N+1 is the first with them)")
    recipe.add_argument("--bigradual_n2", type=int, default=20,
                        help="epochs before the binary weights train too (>= --bigradual_n1)")
    recipe.add_argument("--frozen_bn", default="update", choices=FROZEN_BN_CHOICES,
                        help="BatchNorm layers whose parameters are frozen (phase 1: the backbone's) keep updating "
                             "their running statistics (update), or stay as loaded (freeze)")
    recipe.add_argument("--triplet_loss", type=float, default=0.3, help="triplet margin (0 disables the triplet loss)")


def _add_distillation_flags(kd) -> None:
    """The teacher and the distillation loss."""
    kd.add_argument("--teacher_path", default=None, help="teacher run directory or checkpoint (enables distillation)")
    kd.add_argument("--allow_fewer_teacher_views", action="store_true",
                    help="distil a --views 3 student from a teacher trained on 2 views (refused otherwise: its "
                         "classifiers never saw street images)")
    kd.add_argument("--kd_weight", type=float, default=2.0, help="weight of the distillation loss")
    kd.add_argument("--kd_temperature", type=float, default=4.0, help="softmax temperature of KL distillation")
    kd.add_argument("--kd_mode", default="kl", choices=KD_MODES,
                    help="kl: Hinton KL on softened logits; mse: the released logits+features MSE / 4")


def parse_args(argv=None) -> argparse.Namespace:
    """The flags of ``argv``, checked; on --resume, merged with the run's saved ones."""
    return parse_command(argv)[0]


def parse_command(argv=None) -> Tuple[argparse.Namespace, set, Dict[str, object]]:
    """``(args, given, recipe_values)``: the checked flags, the names of those given on the command
    line, and the recipe defaults put in for the others. A new run takes its model's recipe
    defaults; --resume takes the run's saved flags."""
    argv = sys.argv[1:] if argv is None else list(argv)
    check_original_flags(argv)
    parser = get_args_parser()
    args = parser.parse_args(argv)
    given = given_flags(parser, args, argv)
    run_folder(args.checkpoint_dir, args.name)
    if args.resume and args.overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: pass only one of them")
    applied = {}
    if args.resume:
        args = merge_saved_opts(args, given)
    else:
        applied = apply_recipe_defaults(args, given)
    validate(args)
    return args, given, applied


@exit_on_user_error
def main(argv=None) -> int:
    args, given, applied = parse_command(argv)
    ctx = init_distributed(resolve_device(args.device).type)
    claim = RunClaim(args.checkpoint_dir, args.name, args.resume, args.overwrite) if ctx.is_main else None
    try:
        if claim is not None:
            claim.lock()
        logger = setup_logger(ctx.is_main)
        if applied:
            preset = f" (--preset {args.preset})" if recipe_of(args.model) == "student" and args.preset != "paper" else ""
            logger.info("%s recipe%s defaults for %s: %s (flags given on the command line keep their values)",
                        recipe_of(args.model), preset, args.model, " ".join(_flag_text(k, v) for k, v in applied.items()))
        warnings_text = [] if args.resume else start_warnings(args)
        for text in warnings_text:
            logger.warning("%s", text)
        # Everything that can refuse the run (data, model, teacher, input size, the checkpoint to
        # resume) is checked before the run folder is touched.
        trainer = Trainer(args, ctx, Path(args.checkpoint_dir) / args.name, logger)
        if args.resume:
            trainer.restore()
        if claim is not None:
            start_run_files(claim, trainer, args, given, logger, warnings_text)
        barrier(ctx)
        with stop_on_signals(trainer):
            trainer.fit()
        if trainer.stopped:
            return 128 + (trainer.interrupted or signal.SIGINT)  # shell convention: 130 Ctrl-C, 143 SIGTERM
        logger.info("done: %s", trainer.run_dir)
        return 0
    except BaseException:
        if claim is not None:
            claim.abandon()  # a start that failed before its first checkpoint leaves no trace
        raise
    finally:
        if claim is not None:
            claim.release()
        shutdown(ctx)


def _flag_text(flag: str, value) -> str:
    return f"--{flag} {_value_text(value)}"


def start_run_files(claim: RunClaim, trainer: Trainer, args, given: set, logger, warnings_text) -> None:
    """Create (or reopen) the run folder and its log; a new run records its options and the
    warnings it started with."""
    run_dir = claim.create()
    attach_log_file(run_dir)
    for path in remove_temporaries(run_dir):
        logger.warning("removed %s, left by a write that was killed before it completed", path)
    if not args.resume:
        save_opts(run_dir, {**run_options(args, trainer.num_classes, given), "warnings": warnings_text})
    trainer.after_checkpoint = claim.commit


if __name__ == "__main__":
    raise SystemExit(main())
