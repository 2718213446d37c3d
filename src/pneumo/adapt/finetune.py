"""Fine-tune a trained model on a new site's labelled images, with rehearsal of the source training data.

What was measured to work (issue 22; BENCHMARKS.md "Site adaptation"): every layer trained, BatchNorm running
statistics kept as the source model has them (re-estimating them on the new site made things worse), AdamW with a
cosine schedule, `AugmentConfig`'s mild defaults plus horizontal flips (a fixed part of the recipe, not the model's own
training augmentation: adapting the acquisition-augmented default with its strong augmentation lost 0.13 held-out AUC
on `nih_sample` at 200 images, BENCHMARKS.md "Second round"), a class-weighted loss, bf16 where the device has it.
Rehearsal: every epoch mixes in a fresh random draw of source training images (``rehearsal`` of them per site
image), so the model does not forget the hospital it was trained at.
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch
from torch import nn

from pneumo.config import AdaptConfig, AugmentConfig
from pneumo.data.preprocess import to_unit
from pneumo.models.runtime import autocast, depthwise_in_fp32, memory_format
from pneumo.train.augment import augment
from pneumo.train.loop import balanced_weights, step_seed

log = logging.getLogger(__name__)


def _keep_batchnorm_statistics(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def rehearsal_count(cfg: AdaptConfig, n_site: int, n_pool: int) -> int:
    """Source images drawn into each epoch of a fine-tune on ``n_site`` site images: ``rehearsal`` per site image, at
    least ``rehearsal_min``, at most the pool."""
    return min(n_pool, max(round(cfg.rehearsal * n_site), cfg.rehearsal_min))


def epoch_class_weights(site_y: np.ndarray, pool_y: np.ndarray | None, n_source: int, num_classes: int) -> torch.Tensor:
    """The loss's class weights (`balanced_weights`) for the class mix every epoch trains on: the site's images and
    ``n_source`` images drawn from the rehearsal pool, in expectation the pool's mix. (Weights from the site and the
    whole pool counted the pool ``len(pool) / n_source`` times over: at 200 site images NORMAL was over-weighted by
    about 1.3x.)"""
    counts = np.bincount(np.asarray(site_y, dtype=np.int64), minlength=num_classes).astype(np.float64)
    if n_source and pool_y is not None and len(pool_y):
        counts += n_source * np.bincount(np.asarray(pool_y, dtype=np.int64), minlength=num_classes) / len(pool_y)
    return balanced_weights(torch.from_numpy(counts))


def finetune(model: nn.Module, site_x: np.ndarray, site_y: np.ndarray, *, cfg: AdaptConfig,
             source_x: np.ndarray | None = None, source_y: np.ndarray | None = None,
             augment_cfg: AugmentConfig | None = None, device: torch.device, seed: int = 0) -> nn.Module:
    """A fine-tuned copy of ``model`` (the argument is not changed).

    Args:
        model: a `PneumoNet` (eval mode, any device).
        site_x: uint8 images (N, S, S) of the new site, preprocessed as the model expects.
        site_y: their class indices.
        cfg: the recipe.
        source_x, source_y: the rehearsal pool (uint8 (M, S, S) and class indices); None or empty: no rehearsal.
        augment_cfg: the augmentation (default: the recipe's, `AugmentConfig()`); flips are added.
        device: where to train.
        seed: seeds the epoch order, the rehearsal draws and the augmentation.
    """
    model = copy.deepcopy(model).to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    fmt = memory_format(device)
    model = model.to(memory_format=fmt)
    if cfg.amp:  # the CPU's slow bf16 backward of strided / wide depthwise convolutions runs in fp32 instead
        depthwise_in_fp32(model, device, cfg.amp)
    aug = (augment_cfg or AugmentConfig()).model_copy(update={"hflip": True})
    n_site = len(site_x)
    use_source = source_x is not None and len(source_x) > 0 and cfg.rehearsal > 0
    n_source = rehearsal_count(cfg, n_site, len(source_x)) if use_source else 0
    num_classes = int(model.head.out_features)
    loss_fn = nn.CrossEntropyLoss(weight=epoch_class_weights(site_y, source_y if use_source else None, n_source,
                                                             num_classes)).to(device)
    steps_per_epoch = max(1, math.ceil((n_site + n_source) / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    warmup = max(1, total // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) /
                                                                                        max(1, total - warmup))))
    generator = torch.Generator(device=device)
    for epoch in range(cfg.epochs):
        rng = np.random.default_rng([seed, epoch])
        x_epoch, y_epoch = site_x, np.asarray(site_y)
        if n_source:
            pick = np.sort(rng.choice(len(source_x), n_source, replace=False))
            x_epoch = np.concatenate([site_x, np.asarray(source_x[pick])])
            y_epoch = np.concatenate([y_epoch, np.asarray(source_y)[pick]])
        order = rng.permutation(len(x_epoch))
        model.train()
        _keep_batchnorm_statistics(model)
        for step in range(steps_per_epoch):
            idx = np.sort(order[step * cfg.batch_size:(step + 1) * cfg.batch_size])
            if len(idx) < 2:  # a lone image in a last batch adds noise, not signal
                continue
            x = to_unit(torch.from_numpy(np.ascontiguousarray(x_epoch[idx]))[:, None].to(device))
            x = augment(x, aug, generator.manual_seed(step_seed(seed, epoch, step)))
            y = torch.from_numpy(y_epoch[idx].astype(np.int64)).to(device)
            with autocast(device, cfg.amp):
                logits = model(x.contiguous(memory_format=fmt)).float()
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        log.debug("adapt epoch %d/%d: last loss %.4f", epoch + 1, cfg.epochs, loss.item())
    model.eval()
    return model.to(memory_format=torch.contiguous_format)
