"""pneumo as a Python library (a review from that angle): the documented calls refuse what the CLI refuses, with
pneumo's own one-line errors, before the long part, and leave the caller's global state alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sidecars import signed

from pneumo.cli import main
from pneumo.errors import ConfigError, ModelError
from pneumo.evaluate.external import evaluate_external
from pneumo.infer.predictor import Predictor
from pneumo.models import create


def test_predict_gives_no_verdict_where_the_input_gate_refuses_as_pneumo_predict_does(
        full_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A 40 x 40 thumbnail and a 1000 x 180 strip of a real X-ray came back PNEUMONIA, p = 1.0, assessed."""
    xray = Image.open(min((full_data / "test" / "PNEUMONIA").glob("*.jpeg"))).convert("L")
    images = {"thumb.png": xray.resize((40, 40)), "strip.png": xray.resize((1000, 180)), "whole.png": xray}
    for name, image in images.items():
        image.save(tmp_path / name)
    results = Predictor(None).predict([np.asarray(image) for image in images.values()])
    assert [r.assessed for r in results] == [False, False, True] and results[2].label == "PNEUMONIA"
    assert main(["predict", *(str(tmp_path / name) for name in images)]) == 1  # (1: some inputs got an error)
    printed = capsys.readouterr()
    for name, result in zip(list(images)[:2], results[:2], strict=True):  # the reason the CLI gives, word for word
        assert result.label == "not assessed" and f"{name}: {result.reason}" in printed.err + printed.out
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        Predictor(None).predict([np.asarray(xray)], batch_size=0)


def test_making_a_predictor_leaves_the_callers_random_state_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    Predictor(None, backend="torch")  # traced with an example drawn from the global generator
    assert torch.equal(torch.rand(3), expected)


def test_a_dropout_rate_outside_0_1_is_pneumos_one_line_error() -> None:
    with pytest.raises(ModelError, match=r"drop_rate must be in \[0, 1\), got 1.5"):
        create("scratch_cnn", num_classes=2, weights="none", drop_rate=1.5)


