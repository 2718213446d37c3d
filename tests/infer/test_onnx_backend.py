"""The ONNX Runtime backend: export made once into the cache, parity with PyTorch on real X-rays, fallbacks, errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from pneumo.cli import main
from pneumo.data.decode import load_image
from pneumo.errors import ModelError
from pneumo.infer import export
from pneumo.infer.export import cached_onnx, export_onnx
from pneumo.infer.predictor import Predictor, resolve_model


@pytest.fixture(scope="module")
def test_grays(full_data: Path) -> list[np.ndarray]:
    """Eight real test radiographs (4 normal, 4 pneumonia) at their stored resolution."""
    paths = [p for sub in ("NORMAL", "PNEUMONIA") for p in sorted((full_data / "test" / sub).glob("*.jpeg"))[:4]]
    return [load_image(p.read_bytes()) for p in paths]


def _p(predictor: Predictor, grays: list[np.ndarray]) -> np.ndarray:
    return np.array([r.p_pneumonia for r in predictor.predict(grays)])


def test_shipped_model_on_onnx_runtime_matches_pytorch_within_1e4(cache_dir: Path,
                                                                   test_grays: list[np.ndarray]) -> None:
    onnx_model = Predictor(None, backend="onnx")
    torch_model = Predictor(None, backend="torch")
    assert onnx_model.backend == "onnx"
    p_onnx, p_torch = _p(onnx_model, test_grays), _p(torch_model, test_grays)
    assert np.abs(p_onnx - p_torch).max() < 1e-4
    assert p_torch.min() < 0.5 < p_torch.max()  # a real model on real images: not a constant
    [exported] = (cache_dir / "onnx").glob("*.onnx")
    ops = {node.op_type for node in onnx.load(str(exported)).graph.node}
    # timm's TF-"same" convolutions exported with constant pads: no run-time shape arithmetic left in the graph
    assert "Conv" in ops and not ops & {"Shape", "Ceil", "Gather"}


def test_the_export_is_made_once_and_keyed_by_the_weights(cache_dir: Path, tiny_model: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = cached_onnx(tiny_model)
    original = export._export
    monkeypatch.setattr(export, "_export", lambda *a: pytest.fail("exported twice"))
    assert cached_onnx(tiny_model) == first
    monkeypatch.setattr(export, "_export", original)
    other = tmp_path / "other"
    other.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(tiny_model.with_suffix(suffix), other / f"model{suffix}")
    assert cached_onnx(other / "model.json") == first  # same weights, other folder: same export
    import torch

    from pneumo.models import create
    from pneumo.models.checkpoint import load_checkpoint, save_checkpoint

    _, meta = load_checkpoint(tiny_model)
    torch.manual_seed(1)
    save_checkpoint(other / "retrained", create("scratch_cnn", num_classes=2, weights="none"),
                    {k: v for k, v in meta.to_json().items() if k in ("task", "classes", "input_size", "resize_policy",
                                                            "intensity", "mode", "threshold", "temperature")})
    assert cached_onnx(other / "retrained.json") != first
    assert not list((cache_dir / "onnx").glob("*.tmp"))
    # new model code, or another torch / ONNX Runtime, is another export (a cache review: after a change to the model
    # code the old export was served; the package version is the same at every commit)
    from pneumo import provenance

    monkeypatch.setattr(provenance, "MODEL_CODE_VERSION", provenance.MODEL_CODE_VERSION + 1)
    assert cached_onnx(tiny_model) != first
    monkeypatch.undo()
    before, real = export.export_target(cache_dir, "0" * 64, meta), provenance.package_version
    monkeypatch.setattr(provenance, "package_version", lambda name: real(name) + ("+1" if name == "torch" else ""))
    assert export.export_target(cache_dir, "0" * 64, meta) != before


def test_auto_falls_back_to_pytorch_when_the_export_fails(cache_dir: Path, tiny_model: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_: object) -> None:
        raise ModelError("ONNX export failed for scratch_cnn: unsupported operator")

    monkeypatch.setattr(export, "_export", broken)
    with caplog.at_level(logging.INFO, logger="pneumo.infer.predictor"):
        predictor = Predictor(tiny_model, backend="auto")
    assert predictor.backend == "torch"
    assert [r.levelname for r in caplog.records if "unsupported operator" in r.getMessage()] == ["WARNING"]
    with pytest.raises(ModelError, match="unsupported operator"):
        Predictor(tiny_model, backend="onnx")


def test_a_cache_that_cannot_be_written_falls_back_to_pytorch_with_a_warning(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        caplog: pytest.LogCaptureFixture) -> None:
    """A container with a read-only root (here: a cache path under a file, refused even to root): predict and serve
    crashed with an OSError traceback; `auto` now scores with PyTorch and says why, `--backend onnx` is one line."""
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("PNEUMO_CACHE", str(tmp_path / "file" / "cache"))
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(image)
    with caplog.at_level(logging.WARNING, logger="pneumo.infer.predictor"):
        assert main(["predict", str(image), "--model", str(tiny_model)]) in (0, 1)  # scored (or gated): no traceback
    assert [r.levelname for r in caplog.records if "cannot write the ONNX export" in r.getMessage()] == ["WARNING"]
    capsys.readouterr()
    assert Predictor(tiny_model, backend="auto").backend == "torch"
    assert main(["predict", str(image), "--model", str(tiny_model), "--backend", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the ONNX export" in err[0] and "PNEUMO_CACHE" in err[0]


def test_an_onnx_only_model_runs_on_onnx_and_says_why_not_on_torch(tiny_model: Path, tmp_path: Path,
                                                                   test_grays: list[np.ndarray]) -> None:
    onnx_path = export_onnx(tiny_model, tmp_path / "export")
    assert not onnx_path.with_suffix(".safetensors").exists()
    auto = Predictor(onnx_path, backend="auto")
    assert auto.backend == "onnx" and auto.torch_model is None
    assert np.abs(_p(auto, test_grays) - _p(Predictor(tiny_model), test_grays)).max() < 1e-4
    with pytest.raises(ModelError, match="only an ONNX export"):
        Predictor(onnx_path, backend="torch")


def test_a_corrupt_onnx_file_is_a_one_line_model_error(tiny_model: Path, tmp_path: Path) -> None:
    onnx_path = export_onnx(tiny_model, tmp_path / "export")
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    with pytest.raises(ModelError, match="checksum mismatch") as info:  # the record written at export catches it
        Predictor(onnx_path, backend="onnx")
    assert "\n" not in str(info.value)
    onnx_path.with_name(onnx_path.name + ".sha256").unlink()  # an export from elsewhere, without a record
    for backend in ("onnx", "auto"):
        with pytest.raises(ModelError, match="no checksum record") as info:  # never used unverified (issue 24)
            Predictor(onnx_path, backend=backend)
        assert "\n" not in str(info.value)


def test_onnx_backend_still_gives_the_eager_model_for_heat_maps(cache_dir: Path, tiny_model: Path) -> None:
    predictor = Predictor(tiny_model, backend="onnx")
    assert predictor.backend == "onnx"
    assert predictor.torch_model is not None and not predictor.torch_model.training


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ModelError, match="unknown backend"):
        Predictor(resolve_model(None), backend="tensorrt")


def test_onnx_sessions_sleep_when_idle_and_take_the_thread_count() -> None:
    """Spinning model threads took the cores from the decoders (issue 24): every session is made with spinning off."""
    from pneumo.infer.predictor import session_options

    options = session_options(1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1
    assert session_options().intra_op_num_threads == 0  # ONNX Runtime's own choice


def test_the_readmes_recipe_for_the_export_outside_pneumo_gives_predicts_scores_and_labels(
        full_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """README "The export outside pneumo": onnxruntime on the exported graph, fed `load_image_file` + `prepare` with
    the sidecar's settings / 255, P = 1 - softmax(logits)[0], PNEUMONIA at p >= threshold, the calibrated
    probability at the temperature and the card's calibrated threshold: what `pneumo predict` says."""
    import json

    import onnxruntime as ort
    import pandas as pd

    from pneumo.data.decode import load_image_file
    from pneumo.data.preprocess import prepare
    from pneumo.models.scores import threshold_on_calibrated_scale

    assert main(["export", "--out", str(tmp_path / "exported")]) == 0
    assert "with default-model.onnx.sha256" in capsys.readouterr().out
    meta = json.loads((tmp_path / "exported" / "default-model.json").read_text())
    paths = [p for sub in ("NORMAL", "PNEUMONIA") for p in sorted((full_data / "test" / sub).glob("*.jpeg"))[4:9]]
    size = meta["input_size"]
    x = np.stack([prepare(load_image_file(p, target=size), size=size, policy=meta["resize_policy"],
                          intensity=meta["intensity"], markers=meta["markers"], crop=meta.get("crop", "none"))
                  for p in paths]).astype(np.float32)[:, None] / 255.0
    session = ort.InferenceSession(str(tmp_path / "exported" / "default-model.onnx"))
    logits = session.run(["logits"], {session.get_inputs()[0].name: x})[0].astype(np.float64)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    p = 1.0 - (softmax / softmax.sum(1, keepdims=True))[:, 0]
    scaled = np.exp(logits / meta["temperature"] - (logits / meta["temperature"]).max(1, keepdims=True))
    p_calibrated = 1.0 - (scaled / scaled.sum(1, keepdims=True))[:, 0]
    assert main(["predict", *map(str, paths), "--output", str(tmp_path / "p.csv")]) == 0
    rows = pd.read_csv(tmp_path / "p.csv")
    assert rows["p_pneumonia"].to_numpy() == pytest.approx(p, abs=1e-5)
    assert rows["p_calibrated"].to_numpy() == pytest.approx(p_calibrated, abs=1e-5)
    called = np.where(p >= meta["threshold"], "PNEUMONIA", "NORMAL")
    assert list(rows["label"]) == list(called) and len(set(called)) == 2
    on_calibrated = threshold_on_calibrated_scale(meta["threshold"], meta["temperature"])
    assert list(np.where(p_calibrated >= on_calibrated, "PNEUMONIA", "NORMAL")) == list(called)


