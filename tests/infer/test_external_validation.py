"""External validation (`pneumo evaluate --data FOLDER|CSV`), operating points side by side, and the rule that
evaluating never changes a model (a new operating point is a new model folder)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.cli import main
from pneumo.config import load_config
from pneumo.errors import ConfigError, DataError, IntegrityError
from pneumo.evaluate.external import evaluate_external
from pneumo.evaluate.labelled import labelled_images
from pneumo.evaluate.runner import evaluate_ensemble, evaluate_run
from pneumo.explain.analysis import error_gallery
from pneumo.train.run import train

POLICIES = ("youden", "sensitivity:0.95", "triage")


def _run(data: Path, root: Path, name: str, *overrides: str) -> Path:
    base = [f"data.root={data}", f"out_dir={root / 'runs'}", f"data.cache_dir={root / 'cache'}",
            "data.image_size=64", "data.val_fraction=0.3", "eval.n_bootstrap=50", "train.batch_size=8",
            "train.amp=false", "eval.threshold_policy=youden", f"name={name}"]
    return train(load_config("lite0-probe", base + list(overrides)))


@pytest.fixture(scope="module")
def run_dir(data_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = _run(data_slice, tmp_path_factory.mktemp("ext"), "probe")
    evaluate_run(run, analysis=False)  # the first evaluation records the operating point
    return run


def _folder(root: Path, full_data: Path, picks: dict[str, list[str]]) -> Path:
    """A Kaggle-layout folder of symlinks to real test images (nested one level, as hospitals' exports are)."""
    for label, names in picks.items():
        (root / "site" / label).mkdir(parents=True)
        for name in names:
            (root / "site" / label / name).symlink_to(full_data / "test" / label / name)
    return root


@pytest.fixture(scope="module")
def two_folders(full_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    names = {label: sorted(p.name for p in (full_data / "test" / label).glob("*.jpeg")) for label in
             ("NORMAL", "PNEUMONIA")}
    a = _folder(tmp_path_factory.mktemp("site_a"), full_data, {k: v[:12] for k, v in names.items()})
    b = _folder(tmp_path_factory.mktemp("site_b"), full_data, {"NORMAL": names["NORMAL"][-20:],
                                                               "PNEUMONIA": names["PNEUMONIA"][-8:]})
    return a, b


def test_labelled_folder_and_csv_list_the_same_images(two_folders: tuple[Path, Path], tmp_path: Path) -> None:
    folder = labelled_images(two_folders[0])
    assert len(folder) == 24 and folder["label"].value_counts().to_dict() == {"NORMAL": 12, "PNEUMONIA": 12}
    assert set(folder.loc[folder["label"] == "PNEUMONIA", "subtype"]) <= {"bacteria", "virus"}
    csv = tmp_path / "labels.csv"
    rows = [(str(Path(p).relative_to(two_folders[0])), "1" if lab == "PNEUMONIA" else "normal")
            for p, lab in zip(folder["path"], folder["label"], strict=True)]
    (tmp_path / "site").symlink_to(two_folders[0] / "site")
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(csv, index=False)
    from_csv = labelled_images(csv)
    assert [Path(p).name for p in from_csv["path"]] == [Path(p).name for p in folder["path"]]
    assert from_csv["label"].tolist() == folder["label"].tolist()


@pytest.mark.parametrize(("content", "message"), [("path,label\nx.jpeg,maybe\n", "unknown label"),
                                                  ("file,class\nx.jpeg,1\n", "'path' and 'label'"),
                                                  ("path,label\nmissing.jpeg,1\n", "not found")])
def test_bad_csvs_are_one_line_data_errors(tmp_path: Path, content: str, message: str) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text(content)
    with pytest.raises(DataError, match=message):
        labelled_images(csv)


def test_external_numbers_come_from_the_folder_at_the_stored_operating_point(
        run_dir: Path, two_folders: tuple[Path, Path], tmp_path: Path) -> None:
    sidecar = run_dir / "model.json"
    before = sidecar.read_bytes()
    stored = json.loads(before)
    a = evaluate_external(run_dir, two_folders[0], tmp_path / "a", n_bootstrap=50, analysis=False)
    b = evaluate_external(run_dir, two_folders[1], tmp_path / "b", n_bootstrap=50, analysis=error_gallery)
    official = json.loads((run_dir / "metrics.json").read_text())
    # the headline counts the assessed images; out-of-distribution ones are counted beside it (none of them verdicts)
    assert a["external"]["n"] == 24 and b["external"]["n"] == 28 and official["test"]["n"] != 24
    assert a["test"]["n"] == 24 - a["not_assessed"]["n"] and b["test"]["n"] == 28 - b["not_assessed"]["n"]
    all_b = b.get("test_all", b["test"])
    assert a["test"]["confusion_matrix"] != b["test"]["confusion_matrix"]  # the numbers follow the folder
    assert sum(map(sum, all_b["confusion_matrix"])) == 28 and all_b["confusion_matrix"][0][0] + \
        all_b["confusion_matrix"][0][1] == 20
    assert a["threshold"] == stored["threshold"] and a["temperature"] == stored["temperature"]  # nothing refitted
    preds = pd.read_csv(tmp_path / "a" / "predictions.csv")
    judged = preds[preds["assessed"] == 1]
    assert len(preds) == 24 and len(judged) == a["test"]["n"] and preds["predicted_pneumonia"].isna().sum() == \
        a["not_assessed"]["n"]
    assert (judged["predicted_pneumonia"] == (judged["p_pneumonia"] >= a["threshold"])).all()
    # the images without a verdict by label (a reporting audit: on NIH films 23.5 % of normals, 10.4 % of pneumonias)
    withheld = preds[preds["assessed"] == 0]["label"].value_counts().to_dict()
    assert a["not_assessed"]["by_label"] == withheld and sum(withheld.values()) == a["not_assessed"]["n"]
    page_a = " ".join((tmp_path / "a" / "report.html").read_text().split())
    assert all(f"({withheld.get(label, 0)})</td>" in page_a for label in ("NORMAL", "PNEUMONIA"))
    assert "labels are taken as given" in page_a  # its reference standard is not known to pneumo (a reporting audit)
    tp = int(((preds["label"] == "PNEUMONIA") & (preds["predicted_pneumonia"] == 1)).sum())
    assert tp == a["test"]["metrics"]["tp"]
    assert set(a["operating_points"]) >= set(POLICIES) and a["operating_points"]["youden"]["threshold"] == \
        pytest.approx(stored["threshold"])
    page = (tmp_path / "b" / "report.html").read_text()
    assert f"External data, n = {b['test']['n']}" in page and "Operating points" in page and "Errors per class" in page
    table_b = pd.read_csv(tmp_path / "b" / "predictions.csv")  # the verdict's threshold beside it (a hospital walk:
    assert table_b["threshold"].eq(stored["threshold"]).all()  # the largest calibrated column is not the verdict)
    judged_b = table_b.query("assessed == 1 and label == 'PNEUMONIA'")
    kinds = set(judged_b["subtype"]) & {"bacteria", "virus"}  # the file names say which: a row of misses for each
    assert kinds and all(f"<td>PNEUMONIA ({kind})</td>" in page for kind in kinds)
    assert (tmp_path / "b" / "figures" / "roc.png").is_file()
    assert stored.get("ood")  # the run's out-of-distribution statistics measure the external images too
    assert b["ood"]["n"] == 28 and 0 <= b["ood"]["n_flagged"] <= 28 and "Not assessed:" in page
    assert sidecar.read_bytes() == before


def test_cli_external_validation_of_a_run_and_a_csv_agree(run_dir: Path, two_folders: tuple[Path, Path],
                                                          tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = labelled_images(two_folders[1])
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"path": folder["path"], "label": folder["label"]}).to_csv(csv, index=False)
    assert main(["evaluate", "--model", str(run_dir), "--data", str(two_folders[1]), "--out", str(tmp_path / "f"),
                 "--bootstrap", "20", "--no-analysis"]) == 0
    assert main(["evaluate", "--model", str(run_dir), "--data", str(csv), "--out", str(tmp_path / "c"),
                 "--bootstrap", "20", "--no-analysis"]) == 0
    out = capsys.readouterr().out
    assert "external data accuracy" in out and "triage" in out
    f, c = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("f", "c"))
    assert f["test"]["metrics"] == c["test"]["metrics"]


