"""Eval-mode feature extraction speed of the binary student, float and bit-packed, against the teacher.

On the CPU one run times, at every batch size and thread count asked (models taking turns in each
round, so load from other processes hits all alike):

* ``student float``: the training network; its binary convolutions run as float convolutions with
  +-1 weights, as in ``test.py``;
* ``student bitpacked``: the same weights on :mod:`models.bitpacked` (XNOR/popcount kernels), the
  exact engine (features bit for bit the float network's);
* ``student fused``: the fused engine (full-precision tail in C++, rounds differently);
* the teacher in each ``--teacher_modes`` configuration: ``eager`` (NCHW, oneDNN convolutions),
  ``channels_last``, ``compile`` (``torch.compile``, inductor, C++/OpenMP code built
  locally), ``onnxruntime`` (ONNX Runtime FP32 and static per-channel INT8, when installed:
  :mod:`benchmarks.onnx_reference`). The fastest one is the reference of the ratios.

``--background N`` runs N busy processes while the models are timed (one per core is the load
the engine must hold up under); medians are reported beside bests.

Then, per batch size at the largest thread count (without the background load): where each
bit-packed student's wall time goes, with its binary convolutions' MAC rates against the popcount
kernel's peak measured on this machine, layer by layer (:mod:`benchmarks.engine_profile`); and
each model's memory, in a fresh process per model: weights and buffers, and the resident set's
rise over a first forward (its peak reset after loading). ``--json FILE`` writes every figure.

Weights are random: speed does not depend on them. On CUDA (``--device auto`` picks it when
present) only the float networks run, each also under float16 autocast.

Run from the repository root, e.g. ``python -m benchmarks.feature_throughput --batch 1 16 --threads 1 2``.
"""
import argparse
import copy
import gc
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import torch
import torch.nn as nn

from benchmarks.background import busy_processes
from benchmarks.engine_profile import print_profile, profile_engine
from benchmarks.onnx_reference import onnx_teachers
from models import bitpacked, build_model
from utils.device import DEVICE_CHOICES, configure_precision, device_label, resolve_device

