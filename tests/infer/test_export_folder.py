"""What `pneumo export --out DIR` writes into, and what it says (an export audit): one model per folder, never pneumo's
own model folder, a model with an operating point only, and its records' warnings where it is packed to deploy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sidecars import edit_sidecar

from pneumo.cli import main
from pneumo.models.sidecar import ASSETS


def _copy(sidecar: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for path in sidecar.parent.glob(f"{sidecar.stem}.*"):
        shutil.copyfile(path, folder / path.name)
    return folder / sidecar.name


def test_a_second_model_is_not_exported_into_a_folder_holding_another(tiny_model: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """A tiny run's export beside the shipped model's made `--model DIR` score with the tiny CNN, without a word, and
    replaced the conformance cases a port of the shipped model checks itself against."""
    import torch

    from pneumo.models import create
    from pneumo.models.checkpoint import save_checkpoint

    out, other = tmp_path / "deploy", tmp_path / "other"
    other.mkdir()
    torch.manual_seed(1)  # another model, under another name, as an export folder holds one
    save_checkpoint(other / "other", create("scratch_cnn", num_classes=2, weights="none"),
                    {k: v for k, v in json.loads(tiny_model.read_text()).items() if k in (
                        "task", "classes", "input_size", "threshold", "threshold_policy", "temperature")})
    assert main(["export", "--model", str(other / "other.json"), "--out", str(out)]) == 0
    expected = (out / "conformance" / "expected.json").read_bytes()
    capsys.readouterr()
    assert main(["export", "--model", str(tiny_model), "--out", str(out)]) == 2
    assert "holds another model (other.json)" in capsys.readouterr().err
    assert not (out / "model.onnx").exists() and (out / "conformance" / "expected.json").read_bytes() == expected
    assert main(["export", "--model", str(other / "other.json"), "--out", str(out)]) == 0  # the same model again
    assert (out / "conformance" / "expected.json").read_bytes() == expected
    # a folder that got a second model some other way is refused by every command that reads it, not half-read
    for name in ("model.json", "model.onnx", "model.onnx.sha256"):
        shutil.copyfile(tiny_model.parent / name if name == "model.json" else out / name.replace("model", "other"),
                        out / name)
    capsys.readouterr()
    assert main(["predict", str(out / "conformance" / "film-8bit.png"), "--model", str(out)]) == 2
    assert "holds 2 models (model.json, other.json): name one .json" in capsys.readouterr().err


def test_two_exports_into_one_folder_at_once_are_refused(tiny_model: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """An audit of machine failures: two exports started into one folder at once both checked it empty, then both
    wrote (two models, and one model's conformance cases): the second is refused while the first holds the folder."""
    import fcntl
    import os

    out = tmp_path / "deploy"
    out.mkdir()
    first = os.open(out, os.O_RDONLY)  # the first export, still writing
    try:
        fcntl.flock(first, fcntl.LOCK_EX)
        assert main(["export", "--model", str(tiny_model), "--out", str(out)]) == 2
        assert f"--out {out}: another export is writing into it" in capsys.readouterr().err
        assert list(out.iterdir()) == []
    finally:
        os.close(first)
    assert main(["export", "--model", str(tiny_model), "--out", str(out)]) == 0  # once it is done


def test_an_out_that_is_a_file_or_pneumos_own_model_folder_is_refused(tiny_model: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    assert main(["export", "--model", str(tiny_model), "--out", str(a_file)]) == 2
    assert "--out " + str(a_file) + " is a file" in capsys.readouterr().err and a_file.read_text() == "mine"
    before = sorted(p.name for p in ASSETS.iterdir())
    monkeypatch.chdir(ASSETS.parent)  # the package's folder by a relative spelling (it wrote default-model.onnx there)
    assert main(["export", "--out", "assets"]) == 2
    assert "is pneumo's own model folder" in capsys.readouterr().err
    for model in ("default", str(ASSETS)):  # without --out, next to the shipped model: there too (a review)
        assert main(["export", "--model", model]) == 2
        assert "is pneumo's own model folder (read-only): export with --out DIR" in capsys.readouterr().err
    assert sorted(p.name for p in ASSETS.iterdir()) == before


def test_a_run_exported_into_its_own_folder_by_another_spelling_is_the_plain_export(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = _copy(tiny_model, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--model", "run", "--out", str(tmp_path / "run")]) == 0  # was "... are the same file"
    assert (tmp_path / "run" / "model.onnx").is_file() and json.loads(sidecar.read_text())["arch"] == "scratch_cnn"


def test_a_model_without_an_operating_point_is_not_exported(tiny_model: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """A --no-eval run exported with its placeholder threshold 0.5, and the one warning sent the user in a circle."""
    sidecar = _copy(tiny_model, tmp_path / "folder")
    edit_sidecar(sidecar, threshold_policy=None)
    assert main(["export", "--model", str(sidecar.parent), "--out", str(tmp_path / "deploy")]) == 2
    err = capsys.readouterr().err  # not a run folder: evaluate would refuse it too; operating-point gives it one
    assert "no operating point chosen on validation" in err and f"pneumo operating-point --model {sidecar}" in err
    (sidecar.parent / "config.yaml").write_text("name: run\n")  # a run's folder: its evaluation chooses one
    assert main(["export", "--model", str(sidecar.parent), "--out", str(tmp_path / "deploy")]) == 2
    assert f"pneumo evaluate --model {sidecar.parent}" in capsys.readouterr().err
    assert not (tmp_path / "deploy").exists()


def test_what_the_records_say_against_deploying_is_said_at_export_and_in_expected_json(
        tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sidecar = _copy(tiny_model, tmp_path / "run")
    said = "do not use the model at this operating point: it calls most normal films pneumonia"
    edit_sidecar(sidecar, operating_point={"policy": "youden", "threshold": 0.5, "warning": said})
    assert main(["export", "--model", str(sidecar.parent), "--out", str(tmp_path / "deploy")]) == 0
    assert said in caplog.text
    assert json.loads((tmp_path / "deploy" / "conformance" / "expected.json").read_text())["warning"] == said
    caplog.clear()
    assert main(["export", "--model", str(tiny_model), "--out", str(tmp_path / "plain")]) == 0
    assert said not in caplog.text
    assert json.loads((tmp_path / "plain" / "conformance" / "expected.json").read_text())["warning"] is None


def test_an_export_folder_that_lost_its_onnx_says_so(tiny_model: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """It said "checkpoint weights missing: .../model.safetensors" only: an export never had weights."""
    out = tmp_path / "deploy"
    assert main(["export", "--model", str(tiny_model), "--out", str(out)]) == 0
    (out / "model.onnx").unlink()
    capsys.readouterr()
    assert main(["predict", str(out / "conformance" / "film-8bit.png"), "--model", str(out / "model.json")]) == 2
    assert "and no model.onnx export beside it" in capsys.readouterr().err


def test_two_checkpoints_in_a_folder_are_refused_and_a_training_state_is_not_a_model(
        tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Beside model.json, another checkpoint was passed over without a word, and two without a model.json were "model
    not found"; a training state (last.json, another format) is no model to either check (a review)."""
    import torch

    from pneumo.models import create
    from pneumo.models.checkpoint import save_checkpoint
    from pneumo.train.checkpoint import STATE_FORMAT

    folder = _copy(tiny_model, tmp_path / "run").parent
    (folder / "last.json").write_text(json.dumps({"format": STATE_FORMAT}))
    (folder / "last.safetensors").write_bytes(b"state")
    assert main(["export", "--model", str(folder), "--out", str(folder)]) == 0  # its own folder, with its state
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert main(["export", "--model", str(folder), "--out", str(copy)]) == 0  # a copy of it: the same model
    torch.manual_seed(1)
    save_checkpoint(folder / "other", create("scratch_cnn", num_classes=2, weights="none"),
                    {"task": "binary", "classes": ["NORMAL", "PNEUMONIA"], "input_size": 64})
    capsys.readouterr()
    assert main(["model-card", "--model", str(folder)]) == 2
    assert "holds 2 models (model.json, other.json): name one .json" in capsys.readouterr().err
    (folder / "model.json").unlink()
    (folder / "model.onnx").unlink()
    (folder / "extra.json").write_bytes((folder / "other.json").read_bytes())  # two, neither of them model.json
    shutil.copyfile(folder / "other.safetensors", folder / "extra.safetensors")
    assert main(["model-card", "--model", str(folder)]) == 2
    assert "holds 2 models (extra.json, other.json)" in capsys.readouterr().err
