"""The synthetic ablation's published tables: the page ``--write_docs`` writes parses back to the
numbers of the runs it was given (mean ± sample std per cell, differences from the full recipe,
bold exactly where |Δ| exceeds the larger std), and the distillation variants reach train.py as
the flags they name. No training: the runs are a fabricated ``--json`` report."""
import json
import re
import statistics

import pytest

import train
from benchmarks import synthetic_recipe
from benchmarks.recipe_tables import TEACHER_LEAD_TARGET

SHORTS = ("D→S", "S→D")
METRICS = ("recall@1", "ap")
# Per variant: the mean of every metric before the per-seed and per-metric offsets below.
BASES = {"teacher": 30.0, "full": 14.0, "no_kd": 10.5, "kd_mse": 14.4, "kd_t1": 17.0}
TILTS = {"teacher": 0.0, "full": 0.0, "no_kd": 0.8, "kd_mse": -0.3, "kd_t1": -0.6}  # per-column shifts
SEED_OFFSETS = {1: -1.0, 2: 0.25, 3: 1.5}  # mean 0.25, sample std 1.25 (times each variant's scale)
SCALES = {"teacher": 1.2, "full": 1.0, "no_kd": 0.4, "kd_mse": 0.8, "kd_t1": 0.6}


def fabricated_report(seeds=(1, 2, 3)) -> dict:
    """A report in synthetic_recipe's --json format whose metrics follow BASES, SEED_OFFSETS, SCALES."""
    def metrics(name, seed):
        return {short: {metric: BASES[name] + 3 * i + 2 * j + TILTS[name] * (2 * i + j) ** 2
                        + SCALES[name] * (1 + i) * SEED_OFFSETS[seed] for j, metric in enumerate(METRICS)}
                for i, short in enumerate(SHORTS)}
    settings = dict(data_dir=None, train_places=40, test_places=100, distractor_places=10, drones=8, image_size=128,
                    data_seed=0, size=64, epochs=6, sample_num=2, lr=0.001, teacher="mccg_convnext_atto",
                    teacher_epochs=36, teacher_sample_num=16, teacher_batchsize=16, teacher_augment=False,
                    flip=False, threads=1, seeds=list(seeds), variants=list(BASES), kd_temperatures=[1.0],
                    student_batchsize=8)
    runs = {name: [{"seed": seed, "metrics": metrics(name, seed),
                    "timing": {"train_s": 60.0 * seed, "train_cpu_s": 50.0, "test_s": 30.0, "test_cpu_s": 24.0}}
                   for seed in seeds] for name in BASES}
    return {"settings": settings, "command": "python -m benchmarks.synthetic_recipe --variants distillation",
            "test_split": "100 test places", "labels": {name: f"label {name}" for name in BASES}, "runs": runs}


def values(report, name, short, metric):
    return [run["metrics"][short][metric] for run in report["runs"][name]]


def parse_tables(page: str) -> list:
    """Every Markdown table of ``page`` as ``{row label: [cell, ...]}``, in page order."""
    tables, current = [], None
    for line in page.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if current is None:
            current = {}
            tables.append(current)
        elif not set(cells[0]) <= {"-"}:
            current[cells[0]] = cells[1:]
    return tables


def write_page(tmp_path, report) -> str:
    source, page = tmp_path / "report.json", tmp_path / "docs" / "ablation_results.md"
    source.write_text(json.dumps(report))
    synthetic_recipe.main(["--from_json", str(source), "--write_docs", str(page)])
    return page.read_text()