NUM_CLASSES = 701  # University-1652; only the unused classifier depends on it
TEACHER_MODES = ("eager", "channels_last", "compile", "onnxruntime")
ENGINES = ("student bitpacked", "student fused")
# Target of the fused engine against the fastest teacher, at every batch size and thread count.
TARGET_VS_TEACHER = 3.5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="bicrossnet_bnext_tiny", help="student model name")
    parser.add_argument("--teacher", default="mccg_convnext_tiny", help="teacher model name")
    parser.add_argument("--size", type=int, default=256, help="input height and width")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes first")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per model (best and median reported)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="CPU thread counts (default: 1 and torch's default)")
    parser.add_argument("--teacher_modes", nargs="+", default=list(TEACHER_MODES), choices=TEACHER_MODES,
                        help="CPU configurations of the teacher to time")
    parser.add_argument("--background", type=int, default=0, metavar="N",
                        help="busy processes running while the models are timed")
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="auto picks CUDA when present")
    parser.add_argument("--probe_memory", help=argparse.SUPPRESS)  # internal: one model's peak RSS, as JSON
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ChannelsLast(nn.Module):
    """A copy of the model with channels-last weights, fed channels-last images."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def compiled(model: nn.Module) -> nn.Module:
    """Inductor (C++/OpenMP code built locally) whose OpenMP regions follow the thread count. Weight
    freezing is left off: it made ConvNeXt-T 2x slower on this CPU."""
    import torch._inductor.config as inductor_config

    inductor_config.cpp.dynamic_threads = True
    return torch.compile(copy.deepcopy(model), dynamic=False)


def cpu_models(args, names=None) -> Dict[str, nn.Module]:
    """The timed callables by name (``names`` picks some of them, without building the others)."""
    wanted = lambda name: names is None or name in names  # noqa: E731
    models = {}
    if any(wanted(name) for name in ("student float", *ENGINES)):
        student = build_model(args.student, NUM_CLASSES).eval()
        if wanted("student float"):
            models["student float"] = student
        for name in ENGINES:
            if wanted(name) and bitpacked.available():
                models[name] = bitpacked.convert(student, engine=name.split()[1])
    modes = [m for m in args.teacher_modes if m != "onnxruntime" and wanted(f"teacher {m}")]
    if modes:
        teacher = build_model(args.teacher, NUM_CLASSES).eval()
        variants = {"eager": lambda m: m, "channels_last": ChannelsLast, "compile": compiled}
        models.update({f"teacher {mode}": variants[mode](teacher) for mode in modes})
    return models


@torch.inference_mode()
def time_interleaved(models: Dict[str, nn.Module], x: torch.Tensor, warmup: int, repeats: int,
                     amps=(False,)) -> Dict[tuple, List[float]]:
    """Wall times of eval forward passes per ``(model, amp)``, the entries taking turns in every round."""
    times = {(name, amp): [] for name in models for amp in amps}
    for round_index in range(warmup + repeats):
        for (name, amp), samples in times.items():
            synchronize(x.device)
            start = time.perf_counter()
            with torch.autocast(x.device.type, dtype=torch.float16, enabled=amp):
                models[name](x)
            synchronize(x.device)
            if round_index >= warmup:
                samples.append(time.perf_counter() - start)
    return times


def rows_of(times, batch: int, threads, precision: str) -> List[dict]:
    return [{"model": name, "precision": "amp-fp16" if amp else precision, "batch": batch, "threads": threads,
             "best_s": min(s), "median_s": statistics.median(s), "images_per_s": batch / min(s),
             "images_per_s_median": batch / statistics.median(s)} for (name, amp), s in times.items()]


def print_rows(rows: List[dict]) -> None:
    print("| model | precision | threads | batch | best s / batch | median s / batch | images / s (best) | "
          "images / s (median) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['precision']} | {r['threads'] or '-'} | {r['batch']} | {r['best_s']:.4f} | "
              f"{r['median_s']:.4f} | {r['images_per_s']:.2f} | {r['images_per_s_median']:.2f} |")


def vm_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def weight_mib(model: nn.Module) -> float:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 2 ** 20


@torch.inference_mode()
def probe_memory(args) -> None:
    """Child process: the rise of the resident set over a first forward of one model, after loading it."""
    torch.set_num_threads(max(args.threads))
    model = cpu_models(args, names={args.probe_memory})[args.probe_memory]
    x = torch.randn(args.batch[0], 3, args.size, args.size)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident set
    before = vm_kib("VmRSS")
    model(x)
    print(json.dumps({"weights_mib": weight_mib(model), "forward_peak_mib": (vm_kib("VmHWM") - before) / 1024}))


def measure_memory(args, names: List[str], batch: int) -> List[dict]:
    """Peak RSS of each model's forward at ``batch``, each model in a fresh process."""
    rows = []
    for name in names:
        command = [sys.executable, "-m", "benchmarks.feature_throughput", "--probe_memory", name, "--batch", str(batch),
                   "--size", str(args.size), "--threads", str(max(args.threads)), "--student", args.student,
                   "--teacher", args.teacher, "--teacher_modes", *args.teacher_modes]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            print(f"note: memory of {name} not measured ({(done.stderr.strip().splitlines() or ['?'])[-1]})")
            continue
        rows.append({"model": name, "batch": batch, **json.loads(lines[-1])})
    return rows


def ratios(rows: List[dict], threads: int, batches: List[int]) -> List[dict]:
    """Each bit-packed engine against the fastest teacher runtime and against the float student, from
    best times and from median times."""
    out = []
    for batch in batches:
        cell = [r for r in rows if r["batch"] == batch and r["threads"] == threads]
        for stat in ("images_per_s", "images_per_s_median"):
            speed = {r["model"]: r[stat] for r in cell}
            teachers = {k: v for k, v in speed.items() if k.startswith("teacher")}
            best_teacher = max(teachers, key=teachers.get) if teachers else None
            for engine in (e for e in ENGINES if e in speed):
                out.append({"batch": batch, "threads": threads, "engine": engine, "statistic": stat,
                            "teacher_reference": best_teacher,
                            "vs_teacher": speed[engine] / teachers[best_teacher] if teachers else None,
                            "vs_float": speed[engine] / speed["student float"] if "student float" in speed else None})
    return out


