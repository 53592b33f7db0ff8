"""The BiCrossNet recipe against its ablations on synthetic University-1652-layout data, over seeds.

Every variant trains through the real ``train.py`` and is evaluated by ``test.py`` in both
directions, once per seed (``--seed`` of train.py: initialization, sampling, augmentation), on one
generated dataset:

- ``teacher``: the ConvNeXt teacher alone (Adam, from scratch, on its own budget: by default 24
  epochs × 12 draws per class in batches of 16, the budget of ``make demo``'s teacher, but with
  the students' AutoAugment and random erasing, which ``make demo``'s teacher goes without:
  ``--no-teacher_augment`` trains it as the demo does);
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
  included, and so are all the others of that call (``--mode all``);
- ``kd_mse`` and ``kd_t<T>`` for each ``--kd_temperatures`` value (only when asked for): the full
  recipe with the released MSE distillation (``--kd_mode mse``), or with KL distillation at
  temperature T instead of train.py's default 4. The full recipe is itself KL at T = 4, so it is
  the KL row of that comparison. ``--variants distillation`` asks for the teacher, ``full``,
  ``no_kd``, ``kd_mse`` and every ``kd_t<T>`` (docs/ablation.md gives that ablation's command).

The table gives mean ± standard deviation over the seeds (sample standard deviation, n - 1) of
R@1 and AP in both directions; a second table gives each variant's difference from the full recipe
and marks it where it exceeds the spread, i.e. |Δmean| > the larger of the two standard deviations.
A last line gives the teacher's R@1 lead over the strongest student (distillation can only show
its effect when the teacher clearly leads). ``--json FILE`` writes the settings, the command, every
seed's metrics, the summaries and the time of every run (wall and CPU); ``--write_docs FILE``
writes the tables as a Markdown page headed by the exact command that produced them, for the docs
to link, and ``--from_json FILE --write_docs PAGE`` rebuilds that page from a report alone.

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
remembers its settings and refuses other ones. Seeds are independent: ``--jobs N`` trains N seeds
side by side (each seed's variants one after another, its teacher first), and so do several
processes with the same ``--out`` and different ``--seeds`` once the first has generated the data; a
last call with all seeds prints the tables. ``--data_dir`` evaluates on an existing
University-1652-layout dataset instead of generating one.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.recipe_tables import (DIRECTIONS, TEACHERS, build_report, docs_page, markdown, table_columns,
                                      timing_table)
from datasets.synthetic import generate_university
from evaluation.records import RESULTS_FILE, latest_record, load_results
from utils.errors import UserError, exit_on_user_error
from utils.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = ("teacher", "full", "no_kd", "no_bigradual", "single_optimizer", "release")
SMOKE = dict(train_places=8, test_places=5, distractor_places=2, drones=3, image_size=64, size=32, epochs=3,
             sample_num=1, teacher_epochs=3, teacher_sample_num=2, seeds=[1, 2])
SETTINGS = ("data_dir", "train_places", "test_places", "distractor_places", "drones", "image_size", "data_seed",
            "size", "epochs", "sample_num", "lr", "teacher", "teacher_epochs", "teacher_sample_num",
            "teacher_batchsize", "teacher_augment", "flip", "threads")
# Settings added after runs were first recorded, with the value those earlier runs had.
LATER_SETTINGS = {"teacher_augment": True}
STUDENT_BATCHSIZE = 8  # train.py's default
KD_TEMPERATURE = 4.0  # train.py's default, the full recipe's


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
    _add_teacher_and_distillation_flags(parser)
    parser.add_argument("--flip", action="store_true",
                        help="evaluate with flip test-time augmentation (test.py's default; twice the evaluation time)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="one run of every variant per seed")
    parser.add_argument("--variants", nargs="+", default=None,
                        help=f"these variants (default: {' '.join(DEFAULT_VARIANTS)}; also three_views, kd_mse, "
                             f"kd_t<T> for each --kd_temperatures value, and the group distillation; a variant's "
                             f"teacher trains whenever it distils)")
    parser.add_argument("--num_workers", type=int, default=0,
                        help="data-loading processes of train.py and test.py (0: in the main process, which "
                             "keeps each run on one core; the trial timings were measured so)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds trained side by side, each running its variants one after another (an "
                             "idle 2-core machine: 3 for 3 seeds, about 1.5 seeds' CPU time of wall time)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each train.py / test.py process (OMP_NUM_THREADS; 0: torch's "
                             "default). With other jobs on the 2-core machine, teacher training ran at 38 "
                             "pairs/s with one thread and 1.2 pairs/s with two")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write everything as JSON here")
    parser.add_argument("--write_docs", default=None, metavar="PAGE",
                        help="also write the tables as a Markdown page headed by this command (e.g. "
                             "docs/ablation_results.md)")
    parser.add_argument("--from_json", default=None, metavar="FILE",
                        help="train nothing: take the runs from this --json report (with --write_docs: rebuild "
                             "its page)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny end-to-end check: " + ", ".join(f"{k} {v}" for k, v in SMOKE.items()))
    opts = parser.parse_args(argv)
    if opts.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {opts.jobs}")
    if opts.smoke:
        for key, value in SMOKE.items():
            setattr(opts, key, value)
    opts.out = opts.out or ("demo_runs/synthetic_recipe_smoke" if opts.smoke else "demo_runs/synthetic_recipe")
    return opts


def _add_teacher_and_distillation_flags(parser) -> None:
    parser.add_argument("--teacher", default="mccg_convnext_atto", help="teacher model")
    parser.add_argument("--teacher_epochs", type=int, default=24, help="epochs of the teachers")
    parser.add_argument("--teacher_sample_num", type=int, default=12, help="draws of each class per teacher epoch")
    parser.add_argument("--teacher_batchsize", type=int, default=16, help="classes per teacher step")
    parser.add_argument("--teacher_augment", action=argparse.BooleanOptionalAction, default=True,
                        help="train the teachers with the students' AutoAugment and random erasing "
                             "(--no-teacher_augment: without, as make demo's teacher)")
    parser.add_argument("--kd_temperatures", type=float, nargs="+", default=[1.0, 8.0], metavar="T",
                        help=f"KL temperatures of the kd_t<T> variants (the full recipe's is {KD_TEMPERATURE:g})")


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
    teacher_flags = ["--model", opts.teacher, "--optimizer", "adam", *all_at_once,
                     *([] if opts.teacher_augment else ["--no-autoaugment", "--erasing_p", "0"])]
    table = {
        "teacher": (f"teacher alone ({opts.teacher}, from scratch)", teacher_flags, None),
        "teacher_3views": (f"teacher alone, three views ({opts.teacher}, from scratch)",
                           [*teacher_flags, "--views", "3"], None),
        "full": (f"BiCrossNet-T, full recipe (KL distillation, T = {KD_TEMPERATURE:g})",
                 ["--optimizer", "adamlion", *phases], "teacher"),
        "no_kd": ("no distillation", ["--optimizer", "adamlion", *phases], None),
        "no_bigradual": ("no bi-gradual unfreezing", ["--optimizer", "adamlion", *all_at_once], "teacher"),
        "single_optimizer": ("single optimizer (Adam for all, binary weights included)",
                             ["--optimizer", "adam", *phases], "teacher"),
        "release": ("release preset (pooled head input, MSE distillation, nothing frozen, binary weights and "
                    "Lion's schedule started late; epochs scaled to the budget)",
                    ["--preset", "release", *release_phases], "teacher"),
        "three_views": ("full recipe, three views (street images added; three-view teacher)",
                        ["--optimizer", "adamlion", *phases, "--views", "3"], "teacher_3views"),
        **distillation_variants(opts, ["--optimizer", "adamlion", *phases]),
    }
    return select(table, opts.variants)


def distillation_variants(opts, full_flags: list) -> dict:
    """The full recipe with MSE distillation, and with KL at each of ``--kd_temperatures``."""
    table = {"kd_mse": ("full recipe, MSE distillation (the released logits + features MSE)",
                        [*full_flags, "--kd_mode", "mse"], "teacher")}
    for temperature in opts.kd_temperatures:
        if temperature <= 0 or temperature == KD_TEMPERATURE:
            raise UserError(f"--kd_temperatures takes temperatures > 0 other than the full recipe's "
                            f"{KD_TEMPERATURE:g}, got {temperature:g}")
        table[f"kd_t{temperature:g}"] = (f"full recipe, KL distillation at T = {temperature:g}",
                                         [*full_flags, "--kd_temperature", f"{temperature:g}"], "teacher")
    return table


def select(table: dict, asked) -> dict:
    """The asked variants (``distillation`` names a group) and the teachers they distil from, in table order."""
    groups = {"distillation": ["full", "no_kd", *(name for name in table if name.startswith("kd_"))]}
    wanted = set()
    for name in asked or DEFAULT_VARIANTS:
        if name not in table and name not in groups:
            raise UserError(f"--variants: unknown variant {name!r}; choose from {', '.join([*table, *groups])}")
        wanted |= set(groups.get(name, [name]))
    wanted |= {table[name][2] for name in wanted if table[name][2]}  # the teachers they distil from
    return {name: table[name] for name in table if name in wanted}


def run(cmd, threads: int) -> tuple:
    """Run one repository script quietly; returns its wall time and CPU time in seconds (CPU time
    barely depends on what else a shared machine runs, so it predicts an idle machine's wall time)."""
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, TQDM_DISABLE="1")  # no progress bars in a background log
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, *cmd], cwd=REPO, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(process.pid, 0)  # this child's own CPU time, even with --jobs
    process.returncode = code = os.waitstatus_to_exitcode(status)
    if code:
        raise UserError(f"{cmd[0]} stopped with exit status {code} (its message is above)")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def train_and_test(name, flags, opts, data: Path, ckpt: Path, seed: int, columns: list) -> dict:
    """Metrics and timings of one variant and seed; trains it unless done already, and evaluates it
    unless its results hold every direction of ``columns``."""
    run_dir, timing_file = ckpt / name, ckpt / name / "recipe_timing.json"
    common = ["--num_workers", str(opts.num_workers), "--device", "cpu"]
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    if "train_s" not in timing:
        timing = dict(zip(("train_s", "train_cpu_s"), run(
            ["train.py", "--name", name, "--checkpoint_dir", str(ckpt), "--data_dir", str(data / "train"),
             "--h", str(opts.size), "--w", str(opts.size), *budget(opts, name), "--lr", str(opts.lr), "--seed",
             str(seed), "--overwrite", "--progress", "off", *common, *flags], opts.threads)))
        atomic_write_text(timing_file, json.dumps(timing) + "\n")
    metrics = read_metrics(run_dir, opts, columns)
    if metrics is None:
        mode = "both" if len(columns) == 2 * len(DIRECTIONS) else "all"
        timing["test_s"], timing["test_cpu_s"] = run(
            ["test.py", "--name", name, "--checkpoint_dir", str(ckpt), "--test_dir", str(data / "test"), "--mode",
             mode, *common, *([] if opts.flip else ["--no_flip"])], opts.threads)
        atomic_write_text(timing_file, json.dumps(timing) + "\n")
        metrics = read_metrics(run_dir, opts, columns)
        if metrics is None:
            raise UserError(f"{run_dir / RESULTS_FILE} lacks a direction of the table at {opts.size}x{opts.size}")
    return {"metrics": metrics, "timing": timing}


