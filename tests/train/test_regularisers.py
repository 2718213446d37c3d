"""The fifth study round's training options: Gaussian blur and noise augmentation, mixup, EMA of the weights and
distillation from finished runs (offline, same split only)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from safetensors.torch import load_file
from torch import nn

from pneumo.config import AugmentConfig, load_config
from pneumo.errors import ConfigError, ModelError
from pneumo.models import create
from pneumo.train.augment import augment, gaussian_blur
from pneumo.train.checkpoint import load_train_state, save_train_state
from pneumo.train.distill import check_teacher
from pneumo.train.loop import Targets, make_ema, make_optimizer, mix_batch, target_loss
from pneumo.train.run import train


def _batch(n: int = 6, size: int = 40) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(3))


def test_blur_matches_torchvision_per_image_and_sigma_zero_is_identity() -> None:
    x = _batch()
    sigma = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 0.8])
    out = gaussian_blur(x, sigma)
    radius = 6  # 3 x the largest sigma
    assert torch.allclose(out[0], x[0], atol=1e-6)
    for i in range(1, len(x)):
        expected = TF.gaussian_blur(x[i:i + 1], kernel_size=[2 * radius + 1] * 2, sigma=[float(sigma[i])] * 2)
        assert torch.allclose(out[i:i + 1], expected, atol=1e-5), i
    assert out[4].std() < out[1].std() < x[1].std()  # more blur, less pixel-level variation


def test_blur_and_noise_in_augment_are_bounded_reproducible_and_off_by_default() -> None:
    x = _batch(8)
    still = AugmentConfig(rotate_deg=0, scale=0, translate=0, brightness=0, contrast=0, gamma=0)
    assert torch.allclose(augment(x, still, torch.Generator().manual_seed(0)), x, atol=1e-5)
    noisy = AugmentConfig(rotate_deg=0, scale=0, translate=0, brightness=0, contrast=0, gamma=0, noise=0.1)
    a = augment(x, noisy, torch.Generator().manual_seed(0))
    assert torch.equal(a, augment(x, noisy, torch.Generator().manual_seed(0)))
    assert 0.0 <= a.min() and a.max() <= 1.0 and not torch.allclose(a, x, atol=1e-3)
    assert (a - x).std() < 0.1
    blurred = augment(x, AugmentConfig(rotate_deg=0, scale=0, translate=0, brightness=0, contrast=0, gamma=0,
                                       blur=2.0), torch.Generator().manual_seed(0))
    assert blurred.diff(dim=3).abs().mean() < x.diff(dim=3).abs().mean()


def test_mixup_blends_pairs_of_the_batch_and_alpha_zero_is_off() -> None:
    x, y = _batch(), torch.tensor([0, 1, 1, 0, 1, 0])
    same, targets = mix_batch(x, y, None, 0.0, torch.Generator().manual_seed(0), 7)
    assert same is x and targets.y_mix is None and targets.lam == 1.0
    mixed, t = mix_batch(x, y, None, 0.4, torch.Generator().manual_seed(0), 7)
    assert 0.0 < t.lam < 1.0
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mixed, t.lam * x + (1 - t.lam) * x[perm]) and torch.equal(t.y_mix, y[perm])
    assert mix_batch(x, y, None, 0.4, torch.Generator().manual_seed(0), 7)[1].lam == t.lam  # seeded


def test_target_loss_mixes_the_label_terms_and_adds_the_distillation_term() -> None:
    logits = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    y, y_mix = torch.tensor([0, 1, 1, 0, 1, 0]), torch.tensor([1, 1, 0, 0, 0, 1])
    ce = nn.CrossEntropyLoss(weight=torch.tensor([2.0, 1.0]))
    assert torch.allclose(target_loss(logits, Targets(y), ce), ce(logits, y))
    mixed = target_loss(logits, Targets(y, y_mix=y_mix, lam=0.3), ce)
    assert torch.allclose(mixed, 0.3 * ce(logits, y) + 0.7 * ce(logits, y_mix))
    own = torch.softmax(logits / 2.0, 1)  # a teacher that agrees with the student: KL 0
    assert torch.allclose(target_loss(logits, Targets(y, soft=own), ce, distill_weight=0.5, temperature=2.0),
                          0.5 * ce(logits, y), atol=1e-6)
    other = torch.softmax(-logits / 2.0, 1)
    assert target_loss(logits, Targets(y, soft=other), ce, distill_weight=1.0, temperature=2.0) > 0.01


def test_ema_weights_survive_a_state_round_trip_and_a_state_without_them_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create("scratch_cnn", num_classes=2, weights="none")
    cfg = load_config("scratch-cnn", ["train.ema=0.9"]).train
    optimizer, scheduler = make_optimizer(model, cfg, 4)
    ema = make_ema(model, cfg.ema)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    ema.update(model, step=20)
    save_train_state(tmp_path / "last", model, optimizer, scheduler, {"epoch": 1}, ema)
    fresh = create("scratch_cnn", num_classes=2, weights="none")
    fresh_ema = make_ema(fresh, cfg.ema)
    load_train_state(tmp_path / "last", fresh, *make_optimizer(fresh, cfg, 4), fresh_ema)
    for a, b in zip(ema.state_dict().values(), fresh_ema.state_dict().values()):
        assert torch.equal(a, b)
    save_train_state(tmp_path / "plain", model, optimizer, scheduler, {})
    with pytest.raises(ModelError, match="no EMA weights"):
        load_train_state(tmp_path / "plain", fresh, *make_optimizer(fresh, cfg, 4), fresh_ema)


def tiny(data: Path, tmp: Path, name: str, *overrides: str):
    base = [f"data.root={data}", f"out_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'cache'}", "data.image_size=64",
            "data.val_fraction=0.3", "train.batch_size=8", "train.amp=false", "model.name=scratch_cnn",
            "model.mode=scratch", "model.weights=none", "train.epochs=1", "train.lr=0.003", f"name={name}"]
    return load_config("scratch-cnn", base + list(overrides))


def test_an_ema_run_saves_the_averaged_weights_as_its_model(data_slice: Path, tmp_path: Path) -> None:
    run = train(tiny(data_slice, tmp_path, "ema", "train.ema=0.99"))
    best, state = load_file(run / "model.safetensors"), load_file(run / "last.safetensors")
    emas = {k.removeprefix("ema.module."): v for k, v in state.items() if k.startswith("ema.module.")}
    raw = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    assert emas and set(emas) == set(raw)
    floats = [k for k in best if best[k].is_floating_point() and k in emas]
    assert all(torch.equal(best[k], emas[k].to(best[k].dtype)) for k in floats)  # 1 epoch: best = last = EMA
    assert any(not torch.equal(best[k], raw[k].to(best[k].dtype)) for k in floats)


def test_distillation_trains_from_same_split_teachers_and_refuses_others(data_slice: Path, tmp_path: Path) -> None:
    teachers = [train(tiny(data_slice, tmp_path, f"t{i}", f"train.seed={i}")) for i in range(2)]
    student = train(tiny(data_slice, tmp_path, "student", f"train.teachers={teachers[0]},{teachers[1]}",
                         "train.distill_weight=0.7"))
    meta = json.loads((student / "model.json").read_text())
    assert meta["config"]["train"]["teachers"] == [str(t) for t in teachers]
    assert len(pd.read_csv(student / "metrics.csv")) == 1
    other_split = tiny(data_slice, tmp_path, "s", f"train.teachers={teachers[0]}", "data.split_seed=5")
    with pytest.raises(ConfigError, match="another train fold|another val fold"):
        train(other_split)
    other_pixels = tiny(data_slice, tmp_path, "p", f"train.teachers={teachers[0]}", "data.intensity=clahe")
    folds = pd.read_csv(teachers[0] / "folds.csv")
    with pytest.raises(ConfigError, match="same pixels"):
        check_teacher(teachers[0], other_pixels, folds, meta["config"])


@pytest.mark.parametrize(("override", "message"), [
    ("train.ema=1.0", "train.ema"), ("train.mixup=-1", "train.mixup"), ("train.augment.blur=20", "blur"),
    ("train.augment.noise=0.9", "noise"), ("train.teachers=/nonexistent/run", "not a trained run folder"),
    ("train.distill_weight=2", "distill_weight"),
])
def test_bad_values_fail_with_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("default", [override])
