"""Checkpoints (safetensors + JSON sidecar) and resumable training state, without pickle."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pneumo.errors import ModelError
from pneumo.models import PneumoNet, create
from pneumo.train.checkpoint import load_checkpoint, load_train_state, save_checkpoint, save_train_state


@pytest.fixture()
def scratch() -> PneumoNet:
    torch.manual_seed(0)
    return create("scratch_cnn", num_classes=2, weights="none").eval()


@pytest.fixture()
def saved(tmp_path: Path, scratch: PneumoNet) -> Path:
    save_checkpoint(tmp_path / "model", scratch, {"classes": ["NORMAL", "PNEUMONIA"], "threshold": 0.42})
    return tmp_path / "model"


@pytest.mark.parametrize("name", ["scratch_cnn", "test_resnet", "efficientnet_lite0"])
def test_checkpoint_round_trip_gives_identical_logits(tmp_path: Path, name: str) -> None:
    model = create(name, num_classes=3, weights="none" if name != "efficientnet_lite0" else "imagenet").eval()
    x = torch.rand(2, 1, 64, 64)
    save_checkpoint(tmp_path / "m", model, {})
    loaded, meta = load_checkpoint(tmp_path / "m.json")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert meta["arch"] == name and not loaded.training


@pytest.mark.parametrize("suffix", ["", ".json", ".safetensors"])
def test_load_accepts_the_sidecar_the_weights_or_the_stem(saved: Path, suffix: str) -> None:
    _, meta = load_checkpoint(str(saved) + suffix)
    assert meta["threshold"] == 0.42


def test_sidecar_records_format_checksum_and_the_callers_meta(saved: Path) -> None:
    meta = json.loads(saved.with_suffix(".json").read_text())
    assert meta["format"] == "pneumo-checkpoint/1"
    assert meta["sha256"] == hashlib.sha256(saved.with_suffix(".safetensors").read_bytes()).hexdigest()
    assert meta["classes"] == ["NORMAL", "PNEUMONIA"]
    assert {"arch", "num_classes", "input_size", "mean", "std", "created"} <= set(meta)


def test_callers_input_size_wins_and_comes_back_on_the_model(tmp_path: Path, scratch: PneumoNet) -> None:
    save_checkpoint(tmp_path / "m", scratch, {"input_size": 96})
    loaded, meta = load_checkpoint(tmp_path / "m")
    assert meta["input_size"] == 96 and loaded.input_size == 96


def test_sidecar_is_strict_json_even_with_nan_metrics(tmp_path: Path, scratch: PneumoNet) -> None:
    save_checkpoint(tmp_path / "m", scratch, {"metrics": {"auc": float("nan"), "f1": np.float32(0.5)}})
    text = (tmp_path / "m.json").read_text()
    meta = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert meta["metrics"] == {"auc": None, "f1": 0.5}


def test_half_export_is_about_half_the_size_and_loads_as_float32(tmp_path: Path, scratch: PneumoNet) -> None:
    save_checkpoint(tmp_path / "full", scratch, {})
    save_checkpoint(tmp_path / "half", scratch, {}, half=True)
    ratio = (tmp_path / "half.safetensors").stat().st_size / (tmp_path / "full.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    loaded, meta = load_checkpoint(tmp_path / "half")
    assert meta["dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), scratch(x), atol=1e-2)


def test_corrupted_weights_are_a_model_error(saved: Path) -> None:
    weights = saved.with_suffix(".safetensors")
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_checkpoint(saved)


def test_truncated_weights_are_a_model_error(saved: Path) -> None:
    weights = saved.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match="truncated"):
        load_checkpoint(saved)


def test_truncated_weights_without_checksum_are_still_a_model_error(saved: Path) -> None:
    sidecar = saved.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    del meta["sha256"]
    sidecar.write_text(json.dumps(meta))
    weights = saved.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match="cannot read"):
        load_checkpoint(saved)


def test_truncated_sidecar_is_a_model_error(saved: Path) -> None:
    sidecar = saved.with_suffix(".json")
    sidecar.write_text(sidecar.read_text()[:50])
    with pytest.raises(ModelError, match="not valid JSON"):
        load_checkpoint(saved)


def test_missing_files_are_a_model_error(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "elsewhere.json")
    saved.with_suffix(".safetensors").unlink()
    with pytest.raises(ModelError, match="weights missing"):
        load_checkpoint(saved)


def test_loading_neither_warns_nor_downloads(saved: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pneumo"):
        load_checkpoint(saved)
    assert not caplog.records


def test_saving_leaves_only_the_two_files(saved: Path) -> None:
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.json", "model.safetensors"]


def training_setup(seed: int) -> tuple[PneumoNet, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    model = create("scratch_cnn", num_classes=2, weights="none")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return model, optimizer, scheduler


def train_steps(model: PneumoNet, optimizer: torch.optim.Optimizer, scheduler, n: int) -> None:
    model.train()
    for _ in range(n):
        x, y = torch.rand(4, 1, 32, 32), torch.randint(0, 2, (4,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def test_train_state_round_trip_resumes_exactly(tmp_path: Path) -> None:
    model, optimizer, scheduler = training_setup(0)
    train_steps(model, optimizer, scheduler, 2)
    save_train_state(tmp_path / "last", model, optimizer, scheduler, {"epoch": 2, "best_auc": 0.75})
    train_steps(model, optimizer, scheduler, 2)  # the uninterrupted run
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    resumed, optimizer2, scheduler2 = training_setup(1)
    extra = load_train_state(tmp_path / "last", resumed, optimizer2, scheduler2)
    train_steps(resumed, optimizer2, scheduler2, 2)
    assert extra == {"epoch": 2, "best_auc": 0.75}
    assert scheduler2.last_epoch == scheduler.last_epoch
    assert all(torch.allclose(resumed.state_dict()[k].float(), v.float()) for k, v in expected.items())


def test_train_state_restores_the_random_generators(tmp_path: Path) -> None:
    model, optimizer, scheduler = training_setup(0)
    save_train_state(tmp_path / "last", model, optimizer, scheduler, {})
    expected = (torch.rand(3), np.random.rand(), random.random())
    torch.rand(5), np.random.rand(7), random.random()
    load_train_state(tmp_path / "last", model, optimizer, scheduler)
    assert torch.equal(torch.rand(3), expected[0])
    assert (np.random.rand(), random.random()) == expected[1:]


def test_train_state_is_plain_json_and_safetensors(tmp_path: Path) -> None:
    model, optimizer, scheduler = training_setup(0)
    train_steps(model, optimizer, scheduler, 1)
    save_train_state(tmp_path / "last", model, optimizer, scheduler, {"epoch": 1})
    payload = json.loads((tmp_path / "last.json").read_text())
    tensors = load_file(str(tmp_path / "last.safetensors"))
    assert payload["format"] == "pneumo-train-state/1" and payload["extra"] == {"epoch": 1}
    assert any(k.startswith("optimizer.state.") for k in tensors) and any(k.startswith("model.") for k in tensors)


def test_train_state_of_another_model_is_a_model_error(tmp_path: Path) -> None:
    model, optimizer, scheduler = training_setup(0)
    save_train_state(tmp_path / "last", model, optimizer, scheduler, {})
    other = create("test_resnet", num_classes=2, weights="none")
    other_opt = torch.optim.AdamW(other.parameters())
    with pytest.raises(ModelError, match="does not match"):
        load_train_state(tmp_path / "last", other, other_opt, None)
