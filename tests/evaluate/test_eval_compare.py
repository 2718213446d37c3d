"""`pneumo compare`: the leaderboard carries each run's numbers, ranks on val, and fails in one line."""

from __future__ import annotations

import json
from pathlib import Path

import evaluated_runs
import pytest

from pneumo.cli import main
from pneumo.errors import DataError
from pneumo.evaluate.compare import load_run_metrics, write_leaderboard
from pneumo.templates import fmt_threshold


def make_run(root: Path, name: str, *, seed: int, arch: str = "efficientnet_lite0", mode: str = "probe",
             separation: float = 1.5) -> tuple[Path, dict]:
    config = {"model": {"name": arch, "mode": mode}, "data": {"task": "binary"}, "train": {"seed": seed}}
    return evaluated_runs.make_run(root, name, seed=seed, separation=separation, config=config)


def test_leaderboard_lists_every_run_with_its_numbers(tmp_path: Path) -> None:
    a, ra = make_run(tmp_path, "lite0-probe", seed=1)
    b, rb = make_run(tmp_path, "resnet-finetune", seed=2, arch="resnet18", mode="finetune")
    md, html = write_leaderboard([a, b], tmp_path / "out")
    text, page = md.read_text(encoding="utf-8"), html.read_text(encoding="utf-8")
    for result in (ra, rb):
        m, ci = result["test"]["metrics"], result["test"]["ci"]
        cell = f"{m['sensitivity']:.3f} [{ci['sensitivity'][0]:.3f}, {ci['sensitivity'][1]:.3f}]"
        assert cell in text and cell in page
        assert result["name"] in text and f"{fmt_threshold(result['threshold'])} (sensitivity:0.95)" in text
    assert "resnet18" in text and "finetune" in text and "12m34s" in text
    assert len([line for line in text.splitlines() if line.startswith("|")]) == 4  # header, rule, 2 runs


def test_runs_are_ranked_by_validation_auc(tmp_path: Path) -> None:
    weak, _ = make_run(tmp_path, "weak", seed=3, separation=0.3)
    strong, _ = make_run(tmp_path, "strong", seed=4, separation=3.0)
    md, _ = write_leaderboard([weak, strong], tmp_path)
    text = md.read_text(encoding="utf-8")
    assert text.index("| strong |") < text.index("| weak |")


def test_a_run_without_metrics_json_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"metrics\.json not found") as info:
        load_run_metrics(tmp_path / "empty")
    assert "\n" not in str(info.value)


