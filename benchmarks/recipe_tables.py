"""The tables of ``benchmarks.synthetic_recipe``: summaries over seeds, differences judged against the
seed-to-seed spread, and the Markdown they are printed and published as.

Everything here works on the script's ``--json`` report (settings, the command that made it, every
run's metrics and timings), so the published page can be rebuilt from that file alone and always
says which command produced its numbers.
"""
import statistics

DIRECTIONS = (("Drone->Satellite", "D→S"), ("Satellite->Drone", "S→D"))
STREET_DIRECTIONS = (("Street->Satellite", "St→S"), ("Satellite->Street", "S→St"), ("Drone->Street", "D→St"),
                     ("Street->Drone", "St→D"))
METRICS = (("recall@1", "R@1"), ("ap", "AP"))
REFERENCE = "full"
# Distillation's effect is measured against the same seed's student trained without it.
BASELINE = "no_kd"
TEACHERS = ("teacher", "teacher_3views")
# How far the teacher should lead the strongest student before distillation can be judged (R@1 points
# beyond the larger of the two standard deviations).
TEACHER_LEAD_TARGET = 5.0


def table_columns(three_views: bool) -> list:
    """``(direction, short, metric, label)`` of every column: the street directions too with three views."""
    directions = DIRECTIONS + (STREET_DIRECTIONS if three_views else ())
    return [(direction, short, metric, label) for direction, short in directions for metric, label in METRICS]


def report_columns(report: dict) -> list:
    """The columns of a report: the directions its runs were evaluated in."""
    first = next(iter(report["runs"].values()))[0]
    return table_columns(three_views=STREET_DIRECTIONS[0][1] in first["metrics"])


def summarize(per_seed: list, columns: list) -> dict:
    """Mean and sample standard deviation (n - 1) over seeds of every metric (std None for one seed)."""
    summary = {}
    for _, short, metric, _ in columns:
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


def distils(name: str) -> bool:
    """The variants that differ from ``BASELINE`` in the distillation term alone."""
    return name == REFERENCE or name.startswith("kd_")


def distillation_effect(runs: dict, columns: list) -> dict:
    """Per distilling variant and metric: mean and sample std over seeds of its value minus the
    same seed's ``BASELINE`` run (same initialization, sampling and augmentation, so the seed-to-seed
    spread that both share cancels), and whether |mean| exceeds that std; {} without a baseline or
    with fewer than two paired seeds."""
    baseline = {run["seed"]: run["metrics"] for run in runs.get(BASELINE, [])}
    effect = {}
    for name, per_seed in runs.items():
        pairs = [(run["metrics"], baseline[run["seed"]]) for run in per_seed if run["seed"] in baseline]
        if not distils(name) or len(pairs) < 2:
            continue
        effect[name] = {}
        for _, short, metric, _ in columns:
            diffs = [mine[short][metric] - base[short][metric] for mine, base in pairs]
            mean, std = round(statistics.mean(diffs), 9) + 0.0, statistics.stdev(diffs)
            effect[name][f"{short} {metric}"] = {"mean": mean, "std": std, "exceeds": abs(mean) > std}
    return effect


def teacher_lead(summaries: dict, columns: list) -> dict:
    """Per R@1 column: the two-view teacher's mean minus the strongest student's, and that lead less
    the larger of their standard deviations (None with one seed); {} without a teacher or a student."""
    students = [name for name in summaries if name not in TEACHERS]
    if "teacher" not in summaries or not students:
        return {}
    teacher, lead = summaries["teacher"], {}
    for _, short, metric, _ in columns:
        if metric != "recall@1" or short not in dict(DIRECTIONS).values():
            continue
        key = f"{short} {metric}"
        best = max(students, key=lambda name: summaries[name][key]["mean"])
        delta = teacher[key]["mean"] - summaries[best][key]["mean"]
        stds = (teacher[key]["std"], summaries[best][key]["std"])
        lead[short] = {"lead": delta, "best_student": best,
                       "beyond_spread": None if None in stds else delta - max(stds)}
    return lead


def build_report(settings: dict, command: str, test_split: str, labels: dict, runs: dict) -> dict:
    """The ``--json`` report: its inputs plus the summaries and differences computed from ``runs``."""
    report = {"settings": settings, "command": command, "test_split": test_split, "labels": labels, "runs": runs}
    columns = report_columns(report)
    report["summary"] = {name: summarize(per_seed, columns) for name, per_seed in runs.items()}
    report["difference_from_full"] = differences(report["summary"])
    report["teacher_lead"] = teacher_lead(report["summary"], columns)
    report["distillation_effect"] = distillation_effect(runs, columns)
    return report


def mean_std(value: dict) -> str:
    return f"{value['mean']:.2f}" + ("" if value["std"] is None else f" ± {value['std']:.2f}")


