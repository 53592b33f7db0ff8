"""The teacher on ONNX Runtime, FP32 and INT8, as references for the feature-throughput benchmark.

A user who wants a faster full-precision teacher could run it on ONNX Runtime instead of PyTorch,
so the 1-bit student is measured against that too: the teacher exported to ONNX (batch axis
dynamic), and its static INT8 quantization (QDQ format, per-channel weights, activations
calibrated on random images, which does not change the speed). ``onnxruntime`` and ``onnx`` are
optional benchmark dependencies (docs/engine_speed.md); without them :func:`onnx_teachers`
returns nothing and says why in one line. Sessions never spin waiting for work, so an idle
session does not take cores from the model timed next.
"""
import logging
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch
import torch.nn as nn

CALIBRATION_IMAGES = 4


def _export(model: nn.Module, size: int, path: Path) -> None:
    x = torch.randn(2, 3, size, size)  # batch 1 would make the exporter fix the batch axis
    torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["features"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True, external_data=False)


def _quantize(fp32: Path, int8: Path, size: int) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class RandomImages(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"images": rng.standard_normal((1, 3, size, size), dtype=np.float32)}
                                 for _ in range(CALIBRATION_IMAGES)])

        def get_next(self):
            return next(self.batches, None)

    prepared = int8.with_name("prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # per-channel notes on the LayerNorms, which stay in float
    try:
        quantize_static(str(prepared), str(int8), RandomImages(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    finally:
        root.setLevel(level)


class OnnxModel:
    """A session called like a module on a CPU tensor."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor):
        return self.session.run(None, {"images": x.numpy()})[0]


def onnx_teachers(model: nn.Module, size: int, folder: str) -> Dict[str, Callable[[int], OnnxModel]]:
    """``{"teacher onnxruntime fp32": make, "teacher onnxruntime int8": make}``, where ``make(threads)``
    opens a session on that many threads; empty (after a one-line note) without onnxruntime."""
    try:
        import onnx  # noqa: F401 (the exporter and the quantizer need it)
        import onnxruntime  # noqa: F401
    except ImportError as err:
        print(f"note: teacher on ONNX Runtime skipped ({err.name} is not installed; "
              f"pip install onnxruntime onnx onnxscript)")
        return {}
    fp32, int8 = Path(folder) / "teacher.onnx", Path(folder) / "teacher_int8.onnx"
    _export(model, size, fp32)
    _quantize(fp32, int8, size)
    return {"teacher onnxruntime fp32": lambda threads: OnnxModel(fp32, threads),
            "teacher onnxruntime int8": lambda threads: OnnxModel(int8, threads)}