def test_the_written_page_parses_back_to_the_runs_numbers(tmp_path):
    report = fabricated_report()
    page = write_page(tmp_path, report)
    assert "```bash\npython -m benchmarks.synthetic_recipe --variants distillation\n```" in page
    results, deltas, _, timing = parse_tables(page)
    columns = [(short, metric) for short in SHORTS for metric in METRICS]
    marked, unmarked = [], []
    for name in BASES:
        for (short, metric), cell in zip(columns, results[f"label {name}"]):
            mean, std = (float(x) for x in re.fullmatch(r"(-?[\d.]+) ± ([\d.]+)", cell).groups())
            sample = values(report, name, short, metric)
            assert mean == pytest.approx(statistics.mean(sample), abs=0.005)
            assert std == pytest.approx(statistics.stdev(sample), abs=0.005)
        if name == "full":
            assert "label full" not in deltas
            continue
        for (short, metric), cell in zip(columns, deltas[f"label {name}"]):
            sample, reference = values(report, name, short, metric), values(report, "full", short, metric)
            delta = statistics.mean(sample) - statistics.mean(reference)
            beyond = abs(delta) > max(statistics.stdev(sample), statistics.stdev(reference))
            assert cell == (f"**{delta:+.2f}**" if beyond else f"{delta:+.2f}")
            (marked if beyond else unmarked).append((name, short, metric))
    assert marked and unmarked  # the fabricated runs exercise both marks
    assert f"label no_kd: D→S R@1 {deltas['label no_kd'][0].strip('*')}" in page  # the summary line names bold cells
    assert timing["label teacher"] == ["3", "2.0", "0.8", "0.5", "0.4"]  # mean minutes over the seeds


def test_distillations_paired_effect_is_the_mean_and_std_of_per_seed_differences(tmp_path):
    report = fabricated_report()
    report["runs"]["no_kd"].reverse()  # pairs are matched by seed, not by position
    effect = parse_tables(write_page(tmp_path, report))[2]
    assert set(effect) == {"label full", "label kd_mse", "label kd_t1"}  # the teacher does not distil
    columns = [(short, metric) for short in SHORTS for metric in METRICS]
    marks = set()
    for name in ("full", "kd_mse", "kd_t1"):
        for (short, metric), cell in zip(columns, effect[f"label {name}"]):
            baseline = {run["seed"]: run["metrics"][short][metric] for run in report["runs"]["no_kd"]}
            diffs = [run["metrics"][short][metric] - baseline[run["seed"]] for run in report["runs"][name]]
            mean, std = statistics.mean(diffs), statistics.stdev(diffs)
            text = f"{mean:+.2f} ± {std:.2f}"
            assert cell == (f"**{text}**" if abs(mean) > std else text)
            marks.add(abs(mean) > std)
    assert marks == {True, False}


def test_the_teacher_lead_line_follows_its_formula(tmp_path):
    report = fabricated_report()
    page = write_page(tmp_path, report)
    for short in SHORTS:
        students = [name for name in BASES if name != "teacher"]
        best = max(students, key=lambda name: statistics.mean(values(report, name, short, "recall@1")))
        teacher = values(report, "teacher", short, "recall@1")
        lead = statistics.mean(teacher) - statistics.mean(values(report, best, short, "recall@1"))
        margin = lead - max(statistics.stdev(teacher), statistics.stdev(values(report, best, short, "recall@1")))
        assert f"{short} {lead:+.2f} over label {best} ({margin:+.2f} beyond the larger std)" in page
    assert f"target: {TEACHER_LEAD_TARGET:g} points" in page


def test_one_seed_has_no_spread_and_judges_nothing(tmp_path):
    page = write_page(tmp_path, fabricated_report(seeds=(2,)))
    results, deltas, _ = parse_tables(page)  # no paired table with one seed
    assert "one seed: no standard deviation" in page
    assert all("±" not in cell for row in results.values() for cell in row)
    assert all("**" not in cell for row in deltas.values() for cell in row)
    assert "Beyond the spread" not in page


@pytest.mark.parametrize("content, expected", [("{not json", "not JSON"),
                                               ('{"settings": {}}', "not a synthetic_recipe")])
def test_a_broken_report_is_refused_in_one_line(tmp_path, capsys, content, expected):
    source, page = tmp_path / "report.json", tmp_path / "page.md"
    source.write_text(content)
    page.write_text("earlier page\n")
    with pytest.raises(SystemExit) as stop:
        synthetic_recipe.main(["--from_json", str(source), "--write_docs", str(page)])
    assert stop.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"error: --from_json {source}: {expected}") and "\n" not in message
    assert page.read_text() == "earlier page\n"  # nothing already written is lost