def test_a_corrupt_metrics_json_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{not json")
    with pytest.raises(DataError):
        load_run_metrics(tmp_path / "bad")


def test_cli_compare_writes_the_leaderboard_into_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = make_run(tmp_path, "one", seed=5)
    assert main(["compare", str(a), "--out", str(tmp_path / "board")]) == 0
    assert (tmp_path / "board" / "leaderboard.md").is_file() and (tmp_path / "board" / "leaderboard.html").is_file()
    assert "| one |" in capsys.readouterr().out


def test_cli_compare_of_a_missing_run_exits_2_with_one_error_line(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pneumo compare: error:") and "metrics.json" in err and len(err.splitlines()) == 1


def test_compare_skips_runs_without_metrics_and_names_rows_by_folder_with_report_links(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    runs = tmp_path / "runs"
    a, _ = make_run(runs / "seed0", "default", seed=1)  # two runs of one preset: same config name
    b, _ = make_run(runs / "seed1", "default", seed=2)
    (a / "report.html").write_text("<html></html>")
    (runs / "unfinished").mkdir()  # trained, never evaluated
    (runs / "notes.txt").write_text("not a run")
    with caplog.at_level("WARNING"):
        assert main(["compare", str(a), str(runs / "unfinished"), str(b), str(runs / "notes.txt"),
                     "--out", str(tmp_path / "board")]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and "unfinished/metrics.json" in warnings[1] and "notes.txt is a file" in warnings[0]
    caplog.clear()  # `runs/*` again: the leaderboard written beside the runs is not taken for a run (a docs audit)
    with caplog.at_level("WARNING"):
        assert main(["compare", str(a)]) == 0  # written beside the run, where `runs/*` finds it next time
        assert main(["compare", *map(str, sorted(a.parent.iterdir()))]) == 0
    assert (a.parent / "leaderboard.md").is_file() and not any("leaderboard" in r.getMessage() for r in caplog.records)
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    assert f"[{a}](../runs/seed0/default/report.html)" in md  # the run folder, linked to its report
    assert f"| {b} |" in md and md.count("| default |") == 2  # rows told apart by folder
    page = (tmp_path / "board" / "leaderboard.html").read_text()
    assert '<a href="../runs/seed0/default/report.html">' in page
    assert "youden: acc / sens / spec" in md and "triage: acc / sens / spec" in md


def test_leaderboard_shows_each_runs_shortcut_verdict(tmp_path: Path) -> None:
    flagged, _ = make_run(tmp_path, "probe", seed=1)
    clean, _ = make_run(tmp_path, "partial", seed=2)
    unknown, _ = make_run(tmp_path, "no-report", seed=3)
    for run_dir, verdict in ((flagged, {"flagged": True, "peak_on_markers_vs_chance": 3.1, "outside_lungs_vs_area": 0.94}),
                             (clean, {"flagged": False, "peak_on_markers_vs_chance": 0.8, "outside_lungs_vs_area": 0.87})):
        (run_dir / "figures").mkdir()
        (run_dir / "figures" / "shortcut_stats.json").write_text(json.dumps({"verdict": verdict}))
    md, _ = write_leaderboard([flagged, clean, unknown], tmp_path / "out")
    rows = {line.split("|")[1].strip(): line for line in md.read_text(encoding="utf-8").splitlines()[2:]}
    assert "FLAGGED (peaks on markers 3.100x chance" in next(v for k, v in rows.items() if "probe" in k)
    assert "clean (peaks on markers 0.800x chance, outside lungs 0.870x)" in next(v for k, v in rows.items()
                                                                                  if "partial" in k)
    assert "| n/a |" in next(v for k, v in rows.items() if "no-report" in k)
    # flagged for a reason of its own: that reason, not two figures below their flags (a 3-class audit); the
    # outside-lungs figure only where it was judged
    reason = "the hottest point lies on detected corner text in 7% of the maps, 2.4x chance (flag at 2x)"
    for run_dir, verdict in ((flagged, {"flagged": True, "reasons": [reason], "peak_on_markers_vs_chance": 1.48,
                                        "outside_lungs_vs_area": 0.94}),
                             (clean, {"flagged": False, "reasons": [], "peak_on_markers_vs_chance": 0.8,
                                      "outside_lungs_vs_area": 0.87, "outside_lungs_judged": False})):
        (run_dir / "figures" / "shortcut_stats.json").write_text(json.dumps({"verdict": verdict}))
    md, _ = write_leaderboard([flagged, clean, unknown], tmp_path / "out2")
    rows = {line.split("|")[1].strip(): line for line in md.read_text(encoding="utf-8").splitlines()[2:]}
    assert f"FLAGGED ({reason})" in next(v for k, v in rows.items() if "probe" in k)
    assert "clean (peaks on markers 0.800x chance) |" in next(v for k, v in rows.items() if "partial" in k)


def test_evaluations_of_different_data_are_never_ranked_in_one_table(tmp_path: Path) -> None:
    config = {"model": {"name": "efficientnet_lite0", "mode": "probe"}, "data": {"task": "binary",
                                                                             "root": "../shared/data/chest_xray"}}
    weak, _ = evaluated_runs.make_run(tmp_path, "official-weak", seed=1, separation=0.5, config=config)
    strong, _ = evaluated_runs.make_run(tmp_path, "official-strong", seed=2, separation=2.0, config=config)
    hospital, _ = evaluated_runs.make_run(tmp_path, "on-hospital", seed=3, separation=4.0, config=config)
    metrics = json.loads((hospital / "metrics.json").read_text())  # a 60-image external evaluation, best val AUC
    metrics["external"] = {"data": "/site/hospital_xrays", "n": 150, "official_test_split": False}
    (hospital / "metrics.json").write_text(json.dumps(metrics))
    md, html = write_leaderboard([hospital, weak, strong], tmp_path / "out")
    text = md.read_text(encoding="utf-8")
    tables = text.split("### Evaluated on ")[1:]
    assert [t.splitlines()[0] for t in tables] == ["official test split of chest_xray (150 images)",
                                                   "external data /site/hospital_xrays (150 images)"]
    official, external = tables
    assert official.index("official-strong") < official.index("official-weak") and "on-hospital" not in official
    assert "on-hospital" in external and "official-" not in external
    assert "| evaluated on |" in text
    page = html.read_text(encoding="utf-8")
    assert page.count("<table") == 2 and "Evaluated on external data /site/hospital_xrays" in page


def test_a_row_whose_intervals_an_older_method_made_says_so() -> None:
    """Both rows were labelled "BCa bootstrap": one evaluation's intervals were percentile ones (upgrade review)."""
    from pneumo.evaluate.compare import leaderboard_row
    from pneumo.evaluate.intervals import CI_METHOD

    assert leaderboard_row({"bootstrap": {"method": CI_METHOD}})["CIs"] == "current"
    assert leaderboard_row({"bootstrap": {"method": "percentile"}})["CIs"] == "older method: evaluate again"
    assert leaderboard_row({})["CIs"] == "older method: evaluate again"


def test_a_three_class_run_shows_its_three_class_figures_beside_the_pneumonia_vs_normal_ones(tmp_path: Path) -> None:
    """A 3-class run's row showed only the pneumonia-vs-normal accuracy under "test accuracy" (3-class review)."""
    from pneumo.evaluate.compare import leaderboard_row, load_run_metrics

    three, _ = make_run(tmp_path, "p3", seed=1)
    binary, _ = make_run(tmp_path, "p2", seed=2)
    metrics = json.loads((three / "metrics.json").read_text())
    metrics["task"] = "3class"
    metrics["test"]["multiclass"] = {"accuracy": 0.73, "macro_f1": 0.7,
                                     "ci": {"accuracy": [0.7, 0.76], "macro_f1": [0.66, 0.74]}}
    (three / "metrics.json").write_text(json.dumps(metrics))
    assert leaderboard_row(load_run_metrics(three))["3-class accuracy / macro-F1"] == \
        "0.730 [0.700, 0.760] / 0.700 [0.660, 0.740]"
    assert leaderboard_row(load_run_metrics(binary))["3-class accuracy / macro-F1"] == "n/a"
    page = write_leaderboard([three, binary], tmp_path / "out")[1].read_text(encoding="utf-8")
    assert "pneumonia vs normal for 3-class runs" in page


def test_a_run_on_a_limited_test_split_is_not_called_the_official_test_split() -> None:
    """`--set data.limit_per_class=200` scores 548 of the 624 test images: the report, card and leaderboard said
    "official test split" (3-class review)."""
    from pneumo.evaluate.compare import evaluated_on
    from pneumo.evaluate.report import data_label

    limited = {"config": {"data": {"root": "/d/chest_xray", "limit_per_class": 200}}, "test": {"n": 548}}
    whole = {"config": {"data": {"root": "/d/chest_xray", "limit_per_class": None}}, "test": {"n": 624}}
    assert data_label(limited) == "A subset of the official test split (data.limit_per_class = 200)"
    assert data_label(whole) == "Official test split"
    assert evaluated_on(limited) == "a subset of the official test split of chest_xray (548 images)"
    assert evaluated_on(whole) == "official test split of chest_xray (624 images)"


def test_a_run_retrained_since_its_evaluation_is_left_out_of_the_leaderboard(tiny_model: Path, tmp_path: Path) -> None:
    """metrics.json records the weights it measured: a run retrained (or its weights replaced) after its evaluation
    was ranked by the old model's numbers (a review); left out with its reason, the evaluated one kept."""
    import shutil

    from pneumo.models.sidecar import read_meta

    sha = read_meta(tiny_model).sha256
    runs = []
    for name, measured in (("current", sha), ("retrained", "0" * 64)):
        run, _ = make_run(tmp_path, name, seed=7)
        shutil.copyfile(tiny_model, run / "model.json")
        shutil.copyfile(tiny_model.with_suffix(".safetensors"), run / "model.safetensors")
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["model_identity"] = {"weights_sha256": [measured]}
        (run / "metrics.json").write_text(json.dumps(metrics))
        runs.append(run)
    assert load_run_metrics(runs[0])["name"] == "current"
    with pytest.raises(DataError, match="measured other weights than model.json holds"):
        load_run_metrics(runs[1])
    md, _ = write_leaderboard(runs, tmp_path / "board")
    text = md.read_text(encoding="utf-8")
    assert "| current |" in text and "| retrained |" not in text


def test_a_real_runs_evaluation_is_checked_against_its_weights(data_slice: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """A run's own metrics.json (written by `evaluate_run`) records its weights at the top level: the check read only
    `pneumo evaluate --data`'s key and so never fired on a run (a review). A library call draws no progress bars on
    stderr (a library review; the command line asks for them)."""
    from sidecars import shipped_as_run

    from pneumo.evaluate.runner import evaluate_run

    run = shipped_as_run(tmp_path / "run", data_slice)
    capsys.readouterr()
    evaluate_run(run, analysis=False, n_bootstrap=20)
    assert "predict val" not in capsys.readouterr().err
    assert load_run_metrics(run)["weights_sha256"]
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "weights_sha256": "0" * 64}))  # as before a retraining
    with pytest.raises(DataError, match="measured other weights than model.json holds"):
        load_run_metrics(run)


def test_evaluations_of_one_folder_named_two_ways_share_a_table() -> None:
    """An older pneumo recorded the folder as typed (``/x/h/../data/test``): one folder, several tables (an upgrade
    review)."""
    from pneumo.evaluate.compare import evaluated_on

    def on(path: str) -> str:
        return evaluated_on({"external": {"data": path}, "test": {"n": 24}})

    assert on("/work/u/h/../data/test") == on("/work/u/data/test") == "external data /work/u/data/test (24 images)"


def test_runs_whose_val_folds_differ_are_ranked_with_a_warning(tmp_path: Path) -> None:
    """The leaderboard ranks on val ROC-AUC: runs of another split seed or val fraction shared a table with the others
    without a word, their val AUCs measured on other images (a training audit)."""
    same = [make_run(tmp_path, f"s{seed}", seed=seed)[0] for seed in (1, 2)]  # one split: only train.seed differs
    md, html = write_leaderboard(same, tmp_path / "same")
    assert "val folds differ" not in md.read_text(encoding="utf-8")
    other, _ = make_run(tmp_path, "other-split", seed=3)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["config"] = {**metrics["config"], "data": {**metrics["config"].get("data", {}), "split_seed": 7}}
    (other / "metrics.json").write_text(json.dumps(metrics))
    md, html = write_leaderboard([*same, other], tmp_path / "mixed")
    said = "These runs' val folds differ (split seed, val fraction, data subset or size)"
    assert said in md.read_text(encoding="utf-8") and said.replace("'", "&#39;") in html.read_text(encoding="utf-8")
