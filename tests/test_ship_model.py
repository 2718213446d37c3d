"""`tools/ship_model.py --card-only --evaluation DIR`: the shipped card rewritten from a `pneumo evaluate` of the
shipped weights, with the interval method the evaluation recorded, its SHA-256 re-recorded so that every command
still accepts the model; an evaluation of other weights is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pneumo
from pneumo.cli import main
from pneumo.evaluate.external import evaluate_external

REPO = Path(__file__).resolve().parents[1]


def test_card_only_rewrites_the_card_from_an_evaluation_of_the_shipped_weights(
        full_data: Path, tmp_path: Path, cache_dir: Path, capsys) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for file in (Path(pneumo.__file__).parent / "assets").glob("default-model.*"):
        shutil.copyfile(file, model / file.name)
    site = tmp_path / "site"
    for label in ("NORMAL", "PNEUMONIA"):
        (site / label).mkdir(parents=True)
        for path in sorted((full_data / "test" / label).glob("*.jpeg"))[:8]:
            (site / label / path.name).symlink_to(path)
    evaluation = tmp_path / "evaluation"
    evaluate_external(model / "default-model.json", site, evaluation, n_bootstrap=50, analysis=False,
                      val_data=str(full_data))
    metrics = json.loads((evaluation / "metrics.json").read_text())
    done = subprocess.run([sys.executable, str(REPO / "tools" / "ship_model.py"), "--card-only", "--evaluation",
                           str(evaluation), "--dest", str(model / "default-model"), "--command-note", "(a test)"],
                          check=False, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    card = (model / "default-model.md").read_text()
    assert "official 16-image test split; 95 % CIs: exact (Clopper-Pearson" in card and "BCa bootstrap" in card
    assert "50 resamples" in card and "(a test)" in card and "figures of the shipped float16 weights" in card
    m = metrics["test"]["metrics"]  # what the operating point means, in counts, and the predictive values at other
    assert f"{m['fn']} of {m['tp'] + m['fn']} pneumonia images were missed" in card  # prevalences (a clinical review)
    assert "PPV (a PNEUMONIA call is right)" in card and "50.0 % (this test split)" in card
    assert "not a normal result: read it without the model" in card and "not for diagnosing or triaging" in card
    sidecar = json.loads((model / "default-model.json").read_text())
    assert sidecar["model_card"]["test_ci95"]["roc_auc"] == metrics["test"]["ci"]["roc_auc"]
    assert sidecar["metrics"]["test_n"] == 16
    assert main(["model-card", "--model", str(model)]) == 0  # the new card's SHA-256 is the recorded one
    assert "0.862" in capsys.readouterr().out
    # an evaluation without the model's val fold (made with another dataset) is refused in one line, as is one of
    # other weights; the card stays untouched
    without_val = {**metrics, "val": {"n": 0}}
    (evaluation / "metrics.json").write_text(json.dumps(without_val))
    refused = subprocess.run([sys.executable, str(REPO / "tools" / "ship_model.py"), "--card-only", "--evaluation",
                              str(evaluation), "--dest", str(model / "default-model")], capture_output=True, text=True,
                             check=False, cwd=REPO)
    assert refused.returncode != 0 and "did not score the model's val fold" in refused.stderr
    assert "Traceback" not in refused.stderr and (model / "default-model.md").read_text() == card
    metrics["model_identity"]["weights_sha256"] = ["0" * 64]
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    refused = subprocess.run([sys.executable, str(REPO / "tools" / "ship_model.py"), "--card-only", "--evaluation",
                              str(evaluation), "--dest", str(model / "default-model")], capture_output=True, text=True,
                             check=False, cwd=REPO)
    assert refused.returncode != 0 and "is not an evaluation of" in refused.stderr
    assert (model / "default-model.md").read_text() == card