def test_distillation_variants_reach_train_py_as_their_flags(tmp_path):
    opts = synthetic_recipe.parse_args(["--variants", "distillation", "--kd_temperatures", "2", "8",
                                        "--no-teacher_augment"])
    chosen = synthetic_recipe.variants(opts)
    assert list(chosen) == ["teacher", "full", "no_kd", "kd_mse", "kd_t2", "kd_t8"]
    expected = {"teacher": ("kl", 4.0, False, 0.0), "full": ("kl", 4.0, True, 0.5), "no_kd": ("kl", 4.0, True, 0.5),
                "kd_mse": ("mse", 4.0, True, 0.5), "kd_t2": ("kl", 2.0, True, 0.5), "kd_t8": ("kl", 8.0, True, 0.5)}
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    for name, (_, flags, teacher) in chosen.items():
        distils = ["--teacher_path", str(teacher_dir)] if teacher else []
        args = train.parse_args(["--name", name, "--checkpoint_dir", str(tmp_path),
                                 *synthetic_recipe.budget(opts, name), *flags, *distils])
        assert (args.kd_mode, args.kd_temperature, args.DA, args.erasing_p) == expected[name], name
        assert (teacher is None) == (name in ("teacher", "no_kd"))
        assert args.batchsize == (16 if name == "teacher" else 8)


@pytest.mark.parametrize("argv, message", [(["--kd_temperatures", "4"], "other than the full recipe's 4"),
                                           (["--kd_temperatures", "0"], "temperatures > 0"),
                                           (["--variants", "kd_t3"], "unknown variant 'kd_t3'")])
def test_bad_variant_choices_are_refused(argv, message):
    with pytest.raises(synthetic_recipe.UserError, match=re.escape(message)):
        synthetic_recipe.variants(synthetic_recipe.parse_args(argv))


def test_runs_recorded_before_teacher_augment_existed_count_as_augmented(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    opts = synthetic_recipe.parse_args(["--data_dir", str(tmp_path)])
    old = {key: getattr(opts, key) for key in synthetic_recipe.SETTINGS if key != "teacher_augment"}
    (out / "recipe_settings.json").write_text(json.dumps(old))
    assert synthetic_recipe.prepare(opts, out) == tmp_path.resolve()
    (out / "recipe_settings.json").write_text(json.dumps(old))
    with pytest.raises(synthetic_recipe.UserError, match="holds runs made with other settings"):
        synthetic_recipe.prepare(synthetic_recipe.parse_args(["--data_dir", str(tmp_path), "--no-teacher_augment"]),
                                 out)


def test_a_run_reports_its_own_cpu_time_and_a_failure_in_one_line():
    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    wall, cpu = synthetic_recipe.run(["-c", busy], threads=1)
    assert 0.3 <= cpu <= wall + 0.05
    with pytest.raises(synthetic_recipe.UserError, match="-c stopped with exit status 3"):
        synthetic_recipe.run(["-c", "raise SystemExit(3)"], threads=1)


def test_seeds_run_side_by_side_land_in_their_variants_rows(tmp_path, monkeypatch):
    """With --jobs 3 each seed's runs still go to its own row entries, teacher first, in seed order."""
    calls = []

    def fake_train_and_test(name, flags, opts, data, ckpt, seed, columns):
        calls.append((seed, name, flags[-1] if "--teacher_path" in flags else None))
        metrics = {short: {"recall@1": 10.0 * seed, "ap": float(len(calls))} for short in SHORTS}
        return {"metrics": metrics, "timing": {"train_s": 1.0, "test_s": 1.0}}

    monkeypatch.setattr(synthetic_recipe, "prepare", lambda opts, out: tmp_path)
    monkeypatch.setattr(synthetic_recipe, "data_note", lambda data: "fake split")
    monkeypatch.setattr(synthetic_recipe, "train_and_test", fake_train_and_test)
    opts = synthetic_recipe.parse_args(["--variants", "full", "no_kd", "--jobs", "3", "--seeds", "3", "1", "2",
                                        "--out", str(tmp_path)])
    report = synthetic_recipe.run_ablation(opts, "cmd")
    for name in ("teacher", "full", "no_kd"):
        assert [run["seed"] for run in report["runs"][name]] == [3, 1, 2]
        assert [run["metrics"]["D→S"]["recall@1"] for run in report["runs"][name]] == [30.0, 10.0, 20.0]
    for seed in (1, 2, 3):
        mine = [call for call in calls if call[0] == seed]
        assert mine == [(seed, "teacher", None), (seed, "full", str(tmp_path.resolve() / f"seed{seed}" / "teacher")),
                        (seed, "no_kd", None)]
