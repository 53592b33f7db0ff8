"""Where a network runs, and at which floating-point precision.

A binary network turns tiny float differences into flipped signs, so retrieval numbers are only
comparable when the arithmetic behind them is known. Recent NVIDIA GPUs run float32 convolutions
(and, when enabled, matrix products) in TF32 by default; float16 autocast rounds further. Entry
points therefore set the precision explicitly — full IEEE float32 unless TF32 or AMP is asked
for — and record the label :func:`configure_precision` returns next to every result.
"""
import torch

from .errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when present (the process's ``local_rank`` GPU), else CPU."""
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was requested but no CUDA device is available; use device 'cpu'")
    if choice != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def device_label(device: torch.device) -> str:
    """``'cpu'`` or ``'cuda (<GPU model>)'``, as recorded with results."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def configure_precision(device: torch.device, amp: bool = False, tf32: bool = False) -> str:
    """Set PyTorch's float32 arithmetic for CUDA and return the precision label of ``device``.

    ``tf32`` lets cuDNN convolutions and cuBLAS matrix products use TF32 (PyTorch's default for
    convolutions); without it both run in IEEE float32. ``amp`` (float16 autocast) is applied by
    the caller; here it only shapes the label. Labels: ``fp32``, ``tf32``, ``amp-fp16``,
    ``amp-fp16+tf32``; the CPU always computes in ``fp32``.
    """
    precision = "tf32" if tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    if torch.device(device).type != "cuda":
        return "fp32"
    if amp:
        return "amp-fp16+tf32" if tf32 else "amp-fp16"
    return "tf32" if tf32 else "fp32"