def print_ratios(results: List[dict]) -> None:
    print("\n| batch | threads | engine | from | / fastest teacher | fastest teacher | / float student |\n"
          "|---:|---:|---|---|---:|---|---:|")
    show = lambda value: "-" if value is None else f"{value:.2f}x"  # noqa: E731
    for r in results:
        stat = "best" if r["statistic"] == "images_per_s" else "median"
        print(f"| {r['batch']} | {r['threads']} | {r['engine']} | {stat} | {show(r['vs_teacher'])} | "
              f"{r['teacher_reference']} | {show(r['vs_float'])} |")
    print(f"\n(target of the fused engine: >= {TARGET_VS_TEACHER:g}x the fastest teacher in every cell)")


def time_rows(args, models: Dict[str, nn.Module], onnx: dict) -> List[dict]:
    """Timed rows of every model at every thread count and batch size (ONNX sessions are opened
    per thread count), under ``args.background`` busy processes."""
    rows = []
    with busy_processes(args.background):
        for threads in args.threads:
            torch.set_num_threads(threads)
            timed = {**models, **{name: make(threads) for name, make in onnx.items()}}
            for batch in args.batch:
                x = torch.randn(batch, 3, args.size, args.size)
                rows += rows_of(time_interleaved(timed, x, args.warmup, args.repeats), batch, threads, "fp32")
    return rows


def run_cpu(args) -> dict:
    torch.manual_seed(0)
    models = cpu_models(args)
    with tempfile.TemporaryDirectory() as folder:
        onnx = onnx_teachers(build_model(args.teacher, NUM_CLASSES).eval(), args.size, folder) \
            if "onnxruntime" in args.teacher_modes else {}
        rows = time_rows(args, models, onnx)
    engines = [e for e in ENGINES if e in models]
    print(f"cpu, {args.size}x{args.size}, {args.repeats} timed passes each after {args.warmup} warm-up, "
          f"models alternating, {args.background} busy background processes; "
          f"bitpacked path: {bitpacked.active_isa() if engines else 'unavailable'}\n")
    print_rows(rows)
    threads = max(args.threads)
    results = {"device": "cpu", "size": args.size, "background": args.background, "rows": rows, "memory": [],
               "profiles": {}}
    if engines:
        results["peak_binary_mac_per_s"] = {}
        for t in args.threads:
            torch.set_num_threads(t)
            results["peak_binary_mac_per_s"][t] = bitpacked.peak_binary_macs()
        torch.set_num_threads(threads)
        for engine in engines:
            results["profiles"][engine] = [profile_engine(models[engine], b, args.size, args.repeats,
                                                          results["peak_binary_mac_per_s"][threads])
                                           for b in args.batch]
            for profile in results["profiles"][engine]:
                print_profile(engine, profile, threads)
        results["ratios"] = [r for t in args.threads for r in ratios(rows, t, args.batch)]
        print_ratios(results["ratios"])
    if not args.no_memory:
        names = [n for n in models if n != "teacher compile"]  # compiling again per process costs minutes
        results["memory"] = [m for b in args.batch for m in measure_memory(args, names, b)]
        print(f"\nmemory ({threads} threads; a fresh process per model: resident-set rise over its first forward)\n")
        print("| model | batch | weights and buffers (MiB) | forward peak above the loaded model (MiB) |")
        print("|---|---:|---:|---:|")
        for m in results["memory"]:
            print(f"| {m['model']} | {m['batch']} | {m['weights_mib']:.1f} | {m['forward_peak_mib']:.0f} |")
    return results


def run_cuda(args, device: torch.device) -> dict:
    precision = configure_precision(device)
    torch.manual_seed(0)
    models = {name: build_model(name, NUM_CLASSES).eval().to(device) for name in (args.student, args.teacher)}
    rows = []
    for batch in args.batch:
        x = torch.randn(batch, 3, args.size, args.size, device=device)
        rows += rows_of(time_interleaved(models, x, args.warmup, args.repeats, (False, True)), batch, None, precision)
    print(f"{device_label(device)}, {args.size}x{args.size}, {args.repeats} timed passes each after {args.warmup} "
          f"warm-up, models alternating\n")
    print_rows(rows)
    return {"device": device_label(device), "size": args.size, "rows": rows}


def main(argv=None) -> None:
    args = parse_args(argv)
    args.threads = args.threads or sorted({1, torch.get_num_threads()})
    if args.probe_memory:
        probe_memory(args)
        return
    device = resolve_device(args.device)
    results = run_cuda(args, device) if device.type == "cuda" else run_cpu(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
