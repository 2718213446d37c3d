"""Helpers for benchmarks: machine description and result files (JSON + a markdown row for BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu, isa = "", ""
    try:
        import torch

        from pneumo.models.runtime import cpu_has_bf16

        # CPUs of one name differ in what matters here: "AMD EPYC" has come both with AVX512-BF16 and with AVX2 only
        isa = f", {torch.backends.cpu.get_cpu_capability()}{' + bf16' if cpu_has_bf16() else ', no native bf16'}"
        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{isa}{gpu}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return "unknown"


def record(name: str, payload: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
               "commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M"), **payload}
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload, indent=2))
    return path


def family(pid: int) -> list[int]:
    """``pid`` and its descendants: since issue 24 the uploads are decoded in worker processes of the server."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            children = (task / "children")
            if children.is_file():
                todo += [int(c) for c in children.read_text().split()]
    return out