def test_external_validation_refuses_a_bad_folder_or_count_before_scoring(
        full_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It scored every image, then blamed a race ("filled while this ran") for a folder of the user's files."""
    def never(*args, **kwargs):
        raise AssertionError("scored before the arguments were checked")

    monkeypatch.setattr("pneumo.evaluate.external.score_labelled", never)
    data = full_data / "test"
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files"):
        evaluate_external(None, data, home, replace=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        evaluate_external(None, data, tmp_path / "file")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds an earlier evaluation"):
        evaluate_external(None, data, earlier)
    for bad in ({"n_bootstrap": -5}, {"seed": -1}):
        with pytest.raises(ConfigError, match="must be >= 0"):
            evaluate_external(None, data, tmp_path / "new", **bad)
    assert [p.name for p in home.iterdir()] == ["notes.txt"] and not (tmp_path / "new").exists()


def test_a_model_without_its_checks_says_so_when_loaded_and_in_its_card(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A model of an older pneumo (no OOD or orientation entry) gave verdicts on anything without a word, and its card
    said flagged images get none (upgrade review)."""
    import json
    import shutil

    from pneumo.infer.card import model_card_text
    from pneumo.models.sidecar import DEFAULT_MODEL

    for suffix in (".json", ".safetensors", ".md"):
        shutil.copyfile(DEFAULT_MODEL.with_suffix(suffix), tmp_path / f"default-model{suffix}")
    meta = json.loads((tmp_path / "default-model.json").read_text())
    meta.pop("ood"), meta.pop("orientation")
    (tmp_path / "default-model.json").write_text(json.dumps(signed(meta)))
    with caplog.at_level("WARNING"):
        predictor = Predictor(tmp_path / "default-model.json")
    assert predictor.ood is None and "has no out-of-distribution and no orientation check" in caplog.text
    assert "- checks: no out-of-distribution and no orientation check" in model_card_text(tmp_path / "default-model.json")
    assert "- checks:" not in model_card_text(None)  # the shipped model has both


def test_a_card_of_another_operating_point_is_not_read_as_this_models(tmp_path: Path) -> None:
    """An older `pneumo operating-point` copied the source's `model_card` (its threshold, its test figures), which the
    web page showed as the new model's (upgrade review)."""
    import json
    import shutil

    from pneumo.models.sidecar import DEFAULT_MODEL, read_meta
    from pneumo.serve.app import model_card_of

    for path in DEFAULT_MODEL.parent.glob("default-model.*"):
        shutil.copyfile(path, tmp_path / path.name)
    meta = json.loads((tmp_path / "default-model.json").read_text())
    meta.update(threshold=0.525, threshold_policy="youden")
    (tmp_path / "default-model.json").write_text(json.dumps(signed(meta)))
    assert "model_card" in read_meta(DEFAULT_MODEL).extra  # the shipped model's own, at its threshold
    assert "model_card" not in read_meta(tmp_path / "default-model.json").extra
    card = model_card_of(Predictor(tmp_path / "default-model.json"))
    assert card["threshold"] == 0.525 and "model_card" not in card


def test_a_library_caller_gets_pneumos_errors_for_wrong_inputs_and_arguments(full_data: Path, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A library review: a PIL image, None, a 2-D or float model input, threads=-1 or 0, a corrupt ensemble.json and a
    missing ONNX Runtime escaped as AttributeError / RuntimeError / JSONDecodeError / ModuleNotFoundError, or gave
    numbers for a wrong-sized input; each is one of pneumo's errors now."""
    from pneumo.errors import InputError, PneumoError

    predictor = Predictor(None)
    xray = Image.open(min((full_data / "test" / "NORMAL").glob("*.jpeg"))).convert("L")
    for bad in (xray, None, np.asarray(xray).astype(np.float32), np.zeros((4, 40, 40), np.uint8)):
        with pytest.raises(InputError, match="image 1: expected a uint8 gray 2-D numpy array"):
            predictor.predict([np.asarray(xray), bad])
    prepared = predictor.preprocess(np.asarray(xray))
    for bad in (prepared, prepared[None].astype(np.float32), prepared[None, :100, :100], prepared[:0]):
        with pytest.raises(InputError, match=f"shape \\(B, {predictor.size}, {predictor.size}\\)"):
            predictor.logits(bad)
    assert predictor.logits(prepared[None]).shape == (1, 2)  # the right input still scores
    for threads in (-1, 0, 1.5, True):
        with pytest.raises(ConfigError, match="threads must be None or an integer >= 1"):
            Predictor(None, threads=threads)
    folder = tmp_path / "ens"
    folder.mkdir()
    for text in ("{not json", "[1, 2]"):
        (folder / "ensemble.json").write_text(text)
        with pytest.raises(ModelError, match="is an ensemble evaluation, not one model"):
            Predictor(folder)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(PneumoError, match="ONNX Runtime is not installed"):
        Predictor(None, backend="onnx")
    assert Predictor(None, backend="auto").backend == "torch"  # auto still falls back


def test_a_verdict_agrees_with_its_score_and_threshold_at_a_float32_tie() -> None:
    """`1 - P(normal) < threshold` ran in float32 (NumPy 2 rounds the Python threshold to the array's type), so a
    score just below the float64 threshold but equal to its float32 rounding was called pneumonia (a library review)."""
    from pneumo.models.scores import pneumonia_probability, predict_classes

    predictor = Predictor(None)
    t = predictor.threshold
    z = np.log(t / (1 - t))  # logit(t): sweep the float32 logits around it, every step
    margins = np.nextafter(np.float32(z), np.float32(np.inf)) - np.float32(z)
    logits = np.stack([np.zeros(401, np.float32), np.float32(z) + margins * np.arange(-200, 201, dtype=np.float32)],
                      axis=1)
    results = predictor.predictions(logits, None)
    p = np.array([r.p_pneumonia for r in results])
    assert (p < t).any() and (p >= t).any() and (np.float32(p) == np.float32(t)).any()  # the sweep crosses the tie
    assert [r.label == "PNEUMONIA" for r in results] == list(p >= t)
    probs = np.array([[0.5, 0.5], [1 - np.float32(t), np.float32(t)]], dtype=np.float32)
    assert list(predict_classes(probs, t)) == [int(x >= t) for x in pneumonia_probability(probs).astype(float)]