def _header(settings: dict, test_split: str) -> str:
    s = settings
    seeds = s["seeds"]
    spread = (f"mean ± standard deviation over the {len(seeds)} seeds" if len(seeds) > 1
              else "one seed: no standard deviation, so no difference is judged")
    augment = "with" if s.get("teacher_augment", True) else "without"
    return (f"Synthetic University-1652 layout ({test_split}), {s['size']}×{s['size']}, lr {s['lr']}; students "
            f"{s['epochs']} epochs × {s['sample_num']} draws per class in batches of {s['student_batchsize']}, "
            f"teachers {s['teacher_epochs']} epochs × {s['teacher_sample_num']} draws in batches of "
            f"{s['teacher_batchsize']}, {augment} the students' augmentations; seeds "
            f"{' '.join(map(str, seeds))}; {spread}")


def markdown(report: dict) -> str:
    """The results table, the difference table with **bold** beyond the spread, and the teacher's lead."""
    columns, labels, summaries = report_columns(report), report["labels"], report["summary"]
    deltas = report["difference_from_full"]
    header = "| run | " + " | ".join(f"{short} {label}" for _, short, _, label in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = [_header(report["settings"], report["test_split"]), "", header, rule]
    for name, summary in summaries.items():
        cells = [mean_std(summary[f"{short} {metric}"]) for _, short, metric, _ in columns]
        lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
    if deltas:
        lines += ["", "Difference from the full recipe (variant − full); **bold**: |Δmean| exceeds the larger of "
                  "the two standard deviations, otherwise it is within the seed-to-seed spread.", "", header, rule]
    beyond = []
    for name, row in deltas.items():
        cells = [f"{row[f'{short} {metric}']['delta']:+.2f}" for _, short, metric, _ in columns]
        exceeds = [row[f"{short} {metric}"]["exceeds"] for _, short, metric, _ in columns]
        lines.append(f"| {labels[name]} | " + " | ".join(f"**{c}**" if e else c for c, e in zip(cells, exceeds)) + " |")
        judged = [f"{short} {label} {cell}" for (_, short, _, label), cell, e in zip(columns, cells, exceeds) if e]
        if judged:
            beyond.append(f"{labels[name]}: " + ", ".join(judged))
    if deltas and len(report["settings"]["seeds"]) > 1:
        lines += ["", "Beyond the spread: " + ("; ".join(beyond) if beyond else "none") + "."]
    effect = report.get("distillation_effect") or {}
    if effect:
        lines += ["", f"Distillation's effect, paired by seed: each distilling run minus the {labels[BASELINE]} run "
                  "of the same seed (same initialization, sampling and augmentation: only the distillation term "
                  "differs), mean ± standard deviation of the per-seed differences; **bold**: |mean| exceeds that "
                  "standard deviation.", "", header, rule]
        for name, row in effect.items():
            cells = [(f"{row[f'{short} {metric}']['mean']:+.2f} ± {row[f'{short} {metric}']['std']:.2f}",
                      row[f"{short} {metric}"]["exceeds"]) for _, short, metric, _ in columns]
            lines.append(f"| {labels[name]} | " + " | ".join(f"**{c}**" if e else c for c, e in cells) + " |")
    lead = report.get("teacher_lead") or {}
    if lead:
        parts = [f"{short} {row['lead']:+.2f} over {labels[row['best_student']]}"
                 + ("" if row["beyond_spread"] is None else f" ({row['beyond_spread']:+.2f} beyond the larger std)")
                 for short, row in lead.items()]
        lines += ["", f"Teacher's R@1 lead over the strongest student (target: {TEACHER_LEAD_TARGET:g} points "
                  f"beyond the larger std): " + "; ".join(parts) + "."]
    return "\n".join(lines)


def timing_table(report: dict) -> str:
    """Per variant: mean wall and CPU minutes of training and evaluation over its seeds' runs."""
    lines = ["| run | runs | train, wall min | train, CPU min | evaluate, wall min | evaluate, CPU min |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, per_seed in report["runs"].items():
        cells = []
        for key in ("train_s", "train_cpu_s", "test_s", "test_cpu_s"):
            values = [run["timing"][key] for run in per_seed if key in run["timing"]]
            cells.append(f"{statistics.mean(values) / 60:.1f}" if values else "—")
        lines.append(f"| {report['labels'][name]} | {len(per_seed)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def docs_page(report: dict, rebuilt_by: str = None) -> str:
    """The generated Markdown page: the command, the settings, the tables and the run times."""
    settings = "\n".join(f"- `{key}`: {value}" for key, value in report["settings"].items())
    rebuilt = f"\nThis page was rebuilt from the command's `--json` with `{rebuilt_by}`.\n" if rebuilt_by else ""
    return (f"<!-- Generated by benchmarks/synthetic_recipe.py (--write_docs): rerun the command below, "
            f"do not edit by hand. -->\n"
            f"# The recipe against its ablations: generated tables\n\n"
            f"Produced by (from the repository root; finished runs under `--out` are reused, so a second call "
            f"only rewrites this page):\n\n```bash\n{report['command']}\n```\n{rebuilt}\n"
            f"Settings:\n\n{settings}\n\n{markdown(report)}\n\n"
            f"Run times (mean per run, as measured when the runs ran; wall time depends on what else the "
            f"machine was doing, CPU time much less):\n\n{timing_table(report)}\n")