def test_the_export_folder_holds_conformance_cases_that_exercise_each_step_and_agree_with_predict(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A port of the steps outside the graph could not check itself without pneumo (a review: the in-painting alone
    moved P(pneumonia) by up to 0.25). `conformance/`: inputs that exercise the in-painting, a 16-bit PNG, a reduced
    JPEG decode and an EXIF rotation, each with pneumo's model input and the outputs `pneumo predict` gives it."""
    import hashlib
    import json

    import onnxruntime as ort
    import pandas as pd
    from PIL import Image

    from pneumo.data.decode import load_image_file
    from pneumo.data.preprocess import prepare

    out = tmp_path / "exported"
    assert main(["export", "--out", str(out)]) == 0
    assert "with conformance/" in capsys.readouterr().out
    folder = out / "conformance"
    expected = json.loads((folder / "expected.json").read_text())
    meta = json.loads((out / "default-model.json").read_text())
    size = expected["input_size"]
    session = ort.InferenceSession(str(out / "default-model.onnx"))
    cases = expected["cases"]
    assert set(cases) == {"film-8bit.png", "film-markers-text.png", "film-16bit.png", "film-large-exif-rotated.jpg",
                          "film-16bit-large-odd.png", "film-rgb-odd.jpg", "film-monochrome1-window.dcm",
                          "film-no-window-padding.dcm"}
    for name, case in cases.items():
        gray = load_image_file(folder / name, target=size)
        assert hashlib.sha256(gray.tobytes()).hexdigest() == case["decoded_sha256"], name
        model_input = np.asarray(Image.open(folder / f"{name}.model-input.png"))
        assert model_input.shape == (size, size) and hashlib.sha256(model_input.tobytes()).hexdigest() == \
            case["model_input_sha256"], name
        logits = session.run(["logits"], {"image": model_input.astype(np.float32)[None, None] / 255.0})[0][0]
        assert logits == pytest.approx(case["logits"], abs=1e-5), name
    # each step is exercised: markers and text in-painted, a 16-bit stretch, a reduced-scale decode, a rotation
    marked = load_image_file(folder / "film-markers-text.png", target=size)
    assert (prepare(marked, size=size, markers=meta["markers"]) != prepare(marked, size=size)).sum() > 100
    with Image.open(folder / "film-16bit.png") as image:
        assert image.mode.startswith("I")
    with Image.open(folder / "film-large-exif-rotated.jpg") as image:
        assert image.getexif()[0x0112] == 6 and image.size == (1200, 1040)  # stored turned, larger than 2 x S
    assert cases["film-large-exif-rotated.jpg"]["decoded_shape"] == [600, 520]  # upright, decoded at 1/2
    # ... and the cases fail ports that the four above let pass (an export audit: 2e-3 off in P on real films)
    large = load_image_file(folder / "film-16bit-large-odd.png", target=size)  # a resize reducing 6x
    no_gap = np.asarray(Image.fromarray(large).resize((size, size), Image.Resampling.BILINEAR))
    assert (no_gap != prepare(large, size=size, markers=meta["markers"])).sum() > 100  # without reducing_gap
    with Image.open(folder / "film-rgb-odd.jpg") as image:
        assert image.mode == "RGB" and image.size == (2093, 1281)
    assert cases["film-rgb-odd.jpg"]["decoded_shape"] == [641, 1047]  # libjpeg's odd reduced size
    import pydicom
    from pydicom.pixels import apply_voi_lut

    uids = {pydicom.dcmread(folder / name).SOPInstanceUID for name in cases if name.endswith(".dcm")}
    assert len(uids) == 2  # each case its own instance: a DICOM store keeps both
    for name in ("film-monochrome1-window.dcm", "film-no-window-padding.dcm"):
        ds = pydicom.dcmread(folder / name)
        assert ds.StudyInstanceUID and ds.SeriesInstanceUID and ds.PatientID == ""
        voi = apply_voi_lut(ds.pixel_array, ds).astype(np.float64)  # stretched over its own min..max, inverted
        naive = np.rint((voi - voi.min()) / (voi.max() - voi.min()) * 255)
        naive = 255 - naive if ds.PhotometricInterpretation == "MONOCHROME1" else naive
        assert np.abs(naive - load_image_file(folder / name, target=size)).max() > 5, name
    assert main(["predict", *(str(folder / name) for name in sorted(cases)), "--output", str(tmp_path / "p.csv")]) == 0
    rows = pd.read_csv(tmp_path / "p.csv").set_index(pd.read_csv(tmp_path / "p.csv")["path"].map(lambda p: Path(p).name))
    for name, case in cases.items():
        assert rows.loc[name, "p_pneumonia"] == pytest.approx(case["p_pneumonia"], abs=1e-5), name
        assert rows.loc[name, "ood_score"] == pytest.approx(case["ood_score"], abs=1e-3), name


def test_onnx_runtime_sends_no_usage_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime queued 772 telemetry events (a device id, the model's file name) for Microsoft's collector from a
    hospital's service; pneumo never turned them off (an operations review)."""
    import onnxruntime

    calls = []
    monkeypatch.setattr(onnxruntime, "disable_telemetry_events", lambda: calls.append(True))
    assert Predictor(None, backend="onnx").backend == "onnx" and calls
