"""The training loop, read top to bottom: one function per step, no callbacks, no hidden state."""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from pneumo.config import RunConfig, TrainConfig
from pneumo.train.augment import augment

log = logging.getLogger(__name__)


@dataclass
class SplitTensors:
    """uint8 images (N, 1, S, S) and int64 labels of the train and val folds."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool):  # noqa: ANN201
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, *, batch_size: int = 64, device: torch.device | None = None,
                   amp: bool = True, progress: str | None = None) -> np.ndarray:
    """Logits (N, C) as float32 numpy for uint8 images (N, 1, S, S)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=progress, disable=progress is None, unit="batch"):
        x = images[start : start + batch_size].to(device, non_blocking=True).float().div_(255)
        with autocast(device, amp):
            out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def val_auc(logits: np.ndarray, y: np.ndarray) -> float:
    """Binary: ROC-AUC of P(pneumonia); 3-class: macro one-vs-rest ROC-AUC."""
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    if len(np.unique(y)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    return float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=list(range(probs.shape[1]))))


class FocalLoss(nn.Module):
    def __init__(self, weight: torch.Tensor | None, gamma: float = 2.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.gamma, self.label_smoothing = gamma, label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        pt = torch.exp(-F.cross_entropy(logits, target, reduction="none"))
        loss = (1 - pt) ** self.gamma * ce
        if self.weight is not None:
            loss = loss * self.weight[target]
            return loss.sum() / self.weight[target].sum()
        return loss.mean()


def make_loss(cfg: TrainConfig, y_train: torch.Tensor, num_classes: int) -> nn.Module:
    counts = torch.bincount(y_train, minlength=num_classes).float().clamp_min(1)
    weight = (counts.sum() / (num_classes * counts)) if cfg.balance == "weights" else None
    if cfg.loss == "focal":
        return FocalLoss(weight, label_smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):  # noqa: ANN201
    """AdamW (no weight decay on norms/biases) with linear warm-up then cosine decay, stepped per batch."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, int(cfg.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_order(n: int, y: torch.Tensor, cfg: TrainConfig, epoch: int) -> torch.Tensor:
    """The sample order of one epoch, a pure function of (seed, epoch) so a resumed run repeats it exactly."""
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    if cfg.balance == "sampler":
        counts = torch.bincount(y).float()
        weights = (1.0 / counts)[y]
        return torch.multinomial(weights, n, replacement=True, generator=g)
    return torch.randperm(n, generator=g)


def steps_per_epoch(n: int, cfg: TrainConfig) -> int:
    steps = n // cfg.batch_size if n >= cfg.batch_size else 1
    return min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps


def train_one_epoch(model: nn.Module, data: SplitTensors, *, optimizer, scheduler, loss_fn: nn.Module,  # noqa: ANN001
                    cfg: TrainConfig, epoch: int, device: torch.device) -> float:
    model.train()
    order = epoch_order(len(data.y_train), data.y_train, cfg, epoch)
    n_steps = steps_per_epoch(len(order), cfg)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + epoch)
    memory_format = torch.channels_last if (cfg.channels_last and device.type == "cuda") else torch.contiguous_format
    total, bar = 0.0, tqdm(range(n_steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
    for step in bar:
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x = data.x_train[idx].to(device, non_blocking=True).float().div_(255)
        y = data.y_train[idx].to(device, non_blocking=True)
        x = augment(x, cfg.augment, aug_gen).contiguous(memory_format=memory_format)
        with autocast(device, cfg.amp):
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item()
        bar.set_postfix(loss=f"{total / (step + 1):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    return total / max(1, n_steps)


def append_metrics(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def fit(model: nn.Module, data: SplitTensors, cfg: RunConfig, run_dir: Path, *, device: torch.device,
        save_best, save_state, load_state) -> dict:  # noqa: ANN001
    """Train with early stopping on val ROC-AUC; the best weights go through ``save_best(model, info)``, the resumable
    state through ``save_state(model, optimizer, scheduler, info)`` after every epoch."""
    tc = cfg.train
    loss_fn = make_loss(tc, data.y_train, model.num_classes).to(device)
    optimizer, scheduler = make_optimizer(model, tc, steps_per_epoch(len(data.y_train), tc))
    state = load_state(model, optimizer, scheduler) or {"epoch": 0, "best_auc": -1.0, "best_epoch": -1, "bad_epochs": 0}
    writer = _tensorboard(run_dir)
    for epoch in range(state["epoch"], tc.epochs):
        start = time.perf_counter()
        train_loss = train_one_epoch(model, data, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn, cfg=tc,
                                     epoch=epoch, device=device)
        logits = predict_logits(model, data.x_val, batch_size=2 * tc.batch_size, device=device, amp=tc.amp)
        val_loss = float(F.cross_entropy(torch.from_numpy(logits), data.y_val).item())
        auc = val_auc(logits, data.y_val.numpy())
        improved = auc > state["best_auc"]
        state.update(epoch=epoch + 1, bad_epochs=0 if improved else state["bad_epochs"] + 1)
        if improved:
            state.update(best_auc=auc, best_epoch=epoch + 1)
            save_best(model, {"epoch": epoch + 1, "val_auc": auc})
        row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "val_loss": round(val_loss, 5),
               "val_auc": round(auc, 5), "lr": scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - start, 1)}
        append_metrics(run_dir / "metrics.csv", row)
        if writer:
            for k in ("train_loss", "val_loss", "val_auc", "lr"):
                writer.add_scalar(k, row[k], epoch + 1)
        log.info("epoch %d: train loss %.4f, val loss %.4f, val AUC %.4f%s", epoch + 1, train_loss, val_loss, auc,
                 " (best)" if improved else "")
        save_state(model, optimizer, scheduler, state)
        if state["bad_epochs"] >= tc.patience:
            log.info("early stop: val AUC did not improve for %d epochs", tc.patience)
            break
    if writer:
        writer.close()
    return state


def _tensorboard(run_dir: Path):  # noqa: ANN202
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
