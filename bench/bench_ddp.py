"""Training throughput (images/s) of one process vs N data-parallel processes (torchrun) on a short fine-tune.

    python bench/bench_ddp.py --data ../shared/data/chest_xray [--nproc 2] [--model efficientnet_lite0]
        [--mode finetune] [--size 224] [--batch 32] [--steps 20] [--device auto] [--limit-per-class N]

Each configuration runs ``pneumo train`` for two short epochs of ``--steps`` steps with the same global batch
(``--batch``; each of N processes trains on batch/N images per step) and reads ``images_per_s`` of the second
epoch from metrics.csv (training steps only: no start-up, cache, warm-up or validation). On a GPU machine use
``--nproc`` up to the number of GPUs (NCCL, one GPU per process); on the CPU the cores are split evenly between the
processes (gloo), so N processes never get more CPU than one.

Several nodes (not run by this script): start the same command on every node, with the rendezvous on one of them,
the dataset at the same path everywhere and ``--out`` on a shared file system (rank 0 writes the run folder;
every rank reads ``last.*`` on ``--resume``):

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=node0:29500 --rdzv-id=pneumo-1 \\
        -m pneumo train --preset lite0-finetune --dataset /data/chest_xray --out /shared/runs --name lite0-ddp
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record


def train_command(args: argparse.Namespace, processes: int, out_dir: Path) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    options = [f"data.image_size={args.size}", f"train.batch_size={args.batch}", "train.epochs=2",
               f"train.max_steps_per_epoch={args.steps}", "train.patience=99"]
    if args.limit_per_class:
        options.append(f"data.limit_per_class={args.limit_per_class}")
    return [*launcher, "-m", "pneumo", "train", "--preset", "lite0-probe", "--arch", args.model, "--mode", args.mode,
            "--dataset", args.data, "--out", str(out_dir), "--name", f"ddp-{processes}", "--device", args.device,
            "--no-eval", *[arg for option in options for arg in ("--set", option)]]


def measure(args: argparse.Namespace, processes: int, out_dir: Path) -> dict:
    env = dict(os.environ)
    if args.device == "cpu" or not _has_cuda():
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    start = time.perf_counter()
    subprocess.run(train_command(args, processes, out_dir), env=env, check=True)
    wall = time.perf_counter() - start
    metrics = pd.read_csv(out_dir / f"ddp-{processes}" / "metrics.csv")
    return {"processes": processes, "images_per_s": float(metrics["images_per_s"].iloc[-1]),
            "wall_s": round(wall, 1), "threads_per_process": env.get("OMP_NUM_THREADS")}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run (default: 2)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--mode", default="finetune", choices=("finetune", "partial", "scratch"),
                        help="training mode (a probe trains no epochs to compare; default: finetune)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32, help="global batch (default: 32)")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch (default: 20)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--limit-per-class", type=int, help="use a slice of the data (faster cache build)")
    args = parser.parse_args()
    out_dir = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    try:
        runs = [measure(args, n, out_dir) for n in (1, args.nproc)]
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    speedup = runs[1]["images_per_s"] / runs[0]["images_per_s"]
    record(f"ddp-{args.model}-{args.size}-x{args.nproc}", {
        "model": args.model, "mode": args.mode, "size": args.size, "global_batch": args.batch, "steps_per_epoch": args.steps,
        "device": args.device, "runs": runs, "speedup": round(speedup, 2),
        "scaling_efficiency": round(speedup / args.nproc, 2),
    })


if __name__ == "__main__":
    main()
