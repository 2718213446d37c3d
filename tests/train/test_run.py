"""Short real runs on a slice of the data (CPU): probe, scratch training, resume, 3-class, bad configs."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from pneumo.cli import main
from pneumo.config import load_config, read_yaml
from pneumo.errors import ConfigError, DataError
from pneumo.evaluate.runner import evaluate_run
from pneumo.train.run import train


def tiny_config(data: Path, out: Path, cache: Path, *overrides: str):
    base = [f"data.root={data}", f"out_dir={out}", f"data.cache_dir={cache}", "data.image_size=64",
            "data.val_fraction=0.3", "eval.n_bootstrap=50", "train.batch_size=8", "train.amp=false"]
    return load_config("lite0-probe", base + list(overrides))


@pytest.fixture(scope="module")
def scratch_run(data_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-epoch scratch run for the module's tests (the resume test works on a copy)."""
    out = tmp_path_factory.mktemp("scratch")
    return train(scratch_config(data_slice, out / "runs", out / "cache", "train.epochs=2"))


def scratch_config(data: Path, out: Path, cache: Path, *overrides: str):
    return tiny_config(data, out, cache, "name=scratch", "model.name=scratch_cnn", "model.mode=scratch",
                       "model.weights=none", "train.lr=0.003", *overrides)


