"""Frozen-feature probe: backbone features computed once (cached on disk), a logistic-regression head fitted on the
train fold with its regularisation chosen on the val fold, then folded into the model's linear head."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from tqdm import tqdm

from pneumo.data.cache import kept_array
from pneumo.data.preprocess import to_unit
from pneumo.models.fast import fast_inference
from pneumo.models.runtime import autocast
from pneumo.train.loop import val_auc

log = logging.getLogger(__name__)
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def model_digest(model: nn.Module) -> str:
    """Identity of the frozen backbone: its architecture, every byte of every tensor but the head's (it does not change
    the features) and the model code (`provenance.model_code`). (A cache review: the first 4 KB of each tensor and no
    architecture gave two backbones one digest, and one got the other's features.)"""
    from pneumo.provenance import model_code

    h = hashlib.sha256(f"{getattr(model, 'arch', type(model).__name__)}|{model_code()}".encode())
    for name, tensor in model.state_dict().items():
        if name.startswith("head."):
            continue
        h.update(name.encode())
        h.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def features_in_bf16(device: torch.device, amp: bool) -> bool:
    """Whether `extract_features` runs under bf16 autocast: on CUDA only; on the CPU it runs the folded fp32 copy,
    as predict does."""
    return amp and device.type == "cuda"


def feature_extractor(model: nn.Module, *, device: torch.device, amp: bool = True, batch_size: int = 64
                      ) -> Callable[..., np.ndarray]:
    """``extract_features`` for several image sets of one model whose weights do not change in between: the model
    is folded for the fast CPU path once rather than once per set. Call it as ``extract(images, desc)``."""
    model.eval()
    run: Callable[[torch.Tensor], torch.Tensor] | None = None

    @torch.no_grad()
    def extract(images: np.ndarray | torch.Tensor, desc: str = "features") -> np.ndarray:
        nonlocal run

        def batch(start: int) -> torch.Tensor:
            chunk = torch.from_numpy(np.array(images[start : start + batch_size]))
            return to_unit((chunk if chunk.ndim == 4 else chunk[:, None]).to(device))

        if run is None:
            run = fast_inference(model, batch(0)[:2], features=True)
        out = []
        for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=None):
            with autocast(device, features_in_bf16(device, amp)):
                out.append(run(batch(start)).float().cpu())
        return torch.cat(out).numpy()

    return extract


def extract_features(model: nn.Module, images: np.ndarray | torch.Tensor, *, batch_size: int = 64,
                     device: torch.device, amp: bool = True, desc: str = "features") -> np.ndarray:
    """Pooled backbone features (N, F) for uint8 images (N, S, S) or (N, 1, S, S)."""
    return feature_extractor(model, device=device, amp=amp, batch_size=batch_size)(images, desc)


def cached_features(model: nn.Module, images: np.ndarray, *, cache_key: str, cache_dir: Path,
                    device: torch.device, amp: bool, batch_size: int = 64) -> np.ndarray:
    """Features of every cached image, stored next to the image cache under (image cache key, model digest,
    precision: bf16 features, on CUDA, are kept apart from fp32 ones)."""
    precision = "-bf16" if features_in_bf16(device, amp) else ""
    return kept_array(cache_dir / f"features-{cache_key}-{model_digest(model)}{precision}.npy",
                      lambda: extract_features(model, images, batch_size=batch_size, device=device, amp=amp),
                      (len(images), model.num_features))


def fit_probe(f_train: np.ndarray, y_train: np.ndarray, f_val: np.ndarray, y_val: np.ndarray, *,
              balanced: bool, seed: int, c_grid: tuple[float, ...] = C_GRID) -> tuple[LogisticRegression, dict]:
    """Logistic regression on standardised features; C picked by val ROC-AUC (never by test)."""
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    z_train, z_val = (f_train - mean) / std, (f_val - mean) / std
    best, scores = None, {}
    for c in c_grid:
        clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced" if balanced else None, random_state=seed)
        clf.fit(z_train, y_train)
        logits = _as_logits(clf, z_val)
        scores[c] = val_auc(logits, y_val)
        if best is None or scores[c] > scores[best[0]]:
            best = (c, clf)
    log.info("probe: val AUC (%s) by C %s -> C=%s", "pneumonia vs normal" if logits.shape[1] == 2 else
             "macro one-vs-rest over the classes", {k: round(v, 4) for k, v in scores.items()}, best[0])
    clf = best[1]
    clf.feature_mean_, clf.feature_std_ = mean, std
    return clf, {"C": best[0], "val_auc_by_C": scores}


def _as_logits(clf: LogisticRegression, z: np.ndarray) -> np.ndarray:
    scores = clf.decision_function(z)
    return np.stack([np.zeros_like(scores), scores], 1) if scores.ndim == 1 else scores


def load_probe_into_head(head: nn.Linear, clf: LogisticRegression) -> None:
    """Fold standardisation + logistic regression into ``head`` so the model's logits equal the probe's."""
    coef, intercept = np.atleast_2d(clf.coef_), np.atleast_1d(clf.intercept_)
    w = coef / clf.feature_std_
    b = intercept - (coef * clf.feature_mean_ / clf.feature_std_).sum(1)
    if coef.shape[0] == 1:  # binary: logits (0, s) give the same softmax as sigmoid(s)
        w = np.concatenate([np.zeros_like(w), w])
        b = np.concatenate([np.zeros_like(b), b])
    if tuple(head.weight.shape) != w.shape:
        raise ValueError(f"head shape {tuple(head.weight.shape)} does not fit the probe's {w.shape}")
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w).float())
        head.bias.copy_(torch.from_numpy(b).float())
