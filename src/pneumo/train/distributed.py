"""Multi-process data-parallel training (DDP) with ``torch.distributed``, detected from the environment.

``torchrun --nproc_per_node=N -m pneumo train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; `setup` then
joins the process group (NCCL on GPUs, gloo on the CPU) and picks ``cuda:LOCAL_RANK``. A plain ``pneumo train``
sees no such variables and runs as one process (rank 0 of 1); every function here is then a no-op.

How a DDP run matches a single-process run of the same ``train.batch_size``:

* ``train.batch_size`` is the **global** batch. Every rank computes the same (seed, epoch) sample order, takes the
  same global batch and keeps its `shard` of it, so a rank sees ``batch_size / world_size`` images per step (the
  first ``batch_size % world_size`` ranks one more). Augmentation parameters are drawn for the global batch.
* Each rank's loss is rescaled by its share of the batch's (class-weighted) sample weight, so the gradient DDP
  averages is exactly the gradient of the global batch's loss.
* BatchNorm layers become synchronized (`sync_batchnorm`): torch's ``SyncBatchNorm`` on GPUs, `GlooSyncBatchNorm`
  (below) on the CPU, where torch's implementation refuses to run. Batch statistics are those of the global batch.
* Only dropout masks differ (each rank draws its own); everything else is the single-process computation up to the
  order of floating-point sums.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pneumo.errors import ConfigError, DataError
from pneumo.models.processes import ONE_PROCESS, DistEnv, env_from_os, is_main_process, shard  # noqa: F401 - re-exported

log = logging.getLogger(__name__)
# How long ranks wait for rank 0 working alone (building the image cache, fitting a probe, evaluating an epoch).
RANK0_ALONE_TIMEOUT = timedelta(minutes=30)


def setup(device: str = "auto") -> tuple[DistEnv, torch.device]:
    """Join the process group when launched with ``WORLD_SIZE`` > 1; returns the env and this process's device.

    Args:
        device: ``train.device``: auto | cpu | cuda. Under DDP, ``cuda`` means ``cuda:LOCAL_RANK`` with NCCL;
            ``cpu`` (or auto without a GPU) uses gloo.
    """
    env = env_from_os()
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if device.startswith("cuda") and not torch.cuda.is_available():  # before any folder is written
        raise ConfigError(f"--device {device}, but this machine has no CUDA GPU (PyTorch sees none): use --device "
                          "cpu or auto")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps, but this PyTorch or machine has no MPS (Apple GPU): use --device cpu or auto")
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}, but only {torch.cuda.device_count()} GPU(s) are visible")
    if not env.enabled:
        return env, torch.device(("cuda" if use_cuda else "cpu") if device == "auto" else device)
    if use_cuda:
        if torch.cuda.device_count() <= env.local_rank:
            raise ConfigError(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        torch.cuda.set_device(env.local_rank)
        dev = torch.device("cuda", env.local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=env.rank, world_size=env.world_size,
                                device_id=dev if use_cuda else None, timeout=RANK0_ALONE_TIMEOUT)
    if not env.is_main:
        logging.getLogger("pneumo").setLevel(logging.WARNING)  # rank 0 alone reports progress
    log.info("DDP: %d processes (%s), this is rank %d on %s", env.world_size, dist.get_backend(), env.rank, dev)
    return env, dev


def joined() -> bool:
    """Whether this process is already in a process group (its caller's: `teardown` leaves it to the caller)."""
    return dist.is_available() and dist.is_initialized()


def teardown(env: DistEnv, *, ok: bool = True, leave: bool = True) -> None:
    """Wait for every rank (when all went well) and leave the process group (``leave``; False: the group is the
    caller's, as an ensemble's members share one: a gloo group made again at once could read the previous one's
    addresses and fail, a review of the multi-GPU path)."""
    if env.enabled and dist.is_initialized():
        if ok:
            dist.barrier()
        if leave:
            dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def sum_across(value: float, env: DistEnv, device: torch.device) -> float:
    """The sum of ``value`` over all ranks (the value itself in one process)."""
    if not env.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank when it is true on at least one (e.g. a Ctrl-C that reached only some ranks)."""
    if not env.enabled:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank (a small JSON-like object, e.g. the loop's counters)."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def same_on_every_rank(value: str, env: DistEnv, what: str) -> None:
    """Refuse to go on unless every rank holds the same ``value`` (a digest of its split, its image cache key):
    ranks index one shared sample order, so on a node whose dataset copy differs by one file the same index names
    other images, and rank 0's validation images could be trained on elsewhere (a review: no error, no warning).

    Raises:
        DataError: on every rank, naming the ranks that differ from rank 0.
    """
    if not env.enabled:
        return
    values: list[Any] = [None] * env.world_size
    dist.all_gather_object(values, value)
    differ = [rank for rank, v in enumerate(values) if v != values[0]]
    if differ:
        raise DataError(f"ranks {', '.join(map(str, differ))} built another {what} than rank 0: every node must read "
                        "the same dataset (the same files and bytes) and run the same pneumo version")


def wrap_model(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """Synchronized BatchNorm + ``DistributedDataParallel`` under DDP; the model itself otherwise.

    Frozen parameters are fine (DDP skips them); every trainable one must get a gradient each step.
    """
    if not env.enabled:
        return model
    sync_batchnorm(model, device)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=False)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace BatchNorm layers in place by synchronized ones (same parameters, buffers and state-dict keys). timm's
    norm + activation layers (`BatchNormAct2d`: EfficientNet's BatchNorm -> ReLU6) keep their activation: torch's
    converter dropped it, so a multi-process run trained a network without its nonlinearities."""
    if device.type != "cpu":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlooSyncBatchNorm):
            setattr(model, name, GlooSyncBatchNorm.from_batchnorm(child))
        else:
            sync_batchnorm(child, device)
    return model


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the batch across all ranks; works on CPU tensors; then
    the dropout and activation a timm norm + activation layer carries (identity for a plain BatchNorm).

    In eval mode, or outside a process group, it is plain ``F.batch_norm`` (then the same dropout and activation).
    """

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> GlooSyncBatchNorm:
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if bn.affine:
            new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var, new.num_batches_tracked = bn.running_mean, bn.running_var, \
            bn.num_batches_tracked
        new.drop, new.act = getattr(bn, "drop", None) or nn.Identity(), getattr(bn, "act", None) or nn.Identity()
        new.train(bn.training)
        return new

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return self.act(self.drop(super().forward(x)))
        momentum = self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        out = _SyncBatchNorm.apply(x, self.weight, self.bias, self.running_mean if self.track_running_stats else None,
                                   self.running_var if self.track_running_stats else None, self.eps, momentum)
        return self.act(self.drop(out))


class _SyncBatchNorm(torch.autograd.Function):
    """Forward: all-reduce per-channel sum, sum of squares and count; backward: all-reduce the two gradient sums
    the input gradient needs. Parameter gradients stay local (DDP averages them), as in torch's SyncBatchNorm."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum):
        dims = [0, *range(2, x.dim())]
        n_local = x.numel() // x.shape[1]
        var_local, mean_local = torch.var_mean(x, dim=dims, correction=0)
        stats = torch.cat([mean_local.double() * n_local, (var_local.double() + mean_local.double() ** 2) * n_local,
                           torch.tensor([float(n_local)], dtype=torch.float64, device=x.device)])
        dist.all_reduce(stats)
        c = x.shape[1]
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c : 2 * c] / count - mean**2).clamp_min(0)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                unbiased = var * count / (count - 1).clamp_min(1)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        shape = (1, c) + (1,) * (x.dim() - 2)
        invstd = torch.rsqrt(var + eps).to(x.dtype).view(shape)
        xhat = (x - mean.to(x.dtype).view(shape)) * invstd
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.count = float(count)
        ctx.dims = dims
        out = xhat
        if weight is not None:
            out = xhat * weight.view(shape) + bias.view(shape)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xhat, invstd, weight = ctx.saved_tensors
        c = xhat.shape[1]
        shape = invstd.shape
        sum_dy = grad_out.sum(ctx.dims)
        sum_dy_xhat = (grad_out * xhat).sum(ctx.dims)
        grad_weight = sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.clone() if weight is not None and ctx.needs_input_grad[2] else None
        both = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(both)
        scale = invstd * (weight.view(shape) if weight is not None else 1.0)
        grad_in = scale * (grad_out - (both[:c] / ctx.count).view(shape) - xhat * (both[c:] / ctx.count).view(shape))
        return grad_in, grad_weight, grad_bias, None, None, None, None
