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
