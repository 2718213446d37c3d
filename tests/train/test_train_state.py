"""Resumable training state (model, optimizer, scheduler, RNG, counters) as safetensors + JSON, without pickle."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pneumo.errors import ModelError
from pneumo.models import PneumoNet, create
from pneumo.train.checkpoint import load_train_state, save_train_state


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


def test_loop_state_resumes_old_new_and_refuses_other_batches():
    from dataclasses import asdict

    from pneumo.config import TrainConfig
    from pneumo.errors import ConfigError
    from pneumo.train.loop import LoopState

    cfg = TrainConfig(batch_size=32)
    # a state saved before the step fields existed: whole epochs only, global step derived from them
    old = LoopState.resumed({"epoch": 2, "best_auc": 0.9, "best_epoch": 1, "bad_epochs": 1}, cfg, 10)
    assert (old.epoch, old.step, old.global_step, old.best_auc, old.bad_epochs) == (2, 0, 20, 0.9, 1)
    # a mid-epoch state round-trips through its saved dict (what last.json holds), unknown keys ignored
    mid = LoopState(10, 32, epoch=1, step=4, global_step=14, loss_sum=1.5, best_auc=0.8, best_epoch=0)
    assert LoopState.resumed({**asdict(mid), "note": "x"}, cfg, 10) == mid
    # a mid-epoch resume with other batches would not repeat the interrupted run's steps
    with pytest.raises(ConfigError, match="batch_size 32"):
        LoopState.resumed(asdict(mid), TrainConfig(batch_size=16), 20)
    # at an epoch boundary another batch size is fine: the counters adopt it
    assert LoopState.resumed({**asdict(mid), "step": 0}, TrainConfig(batch_size=16), 20).steps_per_epoch == 20


def test_a_resumed_run_that_had_stopped_early_trains_no_further(tmp_path: Path) -> None:
    """Interrupted after early stopping (in the OOD fit that follows), `--resume` trained another epoch and could
    overwrite the finished model."""
    from pneumo.config import RunConfig
    from pneumo.train.loop import SplitTensors, fit

    torch.manual_seed(0)
    model = create("scratch_cnn", num_classes=2, weights="none")
    x, y = torch.randint(0, 256, (16, 1, 32, 32), dtype=torch.uint8), torch.tensor([0, 1] * 8)
    cfg = RunConfig(train={"epochs": 5, "patience": 2, "batch_size": 8, "amp": False, "device": "cpu"})
    saved = {"epoch": 2, "step": 0, "global_step": 4, "best_auc": 0.7, "best_epoch": 0, "bad_epochs": 2}
    best, states = [], []
    state = fit(model, SplitTensors(x, y, x[:8], y[:8]), cfg, tmp_path, device=torch.device("cpu"),
                save_best=lambda *a: best.append(a), save_state=lambda *a: states.append(a),
                load_state=lambda *a: saved)
    assert state.epoch == 2 and state.global_step == 4 and best == [] and states == []