@pytest.fixture(scope="module")
def probe_run(data_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One probe run for the module's tests, made as a user on a bf16 CPU would: ``train.amp=true`` (a probe records
    fp32 all the same) and a --dataset relative to the working directory (stored absolute, issue 23 finding 7)."""
    from pneumo.models import runtime

    out = tmp_path_factory.mktemp("probe")
    mp = pytest.MonkeyPatch()
    mp.setattr(runtime, "cpu_has_bf16", lambda: True)
    mp.chdir(data_slice.parent)
    mp.delenv("PNEUMO_DATA", raising=False)
    try:
        return train(tiny_config(Path(data_slice.name), out / "runs", out / "cache", "name=probe", "train.amp=true"))
    finally:
        mp.undo()


def test_probe_run_writes_a_checkpoint_with_its_sidecar(probe_run: Path) -> None:
    meta = json.loads((probe_run / "model.json").read_text())
    assert meta["arch"] == "efficientnet_lite0" and meta["classes"] == ["NORMAL", "PNEUMONIA"]
    assert meta["input_size"] == 64 and meta["mode"] == "probe"
    assert (probe_run / "model.safetensors").stat().st_size > 1_000_000
    assert (probe_run / "config.yaml").is_file() and (probe_run / "folds.csv").is_file()


def test_scratch_training_logs_every_epoch_and_keeps_the_best(scratch_run: Path) -> None:
    metrics = pd.read_csv(scratch_run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    assert set(metrics.columns) >= {"train_loss", "val_loss", "val_auc", "lr"}
    meta = json.loads((scratch_run / "model.json").read_text())
    assert meta["training"]["val_auc"] == pytest.approx(metrics["val_auc"].max(), abs=1e-4)
    assert (scratch_run / "last.json").is_file()
    # how it was computed, for whoever reproduces it: train.amp=false -> fp32; channels-last on the CPU by default
    assert meta["training"]["precision"] == "fp32" and meta["training"]["channels_last"] is True
    import torch  # and its thread count, which the weights depend on (a reproducibility audit: it was not recorded)

    assert meta["training"]["threads"] == torch.get_num_threads()


def test_a_probe_records_fp32_on_the_cpu_even_where_bf16_is_fast(probe_run: Path) -> None:
    assert json.loads((probe_run / "model.json").read_text())["training"]["precision"] == "fp32"


def test_resume_continues_from_the_last_checkpoint(scratch_run: Path, data_slice: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(scratch_run, runs / scratch_run.name)  # a copy: the module's other tests read the 2-epoch run
    state = json.loads((runs / scratch_run.name / "last.json").read_text())
    assert state["extra"]["elapsed_s"] > 0  # the first session's seconds, saved with its state
    state["extra"]["elapsed_s"] = 5000.0  # as if the first session had trained for 5000 s
    (runs / scratch_run.name / "last.json").write_text(json.dumps(state))
    started = time.perf_counter()
    train(scratch_config(data_slice, runs, tmp_path / "cache", "train.epochs=3"), resume=True)
    this_session = time.perf_counter() - started
    assert pd.read_csv(runs / scratch_run.name / "metrics.csv")["epoch"].tolist() == [1, 2, 3]
    training = json.loads((runs / scratch_run.name / "model.json").read_text())["training"]
    # both sessions (was: the last one only): the earlier 5000 s plus at most what this call took (rounded to 0.1 s)
    assert 5000 < training["wall_time_s"] <= 5000 + this_session + 0.05
    assert "earlier_sessions_s" not in training


def test_resume_refuses_a_config_that_would_change_what_the_run_trains(scratch_run: Path, data_slice: Path,
                                                                        tmp_path: Path, capsys) -> None:
    """Resumed with another image size and policy, a finished run rewrote config.yaml, refitted its checks and
    re-evaluated its 64 px model on 96 px images, exit 0 (a training audit); --resume with --force was accepted and
    --force ignored. A resumed run may change where it reads and writes, the device and train.epochs only."""
    runs = tmp_path / "runs"
    shutil.copytree(scratch_run, runs / scratch_run.name)
    before = {p.name: p.read_bytes() for p in (runs / scratch_run.name).iterdir() if p.is_file()}
    policy = read_yaml(runs / scratch_run.name / "config.yaml")["eval"]["threshold_policy"]
    other = "triage" if policy != "triage" else "youden"
    for extra, named in ((("data.image_size=96",), "data.image_size 64 -> 96"),
                         ((f"eval.threshold_policy={other}",), f"eval.threshold_policy {policy!r} -> {other!r}")):
        with pytest.raises(ConfigError, match=f"--resume continues .* as it was configured; this would change "
                                              f"{re.escape(named)}: train a new run"):
            train(scratch_config(data_slice, runs, tmp_path / "cache", "train.epochs=2", *extra), resume=True)
    with pytest.raises(ConfigError, match="--resume continues a run and --force replaces it: give one"):
        train(scratch_config(data_slice, runs, tmp_path / "cache", "train.epochs=2"), resume=True, force=True)
    # the command as a user types it: its saved config with the change, one line, exit 2
    argv = ["train", "--out", str(runs), "--name", scratch_run.name, "--resume", "--set", "data.image_size=96"]
    assert main(argv) == 2
    assert "this would change data.image_size 64 -> 96: train a new run" in capsys.readouterr().err
    assert main([*argv[:-2], "--force"]) == 2
    assert "--resume continues a run and --force replaces it" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (runs / scratch_run.name).iterdir() if p.is_file()} == before


@pytest.mark.parametrize("change", ["an image added", "an image's content changed"])
def test_resume_refuses_a_dataset_that_changed_since_the_run_started_and_keeps_its_folds(
        change: str, scratch_run: Path, data_slice: Path, full_data: Path, tmp_path: Path) -> None:
    """`train --resume` re-split a changed dataset without a word and rewrote folds.csv: images trained on in the
    first epochs became val (state review, rev8b finding 3)."""
    runs, dataset = tmp_path / "runs", tmp_path / "dataset"
    shutil.copytree(scratch_run, runs / scratch_run.name)
    shutil.copytree(data_slice, dataset)  # the same images: the run's split rebuilds from this copy
    folds = (runs / scratch_run.name / "folds.csv").read_bytes()
    metrics = (runs / scratch_run.name / "metrics.csv").read_bytes()
    taken = set(pd.read_csv(data_slice / "manifest.csv")["path"])
    others = sorted(set(pd.read_csv(full_data / "manifest.csv")["path"]) - taken)
    other = next(p for p in others if p.startswith("train/NORMAL/"))  # another real radiograph, not in the slice
    recorded = pd.read_csv(runs / scratch_run.name / "folds.csv")
    if change == "an image added":
        shutil.copyfile(full_data / other, dataset / other)
    else:
        trained_on = recorded.loc[recorded["fold"] == "train", "path"].iloc[0]
        shutil.copyfile(full_data / other, dataset / trained_on)
    with pytest.raises(DataError) as refused:
        train(scratch_config(dataset, runs, tmp_path / "cache", "train.epochs=3"), resume=True)
    err = str(refused.value)
    assert err.startswith(f"cannot resume {runs / scratch_run.name}: the dataset changed since the run started (")
    assert ("1 image(s) added" if change == "an image added" else "1 image(s) changed content") in err
    assert err.endswith("start a new run (another --name, or --force), or resume on the dataset it was trained on")
    assert "\n" not in err
    assert (runs / scratch_run.name / "folds.csv").read_bytes() == folds  # the split its first epochs trained on
    assert (runs / scratch_run.name / "metrics.csv").read_bytes() == metrics  # and no epoch trained on another


def test_an_existing_run_folder_is_never_silently_overwritten(scratch_run: Path, data_slice: Path) -> None:
    with pytest.raises(ConfigError, match="exists"):
        train(scratch_config(data_slice, scratch_run.parent, scratch_run.parent.parent / "cache"))


def test_evaluation_uses_val_for_the_threshold_and_writes_the_report(scratch_run: Path) -> None:
    result = evaluate_run(scratch_run, analysis=False)
    assert 0.0 <= result["threshold"] <= 1.0 and result["temperature"] > 0
    assert result["test"]["n"] == 36
    assert set(result["test"]["ci"]) >= {"accuracy", "sensitivity", "specificity", "roc_auc"}
    assert (scratch_run / "report.html").read_text().count("<img") >= 3
    sidecar = json.loads((scratch_run / "model.json").read_text())
    assert sidecar["threshold"] == pytest.approx(result["threshold"])
    assert len(pd.read_csv(scratch_run / "predictions.csv")) == 36


def test_an_evaluation_killed_while_writing_leaves_no_earlier_metrics_beside_its_new_predictions(
        scratch_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run is evaluated into its own folder file by file: a kill after predictions.csv left the earlier
    metrics.json and report.html describing other predictions (concurrency review, found not fixed)."""
    from pneumo.evaluate import runner

    run = tmp_path / "run"
    shutil.copytree(scratch_run, run)
    evaluate_run(run, analysis=False)
    assert (run / "metrics.json").is_file() and (run / "report.html").is_file()

    def strict(constant: str) -> None:  # a reporting audit: a run's metrics.json held 56 NaN tokens
        raise AssertionError(f"metrics.json holds {constant}, which strict JSON readers refuse")

    json.loads((run / "metrics.json").read_text(), parse_constant=strict)
    (run / "predictions.csv").write_text("path,label\nearlier,0\n")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "write_evaluation_report", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(run, analysis=False)
    assert "earlier" not in (run / "predictions.csv").read_text()  # the new evaluation had begun writing
    assert not (run / "metrics.json").exists() and not (run / "report.html").exists()  # nothing claims to be it
    monkeypatch.undo()
    assert evaluate_run(run, analysis=False)["test"]["n"] == 36 and (run / "metrics.json").is_file()


