"""`train(cfg)`: data -> model -> probe or training loop -> best checkpoint in runs/<name>/ (evaluation follows).

Run folder: ``config.yaml``, ``folds.csv``, ``metrics.csv`` (per epoch; not for a probe), ``model.*`` (best weights), ``last.*`` (the newest
resumable state) and ``last-prev.*`` (hard links to the state before it, so a crash while ``last.*`` is being
replaced never leaves the run without a complete state). Launched by ``torchrun``, the same function runs DDP
(see `pneumo.train.distributed`): rank 0 prepares the folder, builds the cache, fits a probe, evaluates and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pneumo import atomic
from pneumo.config import RunConfig, dump_yaml, load_config, to_dict
from pneumo.data.cache import ImageCache, default_cache_dir, image_cache
from pneumo.data.manifest import resolve_root
from pneumo.data.rundir import RunDir, read_folds
from pneumo.data.rundir import run_lock as folder_lock
from pneumo.data.splits import class_names, folds_for, labels, split_changes
from pneumo.errors import ConfigError, DataError, ModelError
from pneumo.models import create
from pneumo.models.checkpoint import save_checkpoint
from pneumo.models.processes import env_from_os
from pneumo.models.runtime import fast_precision, memory_format
from pneumo.models.sidecar import read_meta, write_meta
from pneumo.provenance import git_commit
from pneumo.train.checkpoint import load_train_state, refuse_config_changes, save_train_state
from pneumo.train.distributed import DistEnv, barrier, joined, same_on_every_rank, setup, teardown
from pneumo.train.loop import SplitTensors, fit
from pneumo.train.ood import fit_trained_ood, fit_trained_orientation
from pneumo.train.probe import cached_features, features_in_bf16, fit_probe, load_probe_into_head

log = logging.getLogger(__name__)
BEST, LAST, PREV = "model", "last", "last-prev"


def member_configs(cfg: RunConfig, overrides: list[str]) -> list[RunConfig]:
    """The member runs of an ensemble preset: each member preset with the same overrides, named <name>-<member>."""
    if len(cfg.members) < 2:
        raise ConfigError(f"an ensemble preset needs at least two members, {cfg.name} lists {len(cfg.members)}")
    names = [Path(m).stem for m in cfg.members]
    if len(set(names)) < len(names):  # one run folder for two members: an "ensemble" of one model
        raise ConfigError(f"{cfg.name} lists a member twice: {', '.join(cfg.members)}")
    out = [load_config(m, [*overrides, f"name={cfg.name}-{Path(m).stem}", f"out_dir={cfg.out_dir}"]) for m in cfg.members]
    for member, member_cfg in zip(cfg.members, out, strict=True):
        if member_cfg.members:
            raise ConfigError(f"ensemble member {member} is itself an ensemble")
        if member_cfg.data.task != cfg.data.task:
            raise ConfigError(f"ensemble member {member} is a {member_cfg.data.task} model, not {cfg.data.task}")
    chosen = sorted({member_cfg.eval.threshold_policy for member_cfg in out})
    if len(chosen) > 1 and "threshold_policy" not in cfg.eval.model_fields_set:  # before training, not after it
        raise ConfigError(f"the members of {cfg.name} choose their thresholds by different policies "
                          f"({', '.join(chosen)}): name the ensemble's in its preset (eval.threshold_policy) or with "
                          "--set eval.threshold_policy=P")
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_run_dir(cfg: RunConfig, *, resume: bool, force: bool = False) -> Path:
    """Fail early when the run folder exists (and neither resume nor force was asked) or, with resume, does not exist.

    A folder that holds neither a training state nor a model (a run killed before its first save) resumes from
    scratch: ``--resume`` is what the plain re-run's message suggests, so it must work.
    """
    run_dir = Path(cfg.out_dir) / cfg.name
    saved = _has_saved_state(run_dir)
    if run_dir.exists() and not resume and not force:
        if not saved:
            raise ConfigError(f"run folder {run_dir} exists but holds no saved state (a run stopped before its first "
                              "save): --resume starts it from scratch, --force replaces it, or pick another --name")
        raise ConfigError(f"run folder {run_dir} exists: pick another --name, --resume it, or pass --force")
    if resume and force:
        raise ConfigError("--resume continues a run and --force replaces it: give one")
    if resume and not run_dir.is_dir():
        raise ConfigError(f"nothing to resume: {run_dir} does not exist")
    if resume and saved:
        refuse_config_changes(run_dir, cfg)
    if resume and not saved:
        log.warning("%s holds no saved state yet (stopped before its first save): training it from scratch", run_dir)
    return run_dir


def _has_saved_state(run_dir: Path) -> bool:
    return (run_dir / f"{LAST}.json").is_file() or (run_dir / f"{BEST}.json").is_file()


def _check_resumed_split(run_dir: Path, folds: pd.DataFrame) -> None:
    """A resumed run continues on the split it started on: the rebuilt ``folds`` must hold every image of the run's
    ``folds.csv`` in the same fold with the same content, and no other (images added to the dataset, or one whose
    content changed, would move training images into val or train on other pixels than the epochs before).

    Raises:
        DataError: the dataset changed since the run started (the message counts and names what changed).
    """
    changes = split_changes(folds, read_folds(RunDir(run_dir).folds), ("train", "val", "test"))
    if changes:
        raise DataError(f"cannot resume {run_dir}: the dataset changed since the run started ({changes}): start a "
                        "new run (another --name, or --force), or resume on the dataset it was trained on")


@contextlib.contextmanager
def run_lock(cfg: RunConfig) -> Iterator[None]:
    """Hold the lock of ``<out_dir>/<name>`` (`pneumo.data.rundir.run_lock`) while this process trains it (rank 0
    under torchrun): a second `pneumo train` of the same run (``--force`` or ``--resume``) is refused instead of
    deleting the live run's files, and so is an evaluation or an OOD refit of it.

    Raises:
        ConfigError: another process trains or evaluates this run.
    """
    if not env_from_os().is_main:
        yield
        return
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    with folder_lock(Path(cfg.out_dir) / cfg.name, hint="wait for it to finish, or pick another --name"):
        yield


def prepare_run_dir(cfg: RunConfig, *, resume: bool, force: bool = False) -> Path:
    run_dir = check_run_dir(cfg, resume=resume, force=force)
    if run_dir.exists() and not resume:
        if run_dir.resolve().parent != Path(cfg.out_dir).resolve() or run_dir.is_symlink():
            raise ConfigError(f"--force would delete {run_dir}, which is not a folder inside {cfg.out_dir}: refused")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def checkpoint_meta(cfg: RunConfig, model: torch.nn.Module, extra: dict) -> dict:
    return {
        **model.meta(),
        "task": cfg.data.task,
        "classes": class_names(cfg.data.task),
        "input_size": cfg.data.image_size,
        "resize_policy": cfg.data.resize_policy,
        "intensity": cfg.data.intensity,
        "markers": cfg.data.markers,
        "crop": cfg.data.crop,
        "mode": cfg.model.mode,
        "threshold": 0.5,
        "threshold_policy": None,
        "temperature": 1.0,
        "config": to_dict(cfg),
        "commit": git_commit(),
        **extra,
    }


def build_model(cfg: RunConfig) -> torch.nn.Module:
    weights = "none" if cfg.model.mode == "scratch" else cfg.model.weights
    model = create(cfg.model.name, num_classes=len(class_names(cfg.data.task)), weights=weights,
                   drop_rate=cfg.model.drop_rate)
    if cfg.model.mode == "probe":
        model.freeze_backbone()
    elif cfg.model.mode == "partial":
        model.freeze_stages(cfg.model.freeze_stages)
    return model


def training_layout(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.nn.Module:
    """The model (frozen as configured) in the memory layout and precisions the training step runs fastest in on
    ``device``: channels-last (`memory_format`)."""
    fmt = memory_format(device)
    model.to(memory_format=fmt)
    if fast_precision(device, cfg.train.amp):
        log.info("training in bf16 autocast, %s", "channels-last" if fmt == torch.channels_last else "contiguous")
    elif device.type == "cpu" and cfg.train.amp:
        log.info("training in fp32: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 autocast is off")
    return model


def train(cfg: RunConfig, *, resume: bool = False, force: bool = False, command: str = "") -> Path:
    """Train per ``cfg`` and write runs/<name>/ (config, folds, metrics.csv per epoch (not for a probe), best
    checkpoint). Returns the run dir.
    ``command``: the command line that asked for it, recorded in the sidecar's ``training`` (the CLI passes it).

    Ctrl-C (or SIGTERM) saves a resumable state and re-raises ``KeyboardInterrupt``; ``resume=True`` continues
    from it, mid-epoch included, on the split the run's folds.csv recorded (refused when the dataset changed since).
    Under torchrun every rank calls this; all of them return the run dir. ``cfg`` and the caller's global random
    states are left as they were, and so is the C allocator: ``train.hold_memory`` is applied by `pneumo train` (a
    process of its own), not here, as it would keep a notebook's or an application's freed memory until it exits (a
    library review); a script that trains can call `pneumo.allocator.hold_freed_memory` itself.
    """
    cfg = cfg.model_copy(deep=True)  # the caller's config stays as given
    cfg.validate()
    # stored absolute: the run's evaluate / operating-point / adapt find the dataset from any working directory
    cfg.data.root = str(resolve_root(cfg.data.root).resolve())
    with run_lock(cfg), caller_random_state():
        return _train_locked(cfg, resume=resume, force=force, command=command)


@contextlib.contextmanager
def caller_random_state() -> Iterator[None]:
    """Training seeds Python's, NumPy's and PyTorch's global generators (`seed_everything`); the caller gets its own
    states back afterwards (a library call leaves no global random state changed)."""
    python, numpy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def _train_locked(cfg: RunConfig, *, resume: bool, force: bool, command: str) -> Path:
    callers_group = joined()
    env, device = setup(cfg.train.device)
    ok = False
    try:
        run_dir = _train(cfg, env, device, resume=resume, force=force, command=command)
        ok = True
        return run_dir
    except KeyboardInterrupt:
        if env.is_main:
            log.warning("interrupted; resume with: pneumo train --resume --name %s (and the same preset/options)",
                        cfg.name)
        raise
    finally:
        teardown(env, ok=ok, leave=not callers_group)


def _train(cfg: RunConfig, env: DistEnv, device: torch.device, *, resume: bool, force: bool, command: str) -> Path:
    run_dir = check_run_dir(cfg, resume=resume, force=force)
    barrier(env)  # every rank has checked the folder before rank 0 changes it
    start = time.perf_counter()
    seed_everything(cfg.train.seed)
    model = build_model(cfg)  # unknown names and bad weights fail here, before anything is written
    folds = folds_for(cfg)
    continued = resume and _has_saved_state(run_dir) and RunDir(run_dir).folds.is_file()
    if continued:  # every rank: none goes on alone
        _check_resumed_split(run_dir, folds)
    if env.is_main:
        prepare_run_dir(cfg, resume=resume, force=force)
        atomic.write_text(run_dir / "config.yaml", dump_yaml(cfg))
        if not continued:  # a resumed run's folds.csv stays what its first epochs trained on
            atomic.write_csv(RunDir(run_dir).folds, folds)
    cache = _cache_in_turn(cfg, folds, env)
    columns = folds[["path", "label", "sha256", "fold"]].astype(str).itertuples(index=False, name=None)
    identity = "\n".join("\t".join(row) for row in columns) + cache.key
    same_on_every_rank(hashlib.sha256(identity.encode()).hexdigest(), env, "split or image cache")
    model.to(device)
    y = labels(folds, cfg.data.task)
    rows = {f: np.flatnonzero(folds["fold"].to_numpy() == f) for f in ("train", "val")}
    if cfg.model.mode == "probe":
        if not env.is_main:
            return run_dir
        if env.enabled:
            log.info("probe mode: rank 0 fits the probe alone")
        info = _train_probe(cfg, model, cache, rows, y, device)
    else:
        info = _train_loop(cfg, model, cache, rows, y, device, run_dir, env)
        if not env.is_main:
            return run_dir
    info["wall_time_s"] = round(time.perf_counter() - start + info.pop("earlier_sessions_s", 0.0), 1)
    info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    info["threads"] = torch.get_num_threads()  # the weights depend on it (`OMP_NUM_THREADS`); the machine's cores
    # and the evaluating process's threads were all a run recorded (a reproducibility audit)
    info["world_size"] = env.world_size
    info["command"] = command or None  # (None: called from Python)
    bf16 = features_in_bf16 if cfg.model.mode == "probe" else fast_precision
    info["precision"] = "bf16" if bf16(device, cfg.train.amp) else "fp32"
    info["channels_last"] = memory_format(device) == torch.channels_last
    sidecar = run_dir / f"{BEST}.json"
    if cfg.model.mode == "probe" or not sidecar.is_file():
        save_checkpoint(run_dir / BEST, model.cpu(), checkpoint_meta(cfg, model, {"training": info}))
    else:
        meta = read_meta(sidecar)
        write_meta(sidecar, dataclasses.replace(meta, training={**meta.training, **info}))
    fit_trained_ood(cfg, sidecar, cache, folds, device=device)  # OOD statistics of the saved (best) weights
    fit_trained_orientation(sidecar, cache, folds, device=device, seed=cfg.train.seed)  # and its orientation check
    log.info("trained %s in %.0f s -> %s", cfg.name, info["wall_time_s"], run_dir)
    return run_dir


def _cache_in_turn(cfg: RunConfig, folds: pd.DataFrame, env: DistEnv) -> ImageCache:
    """Rank 0 builds the image cache, then the first process of each other node (which finds it when the cache
    folder is shared, or builds its node's copy), then every other process opens it: never two builders at once."""
    cache = image_cache(cfg, folds) if env.is_main else None
    barrier(env)
    if cache is None and env.local_rank == 0:
        cache = image_cache(cfg, folds)
    barrier(env)
    return cache if cache is not None else image_cache(cfg, folds)


def _train_probe(cfg: RunConfig, model, cache, rows: dict, y: np.ndarray, device: torch.device) -> dict:
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    feats = cached_features(model, cache.images, cache_key=cache.key, cache_dir=cache_dir, device=device,
                            amp=cfg.train.amp, batch_size=cfg.train.batch_size)
    clf, info = fit_probe(feats[rows["train"]], y[rows["train"]], feats[rows["val"]], y[rows["val"]],
                          balanced=cfg.train.balance != "none", seed=cfg.train.seed)
    load_probe_into_head(model.head, clf)
    return {"probe_C": info["C"], "val_auc": max(info["val_auc_by_C"].values()), "val_auc_of": _auc_of(cfg)}


def _train_loop(cfg: RunConfig, model, cache, rows: dict, y: np.ndarray,
                device: torch.device, run_dir: Path, env: DistEnv) -> dict:
    def tensor(fold: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(cache.images[rows[fold]]))[:, None]

    data = SplitTensors(tensor("train"), torch.from_numpy(y[rows["train"]]), tensor("val"),
                        torch.from_numpy(y[rows["val"]]))
    if device.type == "cuda":
        data = dataclasses.replace(data, x_train=data.x_train.to(device), x_val=data.x_val.to(device))  # images
    training_layout(model, cfg, device)

    def save_best(m: torch.nn.Module, info: dict) -> None:
        save_checkpoint(run_dir / BEST, m, checkpoint_meta(cfg, m, {"training": info}))

    states = StateFiles(run_dir)
    state = fit(model, data, cfg, run_dir, device=device, save_best=save_best, save_state=states.save,
                load_state=states.load, env=env)
    return {"best_epoch": state.best_epoch, "val_auc": state.best_auc, "epochs_run": state.epoch,
            "global_step": state.global_step, "val_auc_of": _auc_of(cfg), "earlier_sessions_s": state.elapsed_s}


def _auc_of(cfg: RunConfig) -> str:
    """Which val AUC chose the epoch or the probe's C (the evaluation reports pneumonia vs normal for every task)."""
    return "P(pneumonia)" if cfg.data.task == "binary" else "macro one-vs-rest over the three classes"


class StateFiles:
    """The resumable state of a run: ``last.*``, and ``last-prev.*`` hard-linked to the state before it.

    ``last.json`` and ``last.safetensors`` are each replaced atomically, but not together: a crash between the two
    leaves a pair whose checksum disagrees. Then `load` falls back to ``last-prev.*`` (with a warning).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._last_complete = False  # only a pair known to be complete may become last-prev

    def save(self, model: torch.nn.Module, optimizer, scheduler, state: dict) -> None:
        if self._last_complete:
            for suffix in (".safetensors", ".json"):
                _link_atomic(self.run_dir / f"{LAST}{suffix}", self.run_dir / f"{PREV}{suffix}")
        save_train_state(self.run_dir / LAST, model, optimizer, scheduler, state)
        self._last_complete = True

    def load(self, model: torch.nn.Module, optimizer, scheduler) -> dict | None:
        if not (self.run_dir / f"{LAST}.json").is_file():
            return None
        try:
            state = load_train_state(self.run_dir / LAST, model, optimizer, scheduler)
        except ModelError as exc:
            if not (self.run_dir / f"{PREV}.json").is_file():
                raise ModelError(f"cannot resume {self.run_dir}: {exc}") from None
            log.warning("cannot use %s (%s); resuming from the state before it, %s", LAST, exc, PREV)
            try:
                return load_train_state(self.run_dir / PREV, model, optimizer, scheduler)
            except ModelError as prev_exc:
                raise ModelError(f"cannot resume {self.run_dir}: {exc}; and {PREV}: {prev_exc}") from None
        self._last_complete = True
        return state


def _link_atomic(src: Path, dst: Path) -> None:
    """``dst`` becomes another name of ``src`` (a copy where hard links are not supported), atomically."""
    with atomic.writing(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"cpu ({os.cpu_count()} cores)"
