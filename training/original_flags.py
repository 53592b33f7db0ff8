"""Flags of the original training scripts (MCCG's and the released BiCrossNet ``train.py``).

Users bring command lines from those scripts. A flag either keeps its meaning here (the parser
gives it an alias or accepts its spelling) or is refused with one line naming what to use
instead: none may silently mean something else.

Aliases the parser of ``train.py`` takes (see its help): ``--fp16`` and ``--autocast`` for
``--amp``; the optimizer names ``Adam``, ``SGD``, ``Lion``, ``AdamLion`` in any case;
``--dataset sue`` for ``sues``; ``--views`` and ``--extra_Google`` as in MCCG.
"""
from typing import Dict, Optional, Sequence

from utils.errors import UserError

__all__ = ["DATASET_SPELLINGS", "REFUSED_FLAGS", "check_original_flags", "dataset_name", "optimizer_name"]

# flag -> why it cannot keep its meaning here, and what to use instead
REFUSED_FLAGS: Dict[str, str] = {
    "--DA": "means the opposite in MCCG (store_true: turns AutoAugment on) and in the released BiCrossNet code "
            "(store_false: turns it off); say --autoaugment or --no-autoaugment",
    "--gpu_ids": "is MCCG's GPU list; here use --device cuda (pick the GPU with CUDA_VISIBLE_DEVICES=N) or "
                 "torchrun --nproc_per_node=K train.py ... for K GPUs",
    "--share": "gives the street view its own network in MCCG; this project always shares one network across "
               "views (MCCG's default), so drop the flag",
    "--droprate": "has no effect in MCCG's head (its ClassBlock always uses dropout 0.5, as here); drop the flag",
    "--warm_epoch": "is MCCG's loss warm-up, which this recipe does not use (its default, 0, is the same); "
                    "drop the flag",
    "--resnet": "selects MCCG's ResNet-50 backbone, which this project does not build; choose a --model",
    "--kl_loss": "is MCCG's mutual KL between views; distillation from a teacher is --teacher_path with "
                 "--kd_mode kl",
    "--fname": "names the released code's log file; this project writes train.log and metrics.csv in the run folder",
    "--pad": "is fixed at MCCG's 10 pixels here; drop the flag",
    "--train_all": "selects MCCG's train+val split; University-1652 has none, and --data_dir names the folder "
                   "trained on; drop the flag",
}

DATASET_SPELLINGS = {"sue": "sues"}  # the released scripts' --dataset sue


def _flag_of(token: str) -> Optional[str]:
    return token.split("=", 1)[0] if token.startswith("--") else None


def check_original_flags(argv: Sequence[str]) -> None:
    """Refuse, with one line, the first original flag in ``argv`` that cannot keep its meaning."""
    for token in argv:
        flag = _flag_of(token)
        if flag in REFUSED_FLAGS:
            raise UserError(f"{flag} {REFUSED_FLAGS[flag]}")
        if token == "--":
            return


def optimizer_name(value: str) -> str:
    """``--optimizer`` in any case, so the released scripts' ``AdamLion`` is ``adamlion``."""
    return value.lower()


def dataset_name(value: str) -> str:
    """``--dataset`` with the released scripts' spelling ``sue`` accepted for ``sues``."""
    return DATASET_SPELLINGS.get(value.lower(), value.lower())