def test_evaluate_of_a_run_with_out_says_where_it_writes_instead_of_ignoring_out(
        scratch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`pneumo evaluate --model RUN --out DIR` wrote into the run (its metrics.json rewritten) and left DIR absent."""
    before = (scratch_run / "metrics.json").read_bytes() if (scratch_run / "metrics.json").is_file() else None
    assert main(["evaluate", "--model", str(scratch_run), "--out", str(tmp_path / "elsewhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "a run is evaluated into its own folder" in err and "\n" not in err
    after = (scratch_run / "metrics.json").read_bytes() if (scratch_run / "metrics.json").is_file() else None
    assert after == before and not (tmp_path / "elsewhere").exists()


def test_three_class_probe_reports_bacteria_vs_virus(data_slice: Path, tmp_path: Path) -> None:
    cfg = tiny_config(data_slice, tmp_path / "runs", tmp_path / "cache", "name=p3", "data.task=3class")
    import random

    import numpy as np
    import torch

    random.seed(12345), np.random.seed(12345), torch.manual_seed(12345)  # the caller's own random state
    given = (cfg.model_dump(), random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    run_dir = train(cfg)
    result = evaluate_run(run_dir, analysis=False)
    # a library call leaves the caller's config and global generators as they were (API review: reseeded to 0)
    assert cfg.model_dump() == given[0] and random.getstate() == given[1]
    assert (np.random.get_state()[1] == given[2]).all() and torch.equal(torch.get_rng_state(), given[3])
    assert result["classes"] == ["normal", "bacteria", "virus"]
    assert "bacteria_vs_virus" in json.dumps(result["test"]["multiclass"])
    # the AUC that chose the epoch is not the report's pneumonia-vs-normal AUC: the record says which it is
    training = json.loads((run_dir / "model.json").read_text())["training"]
    assert training["val_auc_of"] == "macro one-vs-rest over the three classes"
    frames = {"official": pd.read_csv(run_dir / "predictions.csv")}
    page = " ".join((run_dir / "report.html").read_text().split())  # what a 3-class figure is of (a 3-class audit)
    assert "by the larger of P(bacteria) and P(virus) whatever the normal call" in page
    assert "the measures below are of that top-class confidence" in page
    # the same images as labelled data: evaluate --data writes the same class columns (it wrote only p_pneumonia)
    out = tmp_path / "external"
    assert main(["evaluate", "--model", str(run_dir), "--data", str(data_slice / "test"), "--out", str(out)]) == 0
    frames["external"] = pd.read_csv(out / "predictions.csv")
    for frame in frames.values():
        probs = frame[["p_normal", "p_bacteria", "p_virus"]].to_numpy()
        assert probs.sum(axis=1) == pytest.approx(1.0, abs=1e-5)
        assert frame["p_calibrated"].to_numpy() == pytest.approx(1.0 - frame["p_normal"].to_numpy(), abs=1e-5)
        # the 3-class verdict predict gives (data review: only predicted_pneumonia was there)
        called = frame.dropna(subset=["predicted_class"])
        subtype = np.where(called["p_virus"] > called["p_bacteria"], "virus", "bacteria")
        expected = np.where(called["predicted_pneumonia"] == 0, "normal", subtype)
        assert len(called) and (called["predicted_class"].to_numpy() == expected).all()
    # its card gives the 3-class figures beside pneumonia vs normal, and says which is which (only binary ones, unnamed)
    from pneumo.infer.card import model_card_text

    card = model_card_text(run_dir)
    assert "pneumonia (either class) vs normal" in card and "Three classes (normal / bacteria / virus)" in card
    assert f"| macro-f1 | {result['test']['multiclass']['macro_f1']:.3f}" in card
    # a small test split is said on the card as in the report (a reporting audit: a smoke run's card showed ROC-AUC
    # 0.570 on 24 images without a word); this one (24 pneumonia, 12 normal) is not small
    import dataclasses

    from pneumo.infer.card import card_of
    from pneumo.models.sidecar import read_meta

    meta = read_meta(run_dir / "model.json")
    small = dataclasses.replace(meta, metrics={**meta.metrics, "test": {**meta.metrics["test"], "tp": 5, "fn": 3,
                                                                        "tn": 8, "fp": 8}})
    assert "Small sample" not in card and "Small sample" not in (run_dir / "report.html").read_text()
    assert "Small sample: 24 images (8 pneumonia, 16 normal)" in card_of(run_dir / "model.json", small)
    # the report's 3-class table is captioned as what it measures (it said "bacteria vs virus" over 3-class accuracy)
    report = (run_dir / "report.html").read_text()
    assert f"3 classes on {result['test']['n']} images" in report and "bacteria vs virus on the" in report
    # a hospital's NORMAL/PNEUMONIA labels set a 3-class model's operating point (it asked for bacteria/virus names)
    site = tmp_path / "site"
    images = sorted((data_slice / "test").rglob("*.jpeg"))
    for i, path in enumerate(images):
        (site / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, site / path.parent.name / f"img{i}.jpeg")
    local = tmp_path / "local"
    assert main(["operating-point", "--model", str(run_dir), "--threshold-policy", "youden", "--data", str(site),
                 "--out", str(local)]) == 0
    chosen = json.loads((local / "model.json").read_text())["operating_point"]["chosen_on"]
    assert chosen["n"] + chosen["n_not_assessed"] == len(images)
    assert 0 < chosen["n_pneumonia"] <= len(list(site.glob("PNEUMONIA/*"))) and chosen["n_pneumonia"] < chosen["n"]
    # and evaluate --data takes the same NORMAL/PNEUMONIA labels (it asked for subtypes that operating-point had not):
    # pneumonia vs normal as with subtypes, no 3-class measures
    plain = json.loads((out / "metrics.json").read_text())
    assert main(["evaluate", "--model", str(run_dir), "--data", str(site), "--out", str(tmp_path / "plain")]) == 0
    binary = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert binary["labels"] == "normal/pneumonia" and plain["labels"] == "normal/bacteria/virus"
    assert "multiclass" not in binary["test"] and "multiclass" in plain["test"]
    assert binary["test"]["metrics"] == pytest.approx(plain["test"]["metrics"], abs=1e-9)
    assert 0 <= binary["test"]["ece_after"] <= 1 and np.isfinite(binary["test"]["nll_after"])
    calibration = " ".join((tmp_path / "plain" / "report.html").read_text().split())  # rows of two measures, named
    assert "val (3 classes)" in calibration and "(pneumonia vs normal: no subtypes)" in calibration
    assert "val (3 classes)" not in " ".join((out / "report.html").read_text().split())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.mode=probe", "model.weights=none"], "pretrained"),
        (["model.weights=/no/such/file.safetensors"], "not found"),
        (["data.task=4class"], "task"),
        (["model.mode=distill"], "mode"),
        (["train.balance=magic"], "balance"),
        (["nonsense.key=1"], "unknown config key"),
    ],
)
def test_impossible_configs_fail_with_one_line_before_any_work(overrides: list[str], message: str, tmp_path: Path,
                                                               data_slice: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--dataset", str(data_slice), "--out", str(tmp_path / "runs"), "--name", "bad"]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "runs" / "bad").exists()


@pytest.mark.parametrize("name", ["", "..", ".", "a/b"])
def test_a_run_name_that_is_not_one_folder_is_refused_before_force_deletes_anything(
        name: str, tmp_path: Path, data_slice: Path, capsys: pytest.CaptureFixture) -> None:
    """The run folder is --out/--name and --force deletes it: --name "" deleted the runs folder (other runs with it),
    --name .. its parent."""
    runs = tmp_path / "proj" / "runs"
    (runs / "precious").mkdir(parents=True)
    (tmp_path / "proj" / "notes.txt").write_text("keep me")
    argv = ["train", "--dataset", str(data_slice), "--out", str(runs), "--name", name, "--force", "--no-eval"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--name must be one folder name" in err and "\n" not in err
    assert (runs / "precious").is_dir() and (tmp_path / "proj" / "notes.txt").is_file()


def test_a_bad_value_given_by_a_shortcut_flag_names_the_flag(tmp_path: Path, data_slice: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--dataset", str(data_slice), "--out", str(tmp_path / "runs"), "--name", "e"]
    assert main([*argv, "--epochs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "pneumo train: error: --epochs (train.epochs) must be >= 1, got 0"
    assert main([*argv, "--set", "train.epochs=0"]) == 2  # given as a key: named as the key
    assert capsys.readouterr().err.strip() == "pneumo train: error: train.epochs must be >= 1, got 0"


def test_unknown_model_name_lists_the_known_ones(tmp_path: Path, data_slice: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--dataset", str(data_slice), "--out", str(tmp_path / "runs"), "--arch", "no_such_net"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "efficientnet_lite0" in err and "scratch_cnn" in err


def test_a_run_stores_its_dataset_as_an_absolute_path(probe_run: Path, data_slice: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23, finding 7: trained with a relative --dataset, the run still finds its val fold from elsewhere."""
    import yaml

    from pneumo.evaluate.scoring import val_scores
    from pneumo.infer.predictor import Predictor

    stored = yaml.safe_load((probe_run / "config.yaml").read_text())["data"]["root"]
    assert Path(stored).is_absolute() and Path(stored) == data_slice.resolve()
    monkeypatch.chdir(tmp_path)  # another working directory: the stored path still resolves
    monkeypatch.delenv("PNEUMO_DATA", raising=False)
    y, logits, _, where = val_scores([Predictor(probe_run)])
    assert len(y) == len(logits) > 0 and Path(where["location"]) == data_slice.resolve()


def _hold_lock(lock: Path):
    """Another process that holds a run's lock (as `pneumo train` does while it trains) until killed."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, time\n"
        f"h = open({str(lock)!r}, 'a+')\n"
        "fcntl.flock(h, fcntl.LOCK_EX | fcntl.LOCK_NB); h.seek(0); h.truncate(); h.write(str(os.getpid())); h.flush()\n"
        "print('locked', flush=True); time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_run_another_process_trains_is_neither_replaced_nor_resumed(tmp_path: Path, data_slice: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """Two `pneumo train --force` of one name deleted each other's live run folder and both printed the survivor's
    numbers (concurrency review): the second is refused while the first holds the run's lock."""
    import types

    from pneumo.train.run import run_lock

    runs = tmp_path / "runs"
    (runs / "live").mkdir(parents=True)
    (runs / "live" / "last.json").write_text("{}")  # the first training's state
    holder = _hold_lock(runs / ".live.lock")
    try:
        for flag in ("--force", "--resume"):
            argv = ["train", "--dataset", str(data_slice), "--out", str(runs), "--name", "live", flag, "--no-eval"]
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert err == (f"pneumo train: error: run {runs / 'live'} is being trained or evaluated by another process "
                           f"(pid {holder.pid}): wait for it to finish, or pick another --name")
            assert (runs / "live" / "last.json").read_text() == "{}"
    finally:
        holder.kill()
        holder.wait()
    with run_lock(types.SimpleNamespace(out_dir=str(runs), name="live")):  # the lock died with its process
        assert (runs / ".live.lock").read_text() == str(os.getpid())
        with run_lock(types.SimpleNamespace(out_dir=str(runs), name="live")):  # `pneumo train` holds it, train() too
            pass
    with run_lock(types.SimpleNamespace(out_dir=str(runs), name="x" * 250)):  # a valid name: ".x...x.lock" is 256
        pass


def test_evaluate_and_ood_fit_refuse_a_run_another_process_trains(scratch_run: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """`pneumo evaluate --model RUN` took no lock: a `train --force` into the folder meanwhile left the old model's
    metrics.json beside the new model.json (state review, rev8b finding 4a)."""
    run = tmp_path / "runs" / "busy"
    shutil.copytree(scratch_run, run)
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    holder = _hold_lock(run.parent / ".busy.lock")
    try:
        for argv in (["evaluate", "--model", str(run)], ["ood", "fit", "--model", str(run)]):
            assert main(argv) == 2
            assert capsys.readouterr().err.strip() == (
                f"pneumo {argv[0] if argv[0] == 'evaluate' else 'ood fit'}: error: run {run} is being trained or "
                f"evaluated by another process (pid {holder.pid}): wait for it to finish")
    finally:
        holder.kill()
        holder.wait()
    assert {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()} == before


def test_an_evaluation_holds_the_run_lock_so_ood_fit_cannot_revert_meanwhile(
        scratch_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pneumo ood fit` during an evaluation wrote the sidecar, then the evaluation wrote the sidecar it had read at
    its start: the refit was silently reverted (state review, rev8b finding 4b)."""
    import subprocess
    import sys

    from pneumo.evaluate import runner

    run = tmp_path / "runs" / "evaluated"
    shutil.copytree(scratch_run, run)
    refits = []

    def scored_then_refit(*args, **kwargs):
        refits.append(subprocess.run([sys.executable, "-m", "pneumo", "ood", "fit", "--model", str(run)],
                                     check=False, capture_output=True, text=True))
        return checks(*args, **kwargs)

    checks = runner.test_checks
    monkeypatch.setattr(runner, "test_checks", scored_then_refit)  # between the scoring and the writing
    evaluate_run(run, analysis=False)
    assert refits[0].returncode == 2
    assert refits[0].stderr.strip().endswith(f"error: run {run} is being trained or evaluated by another process "
                                             f"(pid {os.getpid()}): wait for it to finish")


def test_an_evaluation_records_nothing_beside_weights_replaced_while_it_scored(
        scratch_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first evaluation wrote its operating point on top of the sidecar it loaded at its start, whatever the
    folder held by then (state review, rev8b finding 4): it reads the sidecar again and refuses other weights."""
    import dataclasses

    import torch

    from pneumo.errors import ModelError
    from pneumo.evaluate import runner
    from pneumo.models.checkpoint import load_checkpoint, save_checkpoint
    from pneumo.models.sidecar import read_meta, write_meta

    run = tmp_path / "runs" / "replaced"
    shutil.copytree(scratch_run, run)
    for name in ("metrics.json", "report.html", "predictions.csv"):
        (run / name).unlink(missing_ok=True)
    write_meta(run / "model.json", dataclasses.replace(read_meta(run / "model.json"), threshold_policy=None))  # trained,
    # never evaluated: the evaluation records its operating point

    def scored_then_replaced(*args, **kwargs):  # another process (not taking the lock) retrains into the folder
        model, meta = load_checkpoint(run / "model.json")
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        save_checkpoint(run / "model", model, {k: v for k, v in meta.to_json().items() if k != "sha256"})
        return checks(*args, **kwargs)

    checks = runner.test_checks
    monkeypatch.setattr(runner, "test_checks", scored_then_replaced)  # between the scoring and the recording
    evaluated = read_meta(run / "model.json").sha256
    with pytest.raises(ModelError, match="now records other weights") as refused:
        evaluate_run(run, analysis=False)
    assert "\n" not in str(refused.value)
    now = read_meta(run / "model.json")
    assert now.sha256 != evaluated and now.threshold_policy is None  # the other weights' sidecar, as they wrote it
    assert not (run / "metrics.json").exists() and not (run / "predictions.csv").exists()


def test_a_run_trained_with_a_study_option_that_left_is_not_resumed_as_another_configuration(
        tmp_path: Path, data_slice: Path, capsys: pytest.CaptureFixture) -> None:
    """Resumed with the option dropped (one warning), its train fold went from 36 to 82 images and folds.csv was
    rewritten (upgrade review)."""
    import yaml

    from pneumo.config import dump_yaml

    run = tmp_path / "runs" / "orig"
    run.mkdir(parents=True)
    saved = yaml.safe_load(dump_yaml(load_config("lite0-probe")))
    saved["data"]["train_sources"] = "original"
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    (run / "folds.csv").write_text("the old split")
    argv = ["train", "--resume", "--name", "orig", "--out", str(tmp_path / "runs"), "--dataset", str(data_slice)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "was trained with data.train_sources='original', a study option that has left the product" in err
    assert "\n" not in err and (run / "folds.csv").read_text() == "the old split"


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the process's resident memory (Linux)")
def test_a_library_train_call_leaves_the_processes_allocator_alone(data_slice: Path, tmp_path: Path) -> None:
    """`train()` set glibc's malloc to keep freed memory for the rest of the process (``train.hold_memory``), even
    when it failed at its first check: a notebook's freed 300 MB stayed resident (a library review). `pneumo train`,
    a process of its own, still does it."""
    import subprocess
    import sys

    (tmp_path / "runs" / "x").mkdir(parents=True)  # a run folder without a saved state: train() refuses it at once
    code = f"""
import re, numpy as np
from pneumo.config import load_config, read_yaml
from pneumo.errors import ConfigError
from pneumo.train.run import train
rss = lambda: int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read())[1]) // 1024
cfg = load_config("lite0-probe", ["data.root={data_slice}", "out_dir={tmp_path / 'runs'}", "name=x"])
assert cfg.train.hold_memory
try:
    train(cfg)
except ConfigError as exc:
    assert "holds no saved state" in str(exc)
base = rss()
block = np.ones(300 * 2**20 // 8)
held = rss()
del block
print(base, held, rss())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    base, held, freed = (int(v) for v in done.stdout.split())
    assert held - base > 250 and freed - base < 50, done.stdout  # the freed block went back to the OS
