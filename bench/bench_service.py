"""Throughput and latency of `pneumo serve` under concurrent load (16 clients on 127.0.0.1 by default).

    python bench/bench_service.py [--model RUN] [--seconds 20] [--clients 16] [--heatmap] [--image X.jpeg]

Starts the server in its own process (so the load generator does not share its interpreter), waits for /readyz,
warms up, then keeps ``--clients`` asyncio httpx clients posting the same real X-ray for ``--seconds`` and reports
requests/s, p50/p95/p99 latency and the error count (JSON in bench/out/).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import httpx
import numpy as np

from pneumo.config import ServeConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record

MAX_SECONDS = 300
REPO = Path(__file__).resolve().parents[1]


def default_image() -> Path:
    root = Path(os.environ.get("PNEUMO_DATA", REPO.parent / "shared" / "data" / "chest_xray"))
    images = sorted((root / "test" / "PNEUMONIA").glob("*.jpeg"))
    if not images:
        sys.exit(f"no test images under {root}/test/PNEUMONIA: pass --image")
    return images[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, log: IO[bytes]) -> subprocess.Popen:
    """`pneumo serve` on 127.0.0.1 in a subprocess; batching/backend options only when ``args`` has them."""
    command = [sys.executable, "-m", "pneumo", "serve", "--host", "127.0.0.1", "--port", str(port)]
    for option in ("max_batch", "batch_window_ms", "backend"):
        if getattr(args, option, None) is not None:
            command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    if args.model:
        command += ["--model", args.model]
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = {k: v for k, v in os.environ.items() if k != "PNEUMO_API_KEY"}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)


def wait_ready(url: str, server: subprocess.Popen, log: IO[bytes], timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            sys.exit(f"server exited: {log.read().decode(errors='replace')[-2000:]}")
        try:
            response = httpx.get(f"{url}/readyz", timeout=2)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit("server not ready in time")


async def load(url: str, image: bytes, *, clients: int, seconds: float, params: dict) -> tuple[list[float], int]:
    """Each client posts back to back until the deadline; returns latencies (s) of successes and the error count."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def one_client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    response = await client.post("/api/v1/predict", params=params,
                                                 files={"file": ("x.jpeg", image, "image/jpeg")})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="run folder or checkpoint (default: the shipped default model)")
    parser.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto")
    parser.add_argument("--image", help="the X-ray to post (default: the first test-split pneumonia image)")
    parser.add_argument("--seconds", type=float, default=20.0, help=f"measured duration (at most {MAX_SECONDS})")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--heatmap", action="store_true", help="ask for the Grad-CAM overlay with every request")
    parser.add_argument("--max-batch", type=int, help="default: the server's (`pneumo serve --max-batch`)")
    parser.add_argument("--batch-window-ms", type=float, help="default: the server's")
    parser.add_argument("--threads", type=int, help="batches the server runs side by side (default: the server's)")
    args = parser.parse_args()
    seconds = min(max(args.seconds, 1.0), MAX_SECONDS)
    image_path = Path(args.image) if args.image else default_image()
    image = image_path.read_bytes()
    params = {"heatmap": "true"} if args.heatmap else {}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:  # the server's stderr: a pipe nobody reads could fill up and stall it
        server = start_server(args, port, log)
        try:
            ready = wait_ready(url, server, log)
            asyncio.run(load(url, image, clients=args.clients, seconds=args.warmup, params=params))
            start = time.perf_counter()
            latencies, errors = asyncio.run(load(url, image, clients=args.clients, seconds=seconds, params=params))
            elapsed = time.perf_counter() - start
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
    ms = np.asarray(latencies) * 1000.0
    pct = {f"p{q}_ms": round(float(np.percentile(ms, q)), 1) if ms.size else None for q in (50, 95, 99)}
    name = f"service-{ready['model_id'].split('-')[0]}-{args.backend}-c{args.clients}" + ("-heatmap" if args.heatmap
                                                                                        else "")
    record(name, {"model_id": ready["model_id"], "backend": ready.get("backend", args.backend), "clients": args.clients,
                  "heatmap": args.heatmap, "max_batch": args.max_batch or ServeConfig().max_batch,
                  "batch_window_ms": args.batch_window_ms or ServeConfig().batch_window_ms,
                  "image": image_path.name, "image_bytes": len(image), "seconds": round(elapsed, 2),
                  "requests": int(ms.size), "errors": errors,
                  "requests_per_s": round(ms.size / elapsed, 2), **pct,
                  "mean_ms": round(float(ms.mean()), 1) if ms.size else None})


if __name__ == "__main__":
    main()
