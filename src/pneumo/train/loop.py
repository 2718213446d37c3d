"""The training loop, read top to bottom: one function per step, no callbacks, no hidden state.

Resumable at any step. The sample order of an epoch is a pure function of (seed, epoch); each step's augmentation
generator is seeded from (seed, epoch, step) and the global torch RNG (dropout) from (seed,
epoch, step, rank). A state saved after step k of epoch e -- by `fit` after every epoch, every
``train.checkpoint_every_steps`` steps and on Ctrl-C / SIGTERM -- therefore resumes into exactly the steps an
uninterrupted run takes. Under DDP (`pneumo.train.distributed`) every rank walks the same global batches and trains on
its shard of each.
"""

from __future__ import annotations

import csv
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm

from pneumo import atomic
from pneumo.config import RunConfig, TrainConfig
from pneumo.data.preprocess import to_unit
from pneumo.errors import ConfigError
from pneumo.models.runtime import autocast, memory_format, predict_logits
from pneumo.train.augment import augment
from pneumo.train.distributed import ONE_PROCESS, DistEnv, any_rank, broadcast, shard, sum_across, wrap_model

log = logging.getLogger(__name__)


@dataclass
class SplitTensors:
    """uint8 images (N, 1, S, S) and int64 labels of the train and val folds."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@dataclass
class Targets:
    """What one batch is scored against: the labels, and under DDP this rank's share of the global batch (its
    sample weight on this rank's shard vs the whole batch, times the world size), so that the ranks' averaged
    gradient is the global batch's."""

    y: torch.Tensor
    scale: float = 1.0

    def to(self, device: torch.device) -> Targets:
        return replace(self, y=self.y.to(device, non_blocking=True))

    def shard(self, rank: int, world_size: int, class_weight: torch.Tensor | None) -> Targets:
        """This rank's part of the batch, rescaled by the rank's share of its (class-weighted) total."""
        mine = shard(self.y, rank, world_size)
        return Targets(mine, scale=world_size * _batch_weight(mine, class_weight) / _batch_weight(self.y, class_weight))


def val_auc(logits: np.ndarray, y: np.ndarray) -> float:
    """Binary: ROC-AUC of P(pneumonia); 3-class: macro one-vs-rest ROC-AUC."""
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()  # (not `models.scores.softmax`: saturated scores tie
    # differently in another float32 softmax, and the best epoch, chosen by 1e-4 of this AUC, must not move)
    if len(np.unique(y)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    return float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=list(range(probs.shape[1]))))


class FocalLoss(nn.Module):
    def __init__(self, weight: torch.Tensor | None, gamma: float = 2.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, reduction="none")
        pt = torch.exp(-ce)
        loss = (1 - pt) ** self.gamma * ce
        if self.weight is not None:
            loss = loss * self.weight[target]
            return loss.sum() / self.weight[target].sum()
        return loss.mean()


def balanced_weights(counts: torch.Tensor) -> torch.Tensor:
    """Class weights that give every class the same total weight: n / (classes * n_c), for (expected) counts n_c."""
    counts = counts.float().clamp_min(1)
    return counts.sum() / (len(counts) * counts)


def make_loss(cfg: TrainConfig, y_train: torch.Tensor, num_classes: int) -> nn.Module:
    weight = balanced_weights(torch.bincount(y_train, minlength=num_classes)) if cfg.balance == "weights" else None
    return FocalLoss(weight) if cfg.loss == "focal" else nn.CrossEntropyLoss(weight=weight)


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
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


