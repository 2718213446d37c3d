"""The run report's analysis blocks: figures written under figures/, linked relatively, hooks cleaned up."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo.data.decode import load_image
from pneumo.data.preprocess import prepare
from pneumo.errors import ConfigError
from pneumo.explain.analysis import analysis_sections
from pneumo.explain.filters import activations_figure, confident_errors, filters_figure
from pneumo.models import PneumoNet, create

SIZE = 64


@pytest.fixture(scope="module")
def test_set(full_data: Path, pick: Callable[..., list[str]]) -> dict:
    paths = pick(split="test", per_class=12)
    images = np.stack([prepare(load_image((full_data / p).read_bytes(), target=SIZE), size=SIZE) for p in paths])
    subtypes = ["normal" if "NORMAL" in p else ("virus" if "virus" in p else "bacteria") for p in paths]
    return {"images": images, "y": np.repeat([0, 1], 12), "subtypes": subtypes}


@pytest.fixture()
def model() -> PneumoNet:
    torch.manual_seed(0)
    return create("scratch_cnn", num_classes=2, weights="none").eval()


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_analysis_sections_write_every_figure_and_link_it_relative_to_the_run(
        tmp_path: Path, model: PneumoNet, test_set: dict) -> None:
    probs = np.linspace(0.05, 0.95, len(test_set["y"]))[::-1]  # confident errors on both sides
    sections = analysis_sections(tmp_path, model, {"arch": "scratch_cnn"}, test_set["images"], test_set["y"],
                                 test_set["subtypes"], probs, 0.5, ["NORMAL", "PNEUMONIA"], max_cam=10)
    assert len(sections) == 4
    body = "".join(html for _, html in sections)
    assert "Not available" not in body
    links = re.findall(r'src="([^"]+)"', body)
    assert len(links) == 6 and all(link.startswith("figures/") for link in links)
    assert all((tmp_path / link).is_file() for link in links)
    stats = json.loads((tmp_path / "figures" / "shortcut_stats.json").read_text())
    assert stats["images"] == 10 and set(stats["per_class"]) == {"NORMAL", "PNEUMONIA"}
    assert "subsample of 10 of the 24 test images" in sections[0][1]
    verdict = stats["verdict"]  # the per-image regions (real X-rays: markers, lung field) and the verdict
    assert {"markers", "outside_lungs"} <= set(stats["regions"]) and isinstance(verdict["flagged"], bool)
    assert ("FLAGGED" if verdict["flagged"] else "not flagged") in sections[0][1]
    # the PCA plane's share of the variance, and that the colours are the true labels (explanations review)
    from pneumo.explain.embeddings import pca_2d, pixel_features

    share = pca_2d(pixel_features(test_set["images"]))[1]
    assert 0 < share[1] <= share[0] < 1
    assert f"the PCA plane holds {share.sum():.1%} of the variance" in body and "colour = the true class" in body


def test_a_failing_section_becomes_a_note_and_the_others_still_come(
        tmp_path: Path, model: PneumoNet, test_set: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("t-SNE exploded")

    monkeypatch.setattr("pneumo.explain.analysis.embedding_figures", broken)
    sections = analysis_sections(tmp_path, model, {}, test_set["images"], test_set["y"], test_set["subtypes"],
                                 np.full(len(test_set["y"]), 0.3), 0.5, ["NORMAL", "PNEUMONIA"], max_cam=4)
    notes = [(title, html) for title, html in sections if html.startswith("<p>Not available")]
    assert notes == [("Embeddings: raw pixels vs learned features",
                      "<p>Not available: RuntimeError: t-SNE exploded</p>")]


def test_inputs_of_different_lengths_are_refused(tmp_path: Path, model: PneumoNet, test_set: dict) -> None:
    with pytest.raises(ConfigError, match="one label, subtype and probability per image"):
        analysis_sections(tmp_path, model, {}, test_set["images"], test_set["y"], test_set["subtypes"][:3],
                          np.full(len(test_set["y"]), 0.3), 0.5, ["NORMAL", "PNEUMONIA"])


def test_activation_maps_leave_no_hook_behind(tmp_path: Path, model: PneumoNet, test_set: dict) -> None:
    before = _hooks(model)
    activations_figure(model, test_set["images"][[0, -1]], ["normal", "pneumonia"], tmp_path / "act.png")
    assert _hooks(model) == before and (tmp_path / "act.png").stat().st_size > 0


def test_filters_figure_of_a_three_channel_stem(tmp_path: Path) -> None:
    lite = create("efficientnet_lite0", num_classes=2, weights="none")
    assert filters_figure(lite, tmp_path / "f.png").stat().st_size > 0


def test_confident_errors_are_the_highest_p_false_positives_and_lowest_p_false_negatives() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 0])
    p = np.array([0.9, 0.6, 0.1, 0.2, 0.05, 0.8, 0.99])
    fp, fn = confident_errors(y, p, 0.5, k=2)
    assert fp.tolist() == [6, 0] and fn.tolist() == [4, 3]