def test_subgroup_rows_are_the_headline_measured_on_each_value_of_a_csv_column(
        run_dir: Path, two_folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sklearn.metrics import roc_auc_score

    folder = labelled_images(two_folders[1])
    csv = tmp_path / "labels.csv"
    # a 'view' column confounded with the label, as in nih_sample (normals mostly AP), and one blank cell
    view = np.where(np.arange(len(folder)) % 3 == 0, "PA", "AP")
    view[1] = ""
    pd.DataFrame({"path": folder["path"], "label": folder["label"], "view": view,
                  "scanner": "one"}).to_csv(csv, index=False)
    assert main(["evaluate", "--model", str(run_dir), "--data", str(csv), "--out", str(tmp_path / "c"),
                 "--bootstrap", "20", "--no-analysis", "--by", "view", "--by", "scanner"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "c" / "metrics.json").read_text())
    preds = pd.read_csv(tmp_path / "c" / "predictions.csv").merge(
        pd.read_csv(csv, keep_default_na=False)[["path", "view"]], on="path", suffixes=("_written", ""))
    assert preds["view_written"].fillna("").tolist() == preds["view"].tolist()  # the --by column, in predictions.csv
    judged = preds[preds["assessed"] == 1].assign(view=lambda t: t["view"].replace("", "(blank)"))
    groups = result["subgroups"]["view"]
    assert set(groups) == set(judged["view"]) and sum(g["n"] for g in groups.values()) == result["test"]["n"]
    for value, rows in judged.groupby("view"):
        y = (rows["label"] == "PNEUMONIA").to_numpy(int)
        assert groups[value]["n"] == len(rows) and groups[value]["n_pos"] == y.sum()
        if 0 < y.sum() < len(y):
            assert groups[value]["metrics"]["roc_auc"] == pytest.approx(roc_auc_score(y, rows["p_pneumonia"]))
        assert groups[value]["metrics"]["tp"] == int((y & (rows["p_pneumonia"] >= result["threshold"])).sum())
    assert result["subgroups"]["scanner"]["one"]["metrics"] == result["test"]["metrics"]  # one value: the headline
    assert "view=AP: n " in printed and "Subgroups" in (tmp_path / "c" / "report.html").read_text()


def test_by_names_a_column_the_data_has_in_one_line(run_dir: Path, two_folders: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    folder = labelled_images(two_folders[0])
    csv = tmp_path / "labels.csv"
    folder.assign(view="AP")[["path", "label", "view"]].to_csv(csv, index=False)
    for data, by, message in ((csv, "sex", "has no such column (its other columns: view)"),
                              (two_folders[0], "view", "subgroups need a CSV with that column"),
                              (csv, "label", "that is each image's label itself, not a subgroup column"),
                              (csv, "subtype", "the subtype has its own rows already")):
        assert main(["evaluate", "--model", str(run_dir), "--data", str(data), "--out", str(tmp_path / "x"),
                     "--by", by]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--by {by}" in err[0] and message in err[0]
        assert not (tmp_path / "x").exists()
    assert main(["evaluate", "--model", str(run_dir), "--by", "view"]) == 2
    assert "give it with --data" in capsys.readouterr().err


def test_evaluate_never_changes_the_model_and_reports_every_policy(run_dir: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    sidecar = run_dir / "model.json"
    before = sidecar.read_bytes()
    assert main(["evaluate", "--model", str(run_dir), "--threshold-policy", "sensitivity:0.95",
                 "--threshold-policy", "sensitivity:0.5", "--bootstrap", "20", "--no-analysis"]) == 0
    assert sidecar.read_bytes() == before  # byte-identical
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stored = json.loads(before)
    assert metrics["threshold"] == stored["threshold"] and metrics["threshold_policy"] == stored["threshold_policy"]
    points = metrics["operating_points"]
    assert set(points) == {*POLICIES, "sensitivity:0.50"}  # (in one spelling)
    for point in points.values():
        assert {"threshold", "accuracy", "sensitivity", "specificity", "val_sensitivity", "ci"} <= set(point)
        assert point["val_sensitivity"] is None or 0 <= point["val_sensitivity"] <= 1
    assert points["triage"]["val_sensitivity"] >= 0.90 and points["sensitivity:0.95"]["val_sensitivity"] >= 0.95
    assert points["sensitivity:0.95"]["threshold"] <= points["triage"]["threshold"]
    assert set(points["youden"]["ci"]) >= {"accuracy", "sensitivity", "specificity"}
    assert metrics["val"]["ece_after"] is not None  # the report's val "after" cell
    page = (run_dir / "report.html").read_text()
    assert "youden (model)" in page and "triage" in page


def test_a_bad_policy_fails_at_once_before_any_predicting(run_dir: Path, capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import pneumo.evaluate.external
    import pneumo.evaluate.runner

    metrics = run_dir / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    called = []
    for module, name in ((pneumo.evaluate.runner, "evaluate_run"), (pneumo.evaluate.runner, "evaluate_ensemble"),
                         (pneumo.evaluate.external, "evaluate_external")):  # every way evaluate reaches the images
        monkeypatch.setattr(module, name, lambda *a, name=name, **k: called.append(name))
    assert main(["evaluate", "--model", str(run_dir), "--threshold-policy", "foo"]) == 2
    assert called == []
    err = capsys.readouterr().err.strip()
    assert "threshold policy" in err and "\n" not in err and metrics.stat().st_mtime_ns == stamp


def test_operating_point_writes_a_new_versioned_model_and_leaves_the_source_alone(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    before = (run_dir / "model.json").read_bytes()
    new = tmp_path / "sens95"
    assert main(["operating-point", "--model", str(run_dir), "--threshold-policy", "sensitivity:0.95", "--out", str(new)]) == 0
    assert (run_dir / "model.json").read_bytes() == before
    meta = json.loads((new / "model.json").read_text())
    op = meta["operating_point"]
    assert meta["threshold_policy"] == "sensitivity:0.95" and op["policy"] == "sensitivity:0.95"
    assert op["version"] == 2 and op["derived_from"]["threshold"] == json.loads(before)["threshold"]
    folds = pd.read_csv(run_dir / "folds.csv")
    assert op["chosen_on"]["n"] == int((folds["fold"] == "val").sum()) and op["chosen_on"]["sensitivity"] >= 0.95
    # the same threshold the side-by-side table reports for that policy, chosen on the same val fold
    points = json.loads((run_dir / "metrics.json").read_text())["operating_points"]
    assert meta["threshold"] == pytest.approx(points["sensitivity:0.95"]["threshold"], abs=1e-4)
    from pneumo.infer.predictor import Predictor

    assert Predictor(new).threshold == meta["threshold"] != Predictor(run_dir).threshold  # predict uses the new one
    # its card (issue 23, finding 10): intended use, limits, and where the threshold came from instead of "metrics {}"
    capsys.readouterr()
    assert main(["model-card", "--model", str(new)]) == 0
    card = capsys.readouterr().out
    assert "## Intended use" in card and "pediatric" in card and "## Limits" in card
    assert "Not measured at this operating point yet" in card and f"{op['chosen_on']['n']} images" in card
    assert f"derived from {run_dir.name}/model.json" in card
    assert main(["model-card", "--model", str(run_dir)]) == 0  # the evaluated run: test metrics with their CIs
    card = capsys.readouterr().out
    # a run's test split is its dataset's (a slice here): named with its size, not called "official"
    run_meta = json.loads((run_dir / "model.json").read_text())
    assert (f"The test split of its dataset ({run_meta['metrics']['test_n']} images, "
            f"{run_meta['config']['data']['root']}), at this operating point (95 % CI)") in card
    assert re.search(r"\| roc-auc \| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \|", card)  # the value and its interval
    assert main(["evaluate", "--model", str(new), "--bootstrap", "0", "--no-analysis"]) == 0
    evaluated = json.loads((new / "metrics.json").read_text())
    assert evaluated["threshold_policy"] == "sensitivity:0.95" and evaluated["threshold"] == meta["threshold"]
    capsys.readouterr()
    assert main(["operating-point", "--model", str(run_dir), "--threshold-policy", "youden", "--out", str(new)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_the_shipped_model_and_an_ensemble_validate_on_a_folder(run_dir: Path, data_slice: Path,
                                                                two_folders: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    shipped = evaluate_external(None, two_folders[0], tmp_path / "shipped", n_bootstrap=20, analysis=False,
                                val_data=str(data_slice))
    assert shipped["external"]["n"] == 24 and shipped["test"]["n"] == 24 - shipped["not_assessed"]["n"]
    assert shipped["model"].endswith("default-model.json")
    assert 0.0 <= shipped["test"]["metrics"]["roc_auc"] <= 1.0
    other = _run(data_slice, tmp_path, "scratch", "model.name=scratch_cnn", "model.mode=scratch",
                 "model.weights=none", "train.epochs=1", "train.lr=0.003")
    evaluate_ensemble([run_dir, other], tmp_path / "ens", n_bootstrap=20)
    stored = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    result = evaluate_external(tmp_path / "ens", two_folders[0], tmp_path / "ens-ext", n_bootstrap=20,
                               analysis=False)
    assert result["threshold"] == stored["threshold"]
    assert result["members"] == [str(run_dir.resolve()), str(other.resolve())]
    single = json.loads((tmp_path / "ens-ext" / "metrics.json").read_text())
    assert single["external"]["n"] == 24 and single["test"]["n"] == 24 - single["not_assessed"]["n"]
    probs = pd.read_csv(tmp_path / "ens-ext" / "predictions.csv")["p_pneumonia"].to_numpy()
    assert np.all((probs >= 0) & (probs <= 1))


def test_an_ensemble_made_with_relative_paths_loads_from_any_folder(run_dir: Path, data_slice: Path,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """ensemble.json names its members relative to itself: evaluating it from another folder finds them (they were
    stored as typed, so `pneumo evaluate --model /abs/ens` from elsewhere failed with "model not found")."""
    import os

    from pneumo.evaluate.scoring import load_models

    twin = tmp_path / "twin"
    shutil.copytree(run_dir, twin)
    monkeypatch.chdir(tmp_path)
    evaluate_ensemble([Path(os.path.relpath(run_dir)), Path("twin")], Path("ens"), n_bootstrap=0)
    monkeypatch.chdir(data_slice)
    assert [p.sidecar.parent for p in load_models(tmp_path / "ens")] == [run_dir.resolve(), twin.resolve()]
    # moved without its runs, next to other models of the same names: a one-line error, not those models
    moved = tmp_path / "elsewhere" / "x" / "ens"
    shutil.copytree(tmp_path / "ens", moved)
    shutil.copytree(twin, tmp_path / "elsewhere" / "twin")
    monkeypatch.chdir(tmp_path / "elsewhere" / "x")  # ../twin from here is another copy; the folder's ../twin absent
    with pytest.raises(ConfigError, match="is not there .members are relative to the ensemble folder"):
        load_models(moved)
    # a member that is not the model the ensemble was made of: refused by the recorded weights SHA-256
    stored = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert len(stored["weights_sha256"]) == 2 and all(stored["weights_sha256"])
    stored["weights_sha256"][1] = "0" * 64
    (tmp_path / "ens" / "ensemble.json").write_text(json.dumps(stored))
    with pytest.raises(IntegrityError, match="member twin is not the model the ensemble was made of"):
        load_models(tmp_path / "ens")
    del stored["weights_sha256"]  # an older pneumo's ensemble.json: its members cannot be checked (upgrade review)
    (tmp_path / "ens" / "ensemble.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="records no weights checksums of its members .written by an older pneumo"):
        load_models(tmp_path / "ens")


def test_an_onnx_only_model_folder_is_validated_and_refuses_a_new_operating_point_in_one_line(
        two_folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """What `pneumo export --out deploy/` writes (export, sidecar, OOD and orientation files, no weights): evaluate
    scores it with ONNX Runtime (it said "use --backend onnx", a flag evaluate does not have)."""
    from pneumo.infer.predictor import Predictor

    assert main(["export", "--out", str(tmp_path / "deploy")]) == 0
    sidecar = next((tmp_path / "deploy").glob("*.json"))
    from pneumo.models.sidecar import DEFAULT_MODEL

    assert sidecar.with_suffix(".md").read_text() == DEFAULT_MODEL.with_suffix(".md").read_text()  # its card too
    assert main(["evaluate", "--model", str(sidecar), "--data", str(two_folders[0]), "--out", str(tmp_path / "val"),
                 "--bootstrap", "0"]) == 0  # with the analysis: the Grad-CAM gallery is left out, said in a line
    result = json.loads((tmp_path / "val" / "metrics.json").read_text())
    shipped = Predictor(None, backend="torch")
    rows = pd.read_csv(tmp_path / "val" / "predictions.csv")
    assert result["external"]["n"] == 24 and result["threshold"] == shipped.threshold
    from pneumo.data.decode import load_image_file

    first = shipped.predict([load_image_file(rows["path"][0], target=shipped.size)])[0]
    assert rows["p_pneumonia"][0] == pytest.approx(first.p_pneumonia, abs=1e-4)  # ONNX against PyTorch
    capsys.readouterr()
    assert main(["operating-point", "--model", str(sidecar), "--threshold-policy", "youden",
                 "--out", str(tmp_path / "op")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has only an ONNX export" in err[0] and "--backend" not in err[0]
    assert not (tmp_path / "op").exists()


def test_without_data_a_model_that_is_not_a_run_is_measured_on_the_official_test_split(data_slice: Path,
                                                                                        tmp_path: Path) -> None:
    from pneumo.evaluate.command import evaluate
    from pneumo.evaluate.runner import summary_line

    result, folder = evaluate(["default"], out=str(tmp_path / "official"), n_bootstrap=0, dataset=str(data_slice))
    assert result["test"]["n"] == len(list((data_slice / "test").rglob("*.jpeg")))
    assert result["external"]["official_test_split"] is True
    assert "Official test split, n =" in (folder / "report.html").read_text()
    assert "official test split (the training hospital&#39;s)" in (folder / "report.html").read_text()
    assert "external validation" not in (folder / "report.html").read_text().split("</title>")[0]
    assert "<h2>External data</h2>" not in (folder / "report.html").read_text()  # (a reports audit)
    assert "The official test split&#39;s images" in (folder / "report.html").read_text()
    people = result["test"]["patients"]  # what the intervals rest on: whole patients (a clinical review)
    assert 0 < people["pneumonia"] < people["n"] < result["test"]["n"]
    assert f"n = {result['test']['n']} images of {people['n']} patients" in (folder / "report.html").read_text()
    assert ": test accuracy" in summary_line(result)
    assert f"; {result['test']['n']} images; val-fold AUC" in summary_line(result)  # (a reports audit)
    smoke = {**result, "external": None, "config": {"data": {"limit_per_class": 8}}}  # a run's subset (a docs audit)
    assert f"; {result['test']['n']} images (a subset: data.limit_per_class = 8); val-fold" in summary_line(smoke)
    assert "does not separate" not in (folder / "report.html").read_text() + summary_line(result)  # it does here


def test_the_val_fold_is_scored_once_per_model_and_backend(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operating-point rows of every evaluation need the model's val-fold logits: kept next to the image cache
    under the weights' SHA-256, the backend and the images, so a second evaluation does not score them again."""
    from pneumo.evaluate.scoring import val_scores
    from pneumo.infer.predictor import Predictor

    first = val_scores([Predictor(run_dir, backend="torch")])
    predictor = Predictor(run_dir, backend="torch")
    kept = list((run_dir.parent.parent / "cache").glob(f"val-logits-{predictor.meta.sha256}-torch-*.npy"))
    assert len(kept) == 1
    calls: list[int] = []
    real = predictor.logits
    monkeypatch.setattr(predictor, "logits", lambda x: calls.append(len(x)) or real(x))
    again = val_scores([predictor])
    assert calls == [] and np.array_equal(first[1], again[1]) and np.array_equal(first[0], again[0])
    kept[0].write_bytes(b"")  # a damaged file is scored again, not trusted
    assert np.array_equal(val_scores([predictor])[1], first[1]) and calls


def test_the_cli_passes_the_error_gallery_in_unless_told_not_to(run_dir: Path, two_folders: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    """Evaluation takes its Grad-CAM section as a hook (explanations sit above it): `pneumo evaluate` passes it in."""
    for flags, name in (([], "with"), (["--no-analysis"], "without")):
        out = tmp_path / name
        assert main(["evaluate", "--model", str(run_dir), "--data", str(two_folders[0]), "--out", str(out),
                     "--bootstrap", "0", *flags]) == 0
        assert ("Most confident errors (Grad-CAM)" in (out / "report.html").read_text()) == (not flags)


def test_a_csv_patient_id_makes_every_interval_draw_whole_patients(run_dir: Path, two_folders: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    """`pneumo adapt` resamples whole patients and `pneumo evaluate` of the same CSV resampled images: the same
    images got two different ROC-AUC intervals. Each interval of evaluate now draws the CSV's patients."""
    from pneumo.evaluate.metrics import bootstrap_cis

    folder = pd.concat([labelled_images(two_folders[0]), labelled_images(two_folders[1])], ignore_index=True)
    csv = tmp_path / "labels.csv"
    patient = [f"P{i // 3}" for i in range(len(folder))]  # three films a patient
    pd.DataFrame({"path": folder["path"], "label": folder["label"], "patient_id": patient,
                  "view": "AP"}).to_csv(csv, index=False)
    assert main(["evaluate", "--model", str(run_dir), "--data", str(csv), "--out", str(tmp_path / "c"),
                 "--bootstrap", "200", "--no-analysis", "--by", "view"]) == 0
    result = json.loads((tmp_path / "c" / "metrics.json").read_text())
    preds = pd.read_csv(tmp_path / "c" / "predictions.csv").merge(pd.read_csv(csv)[["path", "patient_id"]], on="path")
    # predictions.csv names each image's patient and its --by value: the intervals can be checked from it alone
    assert preds["patient"].tolist() == preds["patient_id"].tolist() and set(preds["view"]) == {"AP"}
    judged = preds[preds["assessed"] == 1]
    y, p = (judged["label"] == "PNEUMONIA").to_numpy(int), judged["p_pneumonia"].to_numpy()
    by_patient = bootstrap_cis(y, p, result["threshold"], n_resamples=200, seed=0, groups=judged["patient_id"].to_numpy())
    by_image = bootstrap_cis(y, p, result["threshold"], n_resamples=200, seed=0)
    assert by_patient["f1"] != by_image["f1"]  # (proportions have exact intervals: F1 is bootstrapped)
    for got in (result["test"]["ci"], result["subgroups"]["view"]["AP"]["ci"],
                result["operating_points"][result["threshold_policy"]]["ci"]):
        assert got["f1"] == pytest.approx(by_patient["f1"])
    assert result["bootstrap"]["resamples"] == "whole patients (the CSV's patient_id)"
    for key in ("sensitivity", "specificity"):  # the exact intervals too: at the patients' effective sample size
        assert result["test"]["ci"][key] == pytest.approx(by_patient[key])
        assert by_patient[key][1] - by_patient[key][0] >= by_image[key][1] - by_image[key][0] - 1e-12
    assert "drawn as whole patients" in (tmp_path / "c" / "report.html").read_text()


def test_the_error_table_names_each_file_by_its_path_below_the_data(tmp_path: Path) -> None:
    """A PACS export names every file IM00001: the error table listed four 'IM00001' rows nobody could tell apart."""
    from pneumo.evaluate.external import _errors_section

    paths = [str(tmp_path / f"P{i}" / "ST1" / "IM00001") for i in range(4)]
    table = pd.DataFrame({"path": paths, "label": ["NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA"],
                          "subtype": ["normal", "normal", "bacteria", "virus"]})
    y, p = np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.1, 0.2])  # all four wrong at 0.5
    for data in (tmp_path, tmp_path / "labels.csv"):
        _, html = _errors_section(tmp_path, table, y, p, {"threshold": 0.5}, data)
        assert all(f"<code>P{i}/ST1/IM00001</code>" in html for i in range(4)), html


def test_an_evaluation_where_the_model_ranks_at_or_below_chance_says_so_in_its_headline(
        two_folders: tuple[Path, Path], data_slice: Path, tmp_path: Path) -> None:
    """Labels the model cannot separate (here: swapped) gave a report with operating points to choose from and no
    word that none can help (a clinical review); the official split, where it separates, says nothing of the kind."""
    from pneumo.evaluate.command import evaluate
    from pneumo.evaluate.runner import summary_line

    rows = []
    for label, other in (("NORMAL", "PNEUMONIA"), ("PNEUMONIA", "NORMAL")):
        rows += [{"path": str(p), "label": other} for p in sorted((two_folders[0] / "site" / label).glob("*.jpeg"))]
    swapped = tmp_path / "swapped.csv"
    pd.DataFrame(rows).to_csv(swapped, index=False)
    result, folder = evaluate(["default"], data=str(swapped), out=str(tmp_path / "swapped"), n_bootstrap=200)
    assert "does not separate pneumonia from normal" in " ".join((folder / "report.html").read_text().split())
    assert "does not separate" in summary_line(result)
    assert "patients" not in result["test"] and "patients unknown" in (folder / "report.html").read_text()


def test_the_most_confident_errors_are_ranked_past_the_threshold_on_the_logit_scale(tmp_path: Path) -> None:
    """On probabilities a false positive above a 0.86 threshold is at most 0.14 from it, so every miss outranked it:
    the table listed misses at 0.04-0.7 before normal films called 1.000 (a reports audit)."""
    import pandas as pd

    from pneumo.evaluate.external import _errors_section

    table = pd.DataFrame({"path": [str(tmp_path / n) for n in ("fp.png", "fn.png", "tp.png")],
                          "label": ["NORMAL", "PNEUMONIA", "PNEUMONIA"], "subtype": ["normal", "unknown", "unknown"]})
    _, body = _errors_section(tmp_path, table, np.array([0, 1, 1]), np.array([0.99999, 0.5, 0.95]),
                              {"threshold": 0.862}, tmp_path)
    assert body.index("fp.png") < body.index("fn.png") and "tp.png" not in body


def test_a_patient_with_films_of_both_classes_is_said_where_the_headline_counts_patients() -> None:
    """"50 images of 49 patients (26 of them with pneumonia)" beside 24 normal: one patient had a film of each class
    and was counted in both, without a word (a reports audit)."""
    from pneumo.evaluate.report import headline_html

    def headline(normal: int) -> str:
        test = {"n": 50, "metrics": {}, "ci": {}, "patients": {"n": 49, "pneumonia": 26, "normal": normal}}
        return " ".join(headline_html({"test": test, "external": {"official_test_split": False}, "threshold": 0.5,
                                       "threshold_policy": "youden", "temperature": 1.0}).split())

    assert "50 images of 49 patients (26 with a pneumonia image, 24 with a normal one; 1 with both)" in headline(24)
    assert "50 images of 49 patients (26 of them with pneumonia)" in headline(23)