def step_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from small integers such as (seed, epoch, step, stream)."""
    state = np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def train_step(model: nn.Module, x: torch.Tensor, targets: Targets, *, optimizer, scheduler,
               loss_fn: nn.Module, device: torch.device, amp: bool) -> float:
    """One optimizer and scheduler step on a float batch; returns the loss (under DDP rescaled by this rank's share,
    `Targets.shard`)."""
    with autocast(device, amp):
        logits = model(x).float()
    loss = loss_fn(logits, targets.y) * targets.scale
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.item()


def _batch_weight(y: torch.Tensor, class_weight: torch.Tensor | None) -> float:
    return float(class_weight[y].sum()) if class_weight is not None else float(len(y))


def run_epoch(model: nn.Module, data: SplitTensors, *, optimizer, scheduler, loss_fn: nn.Module,
              cfg: TrainConfig, epoch: int, device: torch.device, start_step: int = 0,
              env: DistEnv = ONE_PROCESS) -> Iterator[tuple[int, float]]:
    """Train one epoch from ``start_step``; yields (steps done in the epoch, this rank's loss) after every step.

    Under DDP each rank trains on its `shard` of the global batch with its loss rescaled by its share of the
    batch's sample weight (`Targets.shard`), so the averaged gradient is the global batch's.
    """
    model.train()
    order = epoch_order(len(data.y_train), data.y_train, cfg, epoch)
    n_steps = steps_per_epoch(len(order), cfg)
    aug_gen = torch.Generator(device=device)
    class_weight = getattr(loss_fn, "weight", None)
    class_weight = class_weight.cpu() if class_weight is not None else None
    fmt = memory_format(device)
    total, bar = 0.0, tqdm(range(start_step, n_steps), initial=start_step, total=n_steps, unit="batch", leave=False,
                           desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not env.is_main)
    for step in bar:
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x = to_unit(data.x_train[idx].to(device, non_blocking=True))
        x = augment(x, cfg.augment, aug_gen.manual_seed(step_seed(cfg.seed, epoch, step, 0)))
        targets = Targets(data.y_train[idx])
        if env.enabled:
            x, targets = shard(x, env.rank, env.world_size), targets.shard(env.rank, env.world_size, class_weight)
        torch.manual_seed(step_seed(cfg.seed, epoch, step, 1 + env.rank))  # dropout masks
        loss = train_step(model, x.contiguous(memory_format=fmt), targets.to(device),
                          optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn, device=device, amp=cfg.amp)
        total += loss
        bar.set_postfix(loss=f"{total / (step + 1 - start_step):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        yield step + 1, loss


def append_metrics(path: Path, row: dict) -> None:
    """Append a row (the file is rewritten atomically; a file with other columns gets the union of both)."""
    fields, rows = _read_csv(path) if path.exists() else ([], [])
    _write_csv(path, fields + [k for k in row if k not in fields], [*rows, row])


def trim_metrics(path: Path, last_epoch: int) -> None:
    """Drop rows of epochs after ``last_epoch``: a resumed run redoes them, so they must not appear twice."""
    if not path.is_file():
        return
    fields, rows = _read_csv(path)
    keep = [row for row in rows if float(row.get("epoch") or 0) <= last_epoch]
    if len(keep) < len(rows):
        _write_csv(path, fields, keep)


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with atomic.writing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


class GracefulStop:
    """While active, a first SIGINT (Ctrl-C) or SIGTERM only sets ``requested``: the loop finishes its step, saves
    a resumable state and raises ``KeyboardInterrupt``. A second signal interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> Self:
        self.requested, self._previous = False, {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class LoopState:
    """The loop's counters: ``epoch`` epochs done, then ``step`` steps (summing to ``loss_sum``) of the next one.
    Saved with every resumable state (``asdict``), read back by `LoopState.resumed`."""

    steps_per_epoch: int
    batch_size: int
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    best_auc: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    elapsed_s: float = 0.0  # seconds in `fit` of the run's earlier sessions (a resumed run's time counts them too)

    @classmethod
    def resumed(cls, saved: dict, cfg: TrainConfig, n_steps: int) -> LoopState:
        """Counters of a saved state (older states lack the step fields; unknown keys are ignored); refuses a
        mid-epoch resume whose batches would differ from the interrupted run's."""
        known = {f.name for f in fields(cls)}
        state = cls(n_steps, cfg.batch_size, global_step=int(saved.get("epoch", 0)) * n_steps)
        state = replace(state, **{k: v for k, v in saved.items() if k in known})
        if state.step and (state.steps_per_epoch != n_steps or state.batch_size != cfg.batch_size):
            raise ConfigError(f"the saved state stopped mid-epoch with batch_size {state.batch_size} and "
                              f"{state.steps_per_epoch} steps per epoch; resume with the same train.batch_size, "
                              "train.max_steps_per_epoch and data")
        return replace(state, steps_per_epoch=n_steps, batch_size=cfg.batch_size)


def fit(model: nn.Module, data: SplitTensors, cfg: RunConfig, run_dir: Path, *, device: torch.device,
        save_best, save_state, load_state, env: DistEnv = ONE_PROCESS) -> LoopState:
    """Train with early stopping on val ROC-AUC; the best weights go through ``save_best(model, info)``, the resumable
    state through ``save_state(model, optimizer, scheduler, info)`` after every epoch, every
    ``train.checkpoint_every_steps`` steps and on Ctrl-C / SIGTERM (then ``KeyboardInterrupt`` is raised);
    ``load_state(model, optimizer, scheduler)`` restores one.

    Under DDP (``env.enabled``) the model is wrapped here; rank 0 alone evaluates, logs and saves.
    """
    tc = cfg.train
    if tc.batch_size < env.world_size:
        raise ConfigError(f"train.batch_size {tc.batch_size} is the global batch: it must be at least the number of "
                          f"processes ({env.world_size})")
    n_steps = steps_per_epoch(len(data.y_train), tc)
    loss_fn = make_loss(tc, data.y_train, model.num_classes).to(device)
    optimizer, scheduler = make_optimizer(model, tc, n_steps)
    saved = load_state(model, optimizer, scheduler)
    state = LoopState.resumed(saved, tc, n_steps) if saved else LoopState(n_steps, tc.batch_size)
    session_start, earlier_s = time.perf_counter(), state.elapsed_s

    def save(info: dict) -> None:  # the state on disk counts this session's seconds too
        elapsed = round(earlier_s + time.perf_counter() - session_start, 1)
        save_state(model, optimizer, scheduler, {**info, "elapsed_s": elapsed})
    if saved:
        log.info("resuming at epoch %d, step %d (global step %d)", state.epoch + 1, state.step, state.global_step)
        if env.is_main:
            trim_metrics(run_dir / "metrics.csv", state.epoch)
    net = wrap_model(model, env, device)
    writer = _tensorboard(run_dir, purge_step=state.epoch + 1) if env.is_main else None
    try:
        with GracefulStop() as stop:
            for epoch in range(state.epoch, tc.epochs):
                if state.bad_epochs >= tc.patience:  # a resumed run that had stopped early: it stays stopped
                    break
                start = time.perf_counter()
                first_step = state.step
                train_loss = _train_epoch(net, model, data, state, optimizer=optimizer, scheduler=scheduler,
                                          loss_fn=loss_fn, cfg=tc, device=device, env=env, stop=stop,
                                          save_state=save)
                images_per_s = (n_steps - first_step) * tc.batch_size / max(time.perf_counter() - start, 1e-9)
                state.epoch, state.step, state.loss_sum = epoch + 1, 0, 0.0
                if env.is_main:
                    _end_epoch(model, data, state, tc, run_dir, device=device,
                               scheduler=scheduler, train_loss=train_loss, start=start, writer=writer,
                               save_best=save_best, images_per_s=images_per_s)
                    save(asdict(state))
                state = LoopState(**broadcast(asdict(state), env))
                if any_rank(stop.requested, env, device):
                    raise KeyboardInterrupt
                if state.bad_epochs >= tc.patience:
                    log.info("early stop: val AUC did not improve for %d epochs", tc.patience)
                    break
    finally:
        if writer:
            writer.close()
    return state


def _train_epoch(net: nn.Module, model: nn.Module, data: SplitTensors, state: LoopState, *, optimizer, scheduler,
                 loss_fn: nn.Module, cfg: TrainConfig, device: torch.device, env: DistEnv, stop: GracefulStop,
                 save_state) -> float:
    """The rest of epoch ``state.epoch`` from step ``state.step``, saving a state every
    ``checkpoint_every_steps`` steps and when a stop was requested (then raises ``KeyboardInterrupt``)."""
    every = int(getattr(cfg, "checkpoint_every_steps", 0) or 0)
    base, local = state.loss_sum, 0.0
    steps = run_epoch(net, data, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn, cfg=cfg,
                      epoch=state.epoch, device=device, start_step=state.step, env=env)
    for step, loss in steps:
        local += loss
        state.global_step += 1
        interrupted = any_rank(stop.requested, env, device)
        periodic = every > 0 and state.global_step % every == 0 and step < state.steps_per_epoch
        if interrupted or periodic:  # (the epoch's last step is followed by the end-of-epoch save anyway)
            state.step, state.loss_sum = step, base + sum_across(local, env, device) / env.world_size
            if env.is_main:
                save_state(asdict(state))
        if interrupted:
            if env.is_main:
                log.warning("stopped at epoch %d, step %d: resumable state saved", state.epoch + 1, step)
            raise KeyboardInterrupt
    return (base + sum_across(local, env, device) / env.world_size) / max(1, state.steps_per_epoch)


def _end_epoch(model: nn.Module, data: SplitTensors, state: LoopState, tc: TrainConfig, run_dir: Path, *,
               device: torch.device, scheduler, train_loss: float, start: float, images_per_s: float,
               writer, save_best) -> None:
    """Validate, keep the best weights, log the epoch's row (rank 0 only)."""
    epoch = state.epoch
    logits = predict_logits(model, data.x_val, batch_size=2 * tc.batch_size, device=device, amp=tc.amp)
    val_loss = float(F.cross_entropy(torch.from_numpy(logits), data.y_val).item())
    auc = val_auc(logits, data.y_val.numpy())
    improved = auc > state.best_auc
    state.bad_epochs = 0 if improved else state.bad_epochs + 1
    if improved:
        state.best_auc, state.best_epoch = auc, epoch
        save_best(model, {"epoch": epoch, "val_auc": auc, "global_step": state.global_step})
    row = {"epoch": epoch, "global_step": state.global_step, "train_loss": round(train_loss, 5),
           "val_loss": round(val_loss, 5), "val_auc": round(auc, 5), "lr": scheduler.get_last_lr()[0],
           "images_per_s": round(images_per_s, 1), "seconds": round(time.perf_counter() - start, 1)}
    append_metrics(run_dir / "metrics.csv", row)
    if writer:
        for k in ("train_loss", "val_loss", "val_auc", "lr"):
            writer.add_scalar(k, row[k], epoch)
    log.info("epoch %d: train loss %.4f, val loss %.4f, val %s %.4f%s", epoch, train_loss, val_loss,
             "AUC" if logits.shape[1] == 2 else "macro one-vs-rest AUC", auc, " (best)" if improved else "")


def _tensorboard(run_dir: Path, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)
