"""The BiCrossNet recipe against its ablations on synthetic University-1652-layout data, over seeds.

Every variant trains through the real ``train.py`` and is evaluated by ``test.py`` in both
directions, once per seed (``--seed`` of train.py: initialization, sampling, augmentation), on one
generated dataset:

- ``teacher``: the ConvNeXt teacher alone (Adam, from scratch, on its own budget: by default the
  teacher settings of ``make demo``, 24 epochs × 12 draws per class in batches of 16; with less it
  stayed weaker than the student it teaches);
- ``full``: the student recipe: distillation from that seed's teacher + bi-gradual unfreezing +
  Lion (binary weights) / Adam (the rest);
- ``no_kd``: the same without distillation;
- ``no_bigradual``: everything trains from the first epoch (n1 = n2 = 0);
- ``single_optimizer``: one Adam optimizer for all parameters, binary latent weights included;
- ``release``: ``train.py --preset release`` (what the released scripts ran: pooled head input,
  MSE distillation, nothing frozen, binary weights and Lion's lr schedule started late), its epoch
  boundaries scaled to this budget and its input size replaced by ``--size``;
- ``three_views`` (only when asked for, with ``--variants``): the full recipe with ``--views 3``
  (street images added to every step), distilled from a teacher trained with three views
  (``teacher_3views``, added with it). Its runs are evaluated in every direction, street ones
  included, and so are all the others of that call (``--mode all``).

The table gives mean ± standard deviation over the seeds (sample standard deviation, n - 1) of
R@1 and AP in both directions; a second table gives each variant's difference from the full recipe
and marks it where it exceeds the spread, i.e. |Δmean| > the larger of the two standard deviations.
``--json FILE`` writes the settings, every seed's metrics, the summaries and the time of every run.

The defaults are sized to run in the background on the shared 2-core machine (the README's 18 runs
took 160 minutes of run time and 47 minutes of wall time as three processes, one per seed, sharing
it with other jobs; a teacher run is about 11 minutes of that, a student run about 9):
40 train / 100 test / 10 distractor places with 8 drone images each, the demo's short-run
settings (64×64, lr 1e-3, Adam teacher from scratch) with a shorter budget (students 6 epochs × 2
draws per class instead of 8 × 4; teachers as in the demo, 24 × 12 in batches of 16), evaluation
without flip TTA (``--flip`` doubles its time), and one torch thread per process (``--threads``).
``--smoke`` is a tiny configuration (about 3 minutes) that checks the whole path end to end.

    nohup python -m benchmarks.synthetic_recipe --json demo_runs/recipe.json > demo_runs/recipe.log 2>&1 &
    python -m benchmarks.synthetic_recipe --smoke

Finished runs are kept under ``--out`` and reused, so an interrupted call goes on from its first
unfinished run (which starts over) and a finished one only re-prints the tables; ``--out``
remembers its settings and refuses other ones. Seeds are independent: on an idle machine two
processes with the same ``--out`` and different ``--seeds`` (e.g. ``--seeds 1 2``, and ``--seeds 3``
once the first has generated the data) run side by side, and a last call with all seeds prints the
tables. ``--data_dir`` evaluates on an existing University-1652-layout dataset instead of
generating one.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from datasets.synthetic import generate_university
from evaluation.records import RESULTS_FILE, latest_record, load_results

REPO = Path(__file__).resolve().parents[1]
DIRECTIONS = (("Drone->Satellite", "D→S"), ("Satellite->Drone", "S→D"))
STREET_DIRECTIONS = (("Street->Satellite", "St→S"), ("Satellite->Street", "S→St"), ("Drone->Street", "D→St"),
                     ("Street->Drone", "St→D"))
METRICS = (("recall@1", "R@1"), ("ap", "AP"))
DEFAULT_VARIANTS = ("teacher", "full", "no_kd", "no_bigradual", "single_optimizer", "release")
REFERENCE = "full"
SMOKE = dict(train_places=8, test_places=5, distractor_places=2, drones=3, image_size=64, size=32, epochs=3,
             sample_num=1, teacher_epochs=3, teacher_sample_num=2, seeds=[1, 2])
SETTINGS = ("data_dir", "train_places", "test_places", "distractor_places", "drones", "image_size", "data_seed",
            "size", "epochs", "sample_num", "lr", "teacher", "teacher_epochs", "teacher_sample_num",
            "teacher_batchsize", "flip", "threads")
TEACHERS = ("teacher", "teacher_3views")
STUDENT_BATCHSIZE = 8  # train.py's default


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None,
                        help="data and runs go here (default: demo_runs/synthetic_recipe, with --smoke "
                             "demo_runs/synthetic_recipe_smoke)")
    parser.add_argument("--data_dir", default=None,
                        help="existing University-1652-layout dataset root (default: generate one under --out)")
    parser.add_argument("--train_places", type=int, default=40, help="generated training places")
    parser.add_argument("--test_places", type=int, default=100, help="generated test (query) places")
    parser.add_argument("--distractor_places", type=int, default=10, help="generated gallery-only places")
    parser.add_argument("--drones", type=int, default=8, help="drone images per generated place")
    parser.add_argument("--image_size", type=int, default=128, help="side of the generated images")
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the generated data (fixed across runs)")
    parser.add_argument("--size", type=int, default=64, help="training and test input size")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of every run")
    parser.add_argument("--sample_num", type=int, default=2, help="draws of each class per epoch")
    parser.add_argument("--lr", type=float, default=0.001, help="learning rate of every run")
    parser.add_argument("--teacher", default="mccg_convnext_atto", help="teacher model")
    parser.add_argument("--teacher_epochs", type=int, default=24, help="epochs of the teachers")
    parser.add_argument("--teacher_sample_num", type=int, default=12, help="draws of each class per teacher epoch")
    parser.add_argument("--teacher_batchsize", type=int, default=16, help="classes per teacher step")
    parser.add_argument("--flip", action="store_true",
                        help="evaluate with flip test-time augmentation (test.py's default; twice the evaluation time)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="one run of every variant per seed")
    parser.add_argument("--variants", nargs="+", default=None,
                        help=f"these variants (default: {' '.join(DEFAULT_VARIANTS)}; also three_views; a "
                             f"variant's teacher trains whenever it distils)")
    parser.add_argument("--num_workers", type=int, default=0,
                        help="data-loading processes of train.py and test.py (0: in the main process, which "
                             "keeps each run on one core; the trial timings were measured so)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each train.py / test.py process (OMP_NUM_THREADS; 0: torch's "
                             "default). With other jobs on the 2-core machine, teacher training ran at 38 "
                             "pairs/s with one thread and 1.2 pairs/s with two")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write everything as JSON here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny end-to-end check: " + ", ".join(f"{k} {v}" for k, v in SMOKE.items()))
    opts = parser.parse_args(argv)
    if opts.smoke:
        for key, value in SMOKE.items():
            setattr(opts, key, value)
    opts.out = opts.out or ("demo_runs/synthetic_recipe_smoke" if opts.smoke else "demo_runs/synthetic_recipe")
    return opts


def budget(opts, name: str) -> list:
    """train.py's epochs, lr steps, draws and batch size for variant ``name``: the teachers' own or the
    students' budget."""
    epochs, draws, batch = ((opts.teacher_epochs, opts.teacher_sample_num, opts.teacher_batchsize)
                            if name in TEACHERS else (opts.epochs, opts.sample_num, STUDENT_BATCHSIZE))
    return ["--epochs", str(epochs), "--steps", str(max(1, epochs * 3 // 4)), "--sample_num", str(draws),
            "--batchsize", str(batch)]


def variants(opts) -> dict:
    """Variant name → (table label, train.py flags, the variant it distils from or None)."""
    n1, n2 = max(1, opts.epochs // 8), max(2, opts.epochs // 4)
    phases = ["--bigradual_n1", str(n1), "--bigradual_n2", str(n2)]
    all_at_once = ["--bigradual_n1", "0", "--bigradual_n2", "0"]
    # The release preset's epoch boundaries (binary weights from epoch 21, Lion's schedule after
    # epoch 30, of 300) at this budget's scale; its input size gives way to --size.
    release_phases = ["--bigradual_n1", "0", "--bigradual_n2", str(max(1, round(21 * opts.epochs / 300))),
                      "--lion_schedule_start", str(max(1, round(31 * opts.epochs / 300)))]
    table = {
        "teacher": (f"teacher alone ({opts.teacher}, from scratch)",
                    ["--model", opts.teacher, "--optimizer", "adam", *all_at_once], None),
        "teacher_3views": (f"teacher alone, three views ({opts.teacher}, from scratch)",
                           ["--model", opts.teacher, "--optimizer", "adam", *all_at_once, "--views", "3"], None),
        "full": ("BiCrossNet-T, full recipe", ["--optimizer", "adamlion", *phases], "teacher"),
        "no_kd": ("no distillation", ["--optimizer", "adamlion", *phases], None),
        "no_bigradual": ("no bi-gradual unfreezing", ["--optimizer", "adamlion", *all_at_once], "teacher"),
        "single_optimizer": ("single optimizer (Adam for all, binary weights included)",
                             ["--optimizer", "adam", *phases], "teacher"),
        "release": ("release preset (pooled head input, MSE distillation, nothing frozen, binary weights and "
                    "Lion's schedule started late; epochs scaled to the budget)",
                    ["--preset", "release", *release_phases], "teacher"),
        "three_views": ("full recipe, three views (street images added; three-view teacher)",
                        ["--optimizer", "adamlion", *phases, "--views", "3"], "teacher_3views"),
    }
    unknown = set(opts.variants or ()) - set(table)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {list(table)}")
    wanted = set(opts.variants or DEFAULT_VARIANTS)
    wanted |= {table[name][2] for name in wanted if table[name][2]}  # the teachers they distil from
    return {name: table[name] for name in table if name in wanted}


def columns(chosen: dict) -> list:
    """``(direction, short, metric, label)`` of every table column: the street directions too when
    a three-view variant runs (every run of the call is then evaluated in them)."""
    three_views = any("--views" in flags for _, flags, _ in chosen.values())
    directions = DIRECTIONS + (STREET_DIRECTIONS if three_views else ())
    return [(direction, short, metric, label) for direction, short in directions for metric, label in METRICS]


def run(cmd, threads: int) -> float:
    """Run one repository script quietly; returns its wall time in seconds."""
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, TQDM_DISABLE="1")  # no progress bars in a background log
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    code = subprocess.run([sys.executable, *cmd], cwd=REPO, stdout=subprocess.DEVNULL, env=env).returncode
    if code:
        raise SystemExit(f"{cmd[0]} stopped with exit status {code} (its message is above)")
    return time.perf_counter() - start


def train_and_test(name, flags, opts, data: Path, ckpt: Path, seed: int, table_columns: list) -> dict:
    """Metrics and timings of one variant and seed; trains it unless done already, and evaluates it
    unless its results hold every direction of ``table_columns``."""
    run_dir, timing_file = ckpt / name, ckpt / name / "recipe_timing.json"
    common = ["--num_workers", str(opts.num_workers), "--device", "cpu"]
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    if "train_s" not in timing:
        timing = {"train_s": run(["train.py", "--name", name, "--checkpoint_dir", str(ckpt), "--data_dir",
                                  str(data / "train"), "--h", str(opts.size), "--w", str(opts.size),
                                  *budget(opts, name), "--lr", str(opts.lr), "--seed", str(seed), "--overwrite",
                                  "--progress", "off", *common, *flags], opts.threads)}
        timing_file.write_text(json.dumps(timing) + "\n")
    metrics = read_metrics(run_dir, opts, table_columns)
    if metrics is None:
        mode = "both" if len(table_columns) == 2 * len(DIRECTIONS) else "all"
        timing["test_s"] = run(["test.py", "--name", name, "--checkpoint_dir", str(ckpt), "--test_dir",
                                str(data / "test"), "--mode", mode, *common, *([] if opts.flip else ["--no_flip"])],
                               opts.threads)
        timing_file.write_text(json.dumps(timing) + "\n")
        metrics = read_metrics(run_dir, opts, table_columns)
        if metrics is None:
            raise SystemExit(f"{run_dir / RESULTS_FILE} lacks a direction of the table at {opts.size}x{opts.size}")
    return {"metrics": metrics, "timing": timing}


def read_metrics(run_dir: Path, opts, table_columns: list):
    """``{short direction: {metric: value}}`` from the run's results, or None if a direction is missing."""
    results = load_results(run_dir / RESULTS_FILE)
    metrics = {}
    for direction, short, metric, _ in table_columns:
        record = latest_record(results, "university", direction, h=opts.size, w=opts.size, flip=opts.flip)
        if record is None:
            return None
        metrics.setdefault(short, {})[metric] = record[metric]
    return metrics


def prepare(opts, out: Path) -> Path:
    """The dataset root (generated on first use) after checking that ``out`` holds these settings."""
    settings = {key: getattr(opts, key) for key in SETTINGS}
    record = out / "recipe_settings.json"
    if record.is_file() and json.loads(record.read_text()) != settings:
        raise SystemExit(f"{out} holds runs made with other settings ({record}); choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings, indent=2) + "\n")
    if opts.data_dir:
        return Path(opts.data_dir).resolve()
    data = out / "data"
    if not (data / "synthetic.json").is_file():
        print(f"== generating the data in {data}", flush=True)
        start = time.perf_counter()
        generate_university(data, train_places=opts.train_places, test_places=opts.test_places,
                            distractor_places=opts.distractor_places, drones_per_place=opts.drones,
                            image_size=opts.image_size, seed=opts.data_seed)
        print(f"   took {time.perf_counter() - start:.0f} s", flush=True)
    return data


def summarize(per_seed: list, table_columns: list) -> dict:
    """Mean and sample standard deviation (n - 1) over seeds of every metric (std None for one seed)."""
    summary = {}
    for _, short, metric, _ in table_columns:
        values = [seed["metrics"][short][metric] for seed in per_seed]
        std = statistics.stdev(values) if len(values) > 1 else None
        summary[f"{short} {metric}"] = {"mean": statistics.mean(values), "std": std}
    return summary


def differences(summaries: dict) -> dict:
    """Each variant minus the full recipe, per metric, and whether |Δ| exceeds the larger std
    (None with a single seed, which has no spread to judge by)."""
    if REFERENCE not in summaries:
        return {}
    reference, table = summaries[REFERENCE], {}
    for name, summary in summaries.items():
        if name == REFERENCE:
            continue
        table[name] = {}
        for key, value in summary.items():
            delta = round(value["mean"] - reference[key]["mean"], 9) + 0.0  # no -0.00
            stds = (value["std"], reference[key]["std"])
            spread = None if None in stds else max(stds)
            table[name][key] = {"delta": delta, "spread": spread,
                                "exceeds": None if spread is None else abs(delta) > spread}
    return table


def mean_std(value: dict) -> str:
    return f"{value['mean']:.2f}" + ("" if value["std"] is None else f" ± {value['std']:.2f}")


def markdown(opts, labels: dict, summaries: dict, deltas: dict, data_note: str, table_columns: list) -> str:
    header = "| run | " + " | ".join(f"{short} {label}" for _, short, _, label in table_columns) + " |"
    rule = "|---|" + "---:|" * len(table_columns)
    spread = (f"mean ± standard deviation over the {len(opts.seeds)} seeds" if len(opts.seeds) > 1
              else "one seed: no standard deviation, so no difference is judged")
    lines = [f"Synthetic University-1652 layout ({data_note}), {opts.size}×{opts.size}, lr {opts.lr}; students "
             f"{opts.epochs} epochs × {opts.sample_num} draws per class in batches of {STUDENT_BATCHSIZE}, teachers "
             f"{opts.teacher_epochs} epochs × {opts.teacher_sample_num} draws in batches of {opts.teacher_batchsize}; "
             f"seeds {' '.join(map(str, opts.seeds))}; {spread}",
             "", header, rule]
    for name, summary in summaries.items():
        cells = [mean_std(summary[f"{short} {metric}"]) for _, short, metric, _ in table_columns]
        lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
    if not deltas:
        return "\n".join(lines)
    lines += ["", "Difference from the full recipe (variant − full); **bold**: |Δmean| exceeds the larger of the "
              "two standard deviations, otherwise it is within the seed-to-seed spread.", "", header, rule]
    beyond = []
    for name, row in deltas.items():
        cells = [f"{row[f'{short} {metric}']['delta']:+.2f}" for _, short, metric, _ in table_columns]
        exceeds = [row[f"{short} {metric}"]["exceeds"] for _, short, metric, _ in table_columns]
        lines.append(f"| {labels[name]} | " + " | ".join(f"**{c}**" if e else c for c, e in zip(cells, exceeds)) + " |")
        judged = [f"{short} {label} {cell}" for (_, short, _, label), cell, e in zip(table_columns, cells, exceeds)
                  if e]
        if judged:
            beyond.append(f"{labels[name]}: " + ", ".join(judged))
    if len(opts.seeds) > 1:
        lines += ["", "Beyond the spread: " + ("; ".join(beyond) if beyond else "none") + "."]
    return "\n".join(lines)


def data_note(data: Path) -> str:
    """Place and query counts of the test split, read from its folders."""
    test = data / "test"
    count = {part: sum(1 for p in (test / part).iterdir() if p.is_dir()) for part in
             ("query_satellite", "gallery_satellite")}
    drones = sum(1 for p in (test / "query_drone").rglob("*") if p.is_file())
    return (f"{count['query_satellite']} test places, {count['gallery_satellite'] - count['query_satellite']} "
            f"distractors; {drones} D→S and {count['query_satellite']} S→D queries: one S→D query is "
            f"{100 / count['query_satellite']:.2f} points, one D→S query {100 / max(drones, 1):.3f}")


def main(argv=None):
    opts = parse_args(argv)
    out = Path(opts.out).resolve()
    data = prepare(opts, out)
    chosen = variants(opts)
    table_columns = columns(chosen)
    per_seed = {name: [] for name in chosen}
    start = time.perf_counter()
    for seed in opts.seeds:
        ckpt = out / f"seed{seed}"
        for name, (_, flags, teacher) in chosen.items():
            flags = flags + (["--teacher_path", str(ckpt / teacher)] if teacher else [])
            per_seed[name].append(dict(seed=seed, **train_and_test(name, flags, opts, data, ckpt, seed,
                                                                    table_columns)))
    summaries = {name: summarize(runs, table_columns) for name, runs in per_seed.items()}
    deltas = differences(summaries)
    labels = {name: label for name, (label, _, _) in chosen.items()}
    note = data_note(data)
    print("\n" + markdown(opts, labels, summaries, deltas, note, table_columns))
    timings = [run["timing"] for runs in per_seed.values() for run in runs]
    total = sum(t["train_s"] + t["test_s"] for t in timings)
    print(f"\n{len(timings)} runs; training and evaluating them took {total / 60:.1f} min (when they ran), "
          f"this call {(time.perf_counter() - start) / 60:.1f} min")
    if opts.json:
        report = {"settings": {key: getattr(opts, key) for key in SETTINGS} | {"seeds": opts.seeds},
                  "test_split": note, "labels": labels, "runs": per_seed, "summary": summaries,
                  "difference_from_full": deltas}
        Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