def read_metrics(run_dir: Path, opts, columns: list):
    """``{short direction: {metric: value}}`` from the run's results, or None if a direction is missing."""
    results = load_results(run_dir / RESULTS_FILE)
    metrics = {}
    for direction, short, metric, _ in columns:
        record = latest_record(results, "university", direction, h=opts.size, w=opts.size, flip=opts.flip)
        if record is None:
            return None
        metrics.setdefault(short, {})[metric] = record[metric]
    return metrics


def prepare(opts, out: Path) -> Path:
    """The dataset root (generated on first use) after checking that ``out`` holds these settings."""
    settings = {key: getattr(opts, key) for key in SETTINGS}
    record = out / "recipe_settings.json"
    if record.is_file() and {**LATER_SETTINGS, **json.loads(record.read_text())} != settings:
        raise UserError(f"{out} holds runs made with other settings ({record}); choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(settings, indent=2) + "\n")
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


def data_note(data: Path) -> str:
    """Place and query counts of the test split, read from its folders."""
    test = data / "test"
    count = {part: sum(1 for p in (test / part).iterdir() if p.is_dir()) for part in
             ("query_satellite", "gallery_satellite")}
    drones = sum(1 for p in (test / "query_drone").rglob("*") if p.is_file())
    return (f"{count['query_satellite']} test places, {count['gallery_satellite'] - count['query_satellite']} "
            f"distractors; {drones} D→S and {count['query_satellite']} S→D queries: one S→D query is "
            f"{100 / count['query_satellite']:.2f} points, one D→S query {100 / max(drones, 1):.3f}")


def run_ablation(opts, command: str) -> dict:
    """Train and evaluate every chosen variant and seed (finished runs are reused); the report."""
    out = Path(opts.out).resolve()
    data = prepare(opts, out)
    chosen = variants(opts)
    columns = table_columns(three_views=any("--views" in flags for _, flags, _ in chosen.values()))
    start = time.perf_counter()

    def one_seed(seed: int) -> dict:
        ckpt, runs = out / f"seed{seed}", {}
        for name, (_, flags, teacher) in chosen.items():
            flags = flags + (["--teacher_path", str(ckpt / teacher)] if teacher else [])
            runs[name] = dict(seed=seed, **train_and_test(name, flags, opts, data, ckpt, seed, columns))
        return runs

    with ThreadPoolExecutor(max_workers=opts.jobs) as pool:  # threads only wait for their runs' processes
        by_seed = list(pool.map(one_seed, opts.seeds))
    per_seed = {name: [runs[name] for runs in by_seed] for name in chosen}
    timings = [run["timing"] for runs in per_seed.values() for run in runs]
    total = sum(t["train_s"] + t["test_s"] for t in timings)
    print(f"\n{len(timings)} runs; training and evaluating them took {total / 60:.1f} min (when they ran), "
          f"this call {(time.perf_counter() - start) / 60:.1f} min")
    settings = {key: getattr(opts, key) for key in SETTINGS} | {
        "seeds": opts.seeds, "variants": list(chosen), "kd_temperatures": opts.kd_temperatures,
        "student_batchsize": STUDENT_BATCHSIZE}
    labels = {name: label for name, (label, _, _) in chosen.items()}
    return build_report(settings, command, data_note(data), labels, per_seed)


def load_report(path: str) -> dict:
    """A ``--json`` report read back, its summaries recomputed from its runs (older reports lack the
    command and the later settings: they get a placeholder and the values their runs had)."""
    try:
        stored = json.loads(Path(path).read_text(encoding="utf-8"))
        defaults = {**LATER_SETTINGS, "student_batchsize": STUDENT_BATCHSIZE}
        settings = stored["settings"] | {key: value for key, value in defaults.items() if key not in stored["settings"]}
        return build_report(settings, stored.get("command", "(command not recorded in this report)"),
                            stored["test_split"], stored["labels"], stored["runs"])
    except OSError as err:
        raise UserError(f"--from_json {path}: cannot read it ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"--from_json {path}: not JSON ({err})") from None
    except (KeyError, TypeError, AttributeError, StopIteration, IndexError) as err:
        raise UserError(f"--from_json {path}: not a synthetic_recipe --json report (missing or malformed "
                        f"{err})") from None


def command_line(argv: list) -> str:
    return shlex.join(["python", "-m", "benchmarks.synthetic_recipe", *argv])


@exit_on_user_error
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    opts = parse_args(argv)
    if opts.from_json and opts.json:
        raise UserError("--from_json reads a report and --json writes one: give one of them")
    report = load_report(opts.from_json) if opts.from_json else run_ablation(opts, command_line(argv))
    print("\n" + markdown(report) + "\n\n" + timing_table(report))
    if opts.json:
        atomic_write_text(opts.json, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if opts.write_docs:
        atomic_write_text(opts.write_docs, docs_page(report, command_line(argv) if opts.from_json else None))
        print(f"\nwrote {opts.write_docs}")


if __name__ == "__main__":
    main()
