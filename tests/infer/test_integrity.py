"""Model integrity that cannot be bypassed (issue 12 item 4): with a warm ONNX cache, a flipped byte in the weights or in
the cached export is refused by `pneumo predict --model` and `pneumo serve`, with one clear line."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sidecars import signed

from pneumo.cli import main
from pneumo.config import ServeConfig
from pneumo.errors import IntegrityError, ModelError
from pneumo.infer import export
from pneumo.infer.export import cached_onnx, export_onnx, sha256_file
from pneumo.infer.predictor import Predictor
from pneumo.models.sidecar import DEFAULT_MODEL, read_meta
from pneumo.serve.app import create_app


@pytest.fixture()
def model(tiny_model: Path, tmp_path: Path, cache_dir: Path) -> Path:
    """A private copy of the tiny checkpoint whose ONNX export is already in the (per-test) cache."""
    folder = tmp_path / "run"
    folder.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(tiny_model.with_suffix(suffix), folder / f"model{suffix}")
    assert Predictor(folder, backend="auto").backend == "onnx"  # warms the cache
    return folder / "model.json"


@pytest.fixture()
def xray(full_data: Path) -> Path:
    return min((full_data / "test" / "NORMAL").glob("*.jpeg"))


def _flip_byte(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _cached(cache_dir: Path) -> Path:
    [onnx_path] = (cache_dir / "onnx").glob("*.onnx")
    return onnx_path


def _one_line_refusal(captured: str) -> str:
    lines = [line for line in captured.splitlines() if line.strip()]
    assert len(lines) == 1, captured
    assert "checksum mismatch" in lines[0]
    return lines[0]


def test_warm_cache_is_used_as_long_as_nothing_changed(model: Path, xray: Path, cache_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "_export", lambda *a: pytest.fail("exported again"))
    assert main(["predict", str(xray), "--model", str(model)]) == 0
    record = json.loads((cache_dir / "onnx" / (_cached(cache_dir).name + ".sha256")).read_text())
    assert record == {"onnx_sha256": sha256_file(_cached(cache_dir)),
                      "weights_sha256": json.loads(model.read_text())["sha256"]}


@pytest.mark.parametrize("backend", ["auto", "onnx"])
def test_flipped_byte_in_the_weights_is_refused_by_predict(model: Path, xray: Path, backend: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    _flip_byte(model.with_suffix(".safetensors"))
    assert main(["predict", str(xray), "--model", str(model), "--backend", backend]) == 2
    captured = capsys.readouterr()
    assert "model.safetensors" in _one_line_refusal(captured.err) and captured.out == ""


@pytest.mark.parametrize("backend", ["auto", "onnx"])
def test_flipped_byte_in_the_cached_export_is_refused_by_predict(model: Path, xray: Path, cache_dir: Path,
                                                                 backend: str, capsys: pytest.CaptureFixture) -> None:
    _flip_byte(_cached(cache_dir))
    assert main(["predict", str(xray), "--model", str(model), "--backend", backend]) == 2
    assert ".onnx" in _one_line_refusal(capsys.readouterr().err)


def test_flipped_byte_in_the_weights_stops_serve_before_it_listens(model: Path, capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    _flip_byte(model.with_suffix(".safetensors"), at=100)
    for workers in ("1", "2"):  # with workers, each loaded the model and the service stayed up answering 503
        assert main(["serve", "--model", str(model), "--workers", workers]) == 2
        _one_line_refusal(capsys.readouterr().err)


def test_flipped_byte_in_the_cached_export_keeps_the_service_not_ready(model: Path, cache_dir: Path) -> None:
    _flip_byte(_cached(cache_dir))
    with TestClient(create_app(ServeConfig(), model=str(model), backend="auto")) as client:
        assert "checksum mismatch" in _not_ready_because(client, "checksum")
        assert client.post("/api/v1/predict", files={"file": ("x.jpeg", b"x")}).status_code == 503


def test_a_cache_entry_without_a_record_is_exported_again(model: Path, cache_dir: Path) -> None:
    onnx_path = _cached(cache_dir)
    onnx_path.with_name(onnx_path.name + ".sha256").unlink()  # made by an older version
    _flip_byte(onnx_path)
    assert cached_onnx(model) == onnx_path
    assert Predictor(model, backend="onnx").backend == "onnx"


def test_export_from_other_weights_is_refused(model: Path, cache_dir: Path) -> None:
    onnx_path = _cached(cache_dir)
    record = onnx_path.with_name(onnx_path.name + ".sha256")
    record.write_text(json.dumps({**json.loads(record.read_text()), "weights_sha256": "0" * 64}))
    with pytest.raises(IntegrityError, match="exported from other weights"):
        cached_onnx(model)


def test_the_run_own_export_is_verified_too(model: Path, tmp_path: Path) -> None:
    onnx_path = export_onnx(model)  # next to the checkpoint: used instead of the cache
    assert Predictor(model, backend="onnx").backend == "onnx"
    _flip_byte(onnx_path)
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        Predictor(model, backend="auto")


# --- issue 24: the whole model folder --------------------------------------------------------------------------------


def _refusal(captured: str, *words: str) -> str:
    lines = [line for line in captured.splitlines() if line.strip()]
    assert len(lines) == 1, captured
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


@pytest.mark.parametrize("backend", ["auto", "onnx"])
def test_the_run_own_export_without_a_record_is_never_used(model: Path, xray: Path, backend: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    onnx_path = export_onnx(model)
    onnx_path.with_name(onnx_path.name + ".sha256").unlink()  # e.g. a replaced export (a shifted head bias)
    with pytest.raises(IntegrityError, match="no checksum record"):
        Predictor(model, backend=backend)
    assert main(["predict", str(xray), "--model", str(model), "--backend", backend]) == 2
    _refusal(capsys.readouterr().err, "pneumo predict: error:", "model.onnx", "no checksum record")


def test_an_export_that_fails_to_load_is_an_error_not_a_fallback_to_torch(model: Path) -> None:
    onnx_path = export_onnx(model)
    onnx_path.write_bytes(b"not an onnx model")
    export._write_record(onnx_path, json.loads(model.read_text())["sha256"])  # a record that matches the garbage
    with pytest.raises(ModelError, match="cannot load ONNX model model.onnx"):
        Predictor(model, backend="auto")


def test_an_onnx_only_folder_is_bound_to_the_weights_its_sidecar_names(model: Path, tmp_path: Path) -> None:
    onnx_path = export_onnx(model, tmp_path / "elsewhere")  # the sidecar is copied, the weights are not
    assert Predictor(onnx_path, backend="onnx").model_id == Predictor(model, backend="torch").model_id
    sidecar = onnx_path.with_suffix(".json")
    sidecar.write_text(json.dumps(signed({**json.loads(sidecar.read_text()), "sha256": "ab" * 32})))  # another id
    with pytest.raises(IntegrityError, match="exported from other weights"):
        Predictor(onnx_path, backend="auto")


def test_model_card_refuses_a_folder_without_its_weights_or_a_recorded_export(model: Path, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    """Every other command refused a folder whose weights were deleted; `model-card` printed its card, exit 0 (a
    review). An export's folder (no weights, its recorded .onnx) still has a card; an unrecorded .onnx does not."""
    from pneumo.cli import main

    onnx_path = export_onnx(model, tmp_path / "export")
    assert main(["model-card", "--model", str(onnx_path.with_suffix(".json"))]) == 0
    onnx_path.with_name(onnx_path.name + ".sha256").unlink()
    capsys.readouterr()
    assert main(["model-card", "--model", str(onnx_path.with_suffix(".json"))]) == 2
    assert "has no checksum record" in capsys.readouterr().err
    model.with_suffix(".safetensors").unlink()
    assert main(["model-card", "--model", str(model)]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint weights missing" in err and len(err.splitlines()) == 1


@pytest.fixture()
def plain(tiny_model: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint, nothing exported."""
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(tiny_model.with_suffix(suffix), tmp_path / f"model{suffix}")
    return tmp_path / "model.json"


def _edited(sidecar: Path, key: str, value: object) -> Path:
    payload = json.loads(sidecar.read_text())
    if "." in key:
        outer, inner = key.split(".")
        payload[outer] = {**payload[outer], inner: value}
    else:
        payload[key] = value
    sidecar.write_text(json.dumps(payload))  # json.dumps writes NaN / Infinity, which json.loads reads back
    return sidecar


BAD_VALUES = [
    ("threshold", 5, "threshold must be a finite number in [0, 1]"),
    ("threshold", -1, "threshold must be a finite number in [0, 1]"),
    ("threshold", float("nan"), "threshold must be a finite number in [0, 1], got nan"),
    ("threshold", "0.5", "malformed"),
    ("temperature", 0, "temperature must be a finite number > 0"),
    ("temperature", -1, "temperature must be a finite number > 0"),
    ("temperature", float("inf"), "temperature must be a finite number > 0"),
    ("classes", ["PNEUMONIA", "NORMAL"], "classes must be ['NORMAL', 'PNEUMONIA'] for task binary"),
    ("classes", ["NORMAL", "PNEUMONIA", "OTHER"], "classes must be"),
    ("task", "4class", "task must be one of binary, 3class"),
    ("num_classes", 3, "num_classes must be 2"),
    ("input_size", 100000, "input_size must be within 32..1024 pixels"),
    ("input_size", 8, "input_size must be within 32..1024 pixels"),
    ("mean", [float("nan")] * 3, "mean must be 1 or 3 finite numbers"),
    ("std", [0.5, 0.0, 0.5], "std must be 1 or 3 finite numbers, each > 0"),
    ("resize_policy", "stretch", "resize_policy must be one of squash, letterbox"),
    ("intensity", "gamma", "intensity must be one of"),
    ("markers", "erase", "markers must be one of none, inpaint"),
    ("crop", "border:0.9", "crop must be"),
    ("dtype", "int8", "dtype must be one of float32, float16"),
    ("sha256", "0" * 63, "sha256 must be 64 lowercase hex digits"),
    ("tta", "yes", "tta must be true or false"),
    ("weights_file", "../model.safetensors", "weights_file must be a plain file name"),
    ("weights_file", "sub/model.safetensors", "weights_file must be a plain file name"),
    ("weights_file", "/etc/passwd", "weights_file must be a plain file name"),
    ("weights_file", "model\n.safetensors", "weights_file must be a plain file name"),
]
BAD_OOD = [
    ("ood.file", "../default-model.ood.safetensors", "ood.file must be a plain file name"),
    ("ood.file", "sub/x.ood.safetensors", "ood.file must be a plain file name"),
    ("ood.threshold", float("nan"), "ood.threshold must be a finite number >= 0"),
    ("ood.threshold", -3, "ood.threshold must be a finite number >= 0"),
    ("ood.percentile", float("inf"), "ood.percentile must be a number in [50, 100)"),
    ("ood.shrinkage", float("nan"), "ood.shrinkage must be a number in [0, 1]"),
    ("ood.n_features", -1, "ood.n_features must be a whole number >= 0"),
    ("ood.sha256", None, "ood.sha256 must be 64 lowercase hex digits"),
    ("ood.method", "knn", "ood.method must be mahalanobis-tied on forward_features"),
    ("ood", {}, "ood.file must be a plain file name"),
    ("ood", "none", "ood must be an object"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_every_sidecar_value_is_range_checked_with_one_line(plain: Path, key: str, value: object,
                                                            message: str) -> None:
    with pytest.raises(ModelError, match=re.escape(message)) as caught:
        read_meta(_edited(plain, key, value))
    assert "\n" not in str(caught.value) and "model.json" in str(caught.value)


@pytest.fixture()
def shipped_copy(tmp_path: Path) -> Path:
    """The shipped model's sidecar and OOD statistics (the weights are not needed to read a sidecar)."""
    for name in ("default-model.json", "default-model.ood.safetensors"):
        shutil.copyfile(DEFAULT_MODEL.with_name(name), tmp_path / name)
    return tmp_path / "default-model.json"


@pytest.mark.parametrize(("key", "value", "message"), BAD_OOD, ids=[f"{k}={v!r}" for k, v, _ in BAD_OOD])
def test_the_ood_entry_is_range_checked_with_one_line(shipped_copy: Path, key: str, value: object,
                                                      message: str) -> None:
    with pytest.raises(ModelError, match=re.escape(message)) as caught:
        read_meta(_edited(shipped_copy, key, value))
    assert "\n" not in str(caught.value)


def test_the_shipped_model_and_a_training_run_sidecar_pass_the_checks(tmp_path: Path) -> None:
    from pneumo.config import RunConfig
    from pneumo.models import create
    from pneumo.models.checkpoint import save_checkpoint
    from pneumo.train.run import checkpoint_meta

    shipped = read_meta(DEFAULT_MODEL)
    assert shipped.ood is not None and shipped.input_size == 224
    cfg = RunConfig()
    cfg.data.image_size, cfg.model.name, cfg.model.mode = 64, "scratch_cnn", "scratch"
    model = create("scratch_cnn", num_classes=2, weights="none")
    sidecar = save_checkpoint(tmp_path / "model", model, checkpoint_meta(cfg, model, {"training": {"epoch": 1}}))
    assert read_meta(sidecar).config["data"]["image_size"] == 64
    with pytest.raises(ModelError, match=r"input_size must be 64 \(the image size the model was trained at\)"):
        read_meta(_edited(sidecar, "input_size", 256))


def test_a_three_class_head_saved_without_its_task_reads_back_as_three_class(tmp_path: Path) -> None:
    from pneumo.models import create
    from pneumo.models.checkpoint import save_checkpoint

    sidecar = save_checkpoint(tmp_path / "m", create("scratch_cnn", num_classes=3, weights="none"), {})
    assert read_meta(sidecar).classes == ["normal", "bacteria", "virus"]


@pytest.mark.parametrize(("key", "value", "word"), [("threshold", float("nan"), "threshold"),
                                                    ("temperature", 0, "temperature"),
                                                    ("num_classes", 3, "num_classes"),
                                                    ("weights_file", "../model.safetensors", "weights_file")])
def test_a_bad_sidecar_stops_predict_and_serve_with_exit_2(plain: Path, xray: Path, key: str, value: object,
                                                           word: str, capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    model = _edited(plain, key, value)
    assert main(["predict", str(xray), "--model", str(model)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    _refusal(captured.err, "pneumo predict: error:", f"{word} must be")
    for workers in ("1", "2"):
        assert main(["serve", "--model", str(model), "--workers", workers]) == 2
        _refusal(capsys.readouterr().err, "pneumo serve: error:", f"{word} must be")


@pytest.mark.parametrize(("entry", "suffix"), [("ood", ".ood.safetensors"), ("orientation", ".orient.safetensors")])
def test_a_deleted_check_entry_is_refused_while_its_file_lies_beside_the_model(
        tmp_path: Path, xray: Path, entry: str, suffix: str, capsys: pytest.CaptureFixture) -> None:
    """Deleting the sidecar's `ood` (or `orientation`) entry would silently switch the check off (issue 24)."""
    for name in ("default-model.json", "default-model.safetensors", "default-model.ood.safetensors",
                 "default-model.orient.safetensors", "default-model.md"):
        shutil.copyfile(DEFAULT_MODEL.with_name(name), tmp_path / name)
    sidecar = tmp_path / "default-model.json"
    assert Predictor(sidecar).ood is not None  # the intact copy loads with both checks
    payload = json.loads(sidecar.read_text())
    del payload[entry]
    sidecar.write_text(json.dumps(signed(payload)))  # recorded anew: the sidecar's own checksum would refuse it first
    with pytest.raises(ModelError, match=f"no `{entry}` entry but default-model{re.escape(suffix)} lies beside it"):
        Predictor(sidecar)
    assert main(["predict", str(xray), "--model", str(sidecar)]) == 2
    _refusal(capsys.readouterr().err, "pneumo predict: error:", f"no `{entry}` entry")
    # a folder `operating-point` wrote (model.json beside the source's check files, copied under their names)
    derived = tmp_path / "derived"
    derived.mkdir()
    for path in tmp_path.glob("default-model.*"):
        shutil.copyfile(path, derived / (f"model{path.suffix}" if path.suffix in (".json", ".md") else path.name))
    with pytest.raises(ModelError, match=f"no `{entry}` entry but default-model{re.escape(suffix)} lies beside it"):
        Predictor(derived / "model.json")
    (tmp_path / f"default-model{suffix}").unlink()  # a model without that check at all is still a model
    assert Predictor(sidecar).model_id


@pytest.mark.parametrize("suffix", [".ood.safetensors", ".orient.safetensors"])
def test_a_flipped_byte_in_a_check_file_is_refused_by_predict(tmp_path: Path, xray: Path, suffix: str,
                                                             capsys: pytest.CaptureFixture) -> None:
    """Every file a model folder loads is checked against its recorded SHA-256: the OOD statistics and the orientation
    head too (the orientation file's check had no test; done-when review)."""
    for name in ("default-model.json", "default-model.safetensors", "default-model.ood.safetensors",
                 "default-model.orient.safetensors", "default-model.md"):
        shutil.copyfile(DEFAULT_MODEL.with_name(name), tmp_path / name)
    _flip_byte(tmp_path / f"default-model{suffix}")
    with pytest.raises(ModelError, match="checksum mismatch"):
        Predictor(tmp_path / "default-model.json")
    assert main(["predict", str(xray), "--model", str(tmp_path / "default-model.json")]) == 2
    assert f"default-model{suffix}" in _one_line_refusal(capsys.readouterr().err)


@pytest.fixture()
def shipped_folder(tmp_path: Path) -> Path:
    """The shipped model's files (weights, checks, sidecar, card) in a folder of their own."""
    for path in DEFAULT_MODEL.parent.glob("default-model.*"):
        shutil.copyfile(path, tmp_path / path.name)
    return tmp_path / DEFAULT_MODEL.name


def test_a_model_card_changed_after_it_was_written_is_refused(shipped_folder: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """Issue 24: the card (`<stem>.md`, shown by `pneumo model-card`, `/api/v1/model` and the web page) is a file the
    model folder loads: its SHA-256 is in the sidecar; an edited figure is refused, in one line. A recorded card lost
    in a copy is refused too (it was replaced by a generic card describing another model: an adapted model became a
    pediatric one), and `predict` refuses both as `model-card` does (it scored on; serve said ready, then answered
    /api/v1/model with a 500: a review)."""
    from pneumo.infer.card import model_card_text

    card = shipped_folder.with_suffix(".md")
    text = card.read_text()
    assert model_card_text(shipped_folder).startswith(text)  # the intact copy shows its own card
    card.unlink()
    with pytest.raises(IntegrityError, match="model card .* is missing"):
        model_card_text(shipped_folder)
    with pytest.raises(IntegrityError, match="is missing"):
        Predictor(shipped_folder)
    card.write_text(text.replace("0.9", "0.99", 1))
    with pytest.raises(IntegrityError, match="model card"):
        Predictor(shipped_folder)
    with pytest.raises(IntegrityError, match="model card"):
        model_card_text(shipped_folder)
    assert main(["model-card", "--model", str(shipped_folder)]) == 2
    _refusal(capsys.readouterr().err, "pneumo model-card: error:", "model card", "changed after pneumo wrote it")
    with TestClient(create_app(ServeConfig(), model=str(shipped_folder), backend="torch")) as client:
        assert "model card" in _not_ready_because(client, "model card")


def _not_ready_because(client: TestClient, word: str) -> str:
    """The reason /readyz gives once the model failed to load with ``word`` in it (within 60 s)."""
    deadline = time.monotonic() + 60
    while (response := client.get("/readyz")).status_code == 503 and word not in response.text:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)
    assert response.status_code == 503, response.text
    return response.json()["detail"]


def test_a_card_the_sidecar_does_not_record_is_never_shown(tiny_model: Path, tmp_path: Path) -> None:
    """A `<stem>.md` put beside a run's sidecar (which records no card) is not its card: the card is built from the
    sidecar."""
    from pneumo.infer.card import model_card_text

    for suffix in (".json", ".safetensors"):
        shutil.copyfile(tiny_model.with_suffix(suffix), tmp_path / f"model{suffix}")
    built = model_card_text(tmp_path / "model.json")
    (tmp_path / "model.md").write_text("# Model card: the best model ever\n\nSensitivity 1.000\n")
    assert model_card_text(tmp_path / "model.json") == built and "best model ever" not in built


def test_a_copy_that_lost_its_weights_says_so(shipped_folder: Path, xray: Path, capsys: pytest.CaptureFixture) -> None:
    """It said "this model has only an ONNX export ... --backend onnx", which there was not either (a review of a
    folder that travels); evaluate named the missing weights."""
    shipped_folder.with_suffix(".safetensors").unlink()
    assert main(["predict", str(xray), "--model", str(shipped_folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint weights missing" in err and "ONNX export" not in err
