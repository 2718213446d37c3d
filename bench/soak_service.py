"""Soak test of `pneumo serve`: minutes of mixed valid and hostile uploads, watching for 5xx and memory growth.

    python bench/soak_service.py [--model RUN] [--data ROOT] [--minutes 10] [--clients 8] [--invalid-fraction 0.25]

Starts the server in its own process on 127.0.0.1, waits for /readyz, warms up, then keeps ``--clients`` asyncio
httpx clients posting for ``--minutes``: real test-split X-rays (``--data``) and the error cases of the bad-input
corpus (tests/infer/corpus.py), in a seeded mix. The server's resident memory is sampled every ``--sample-s``
seconds (psutil when installed, else /proc/<pid>/status). Writes bench/out/soak.json (requests by status code, 5xx
count, RSS start/end/max and its slope in MB per minute from a linear fit, throughput, p50/p99 latency) and exits 1
when any request got a 5xx, failed in transport, or got an unexpected status (a valid X-ray not 200, a bad input
not 4xx).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests" / "infer"))
from bench_service import free_port, start_server, wait_ready
from common import family, record

MAX_MINUTES = 120
PREDICT = "/api/v1/predict"


@dataclass(frozen=True)
class Upload:
    name: str  # file name presented on upload
    data: bytes
    valid: bool  # a real X-ray: must get 200; otherwise must get a 4xx


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)  # "200", "422", ..., "transport error"
    latencies_s: list[float] = field(default_factory=list)
    valid_latencies_s: list[float] = field(default_factory=list)
    unexpected: Counter = field(default_factory=Counter)  # "valid->422", "invalid->200", ...


def xray_uploads(root: Path, count: int, seed: int) -> list[Upload]:
    paths = sorted((root / "test").glob("*/*.jpeg"))
    if not paths:
        sys.exit(f"no test-split X-rays under {root}/test: pass --data")
    chosen = random.Random(seed).sample(paths, min(count, len(paths)))
    return [Upload(path.name, path.read_bytes(), True) for path in chosen]


def corpus_error_uploads() -> list[Upload]:
    from corpus import build_corpus

    with tempfile.TemporaryDirectory(prefix="pneumo-soak-corpus-") as folder:
        return [Upload(case.upload_name, case.path.read_bytes(), False)
                for case in build_corpus(folder) if case.expect == "error"]


def rss_mb(pid: int) -> float:
    """Resident memory in MB of the server process and its decode workers (`common.family`: the uploads, a quarter of
    them bad inputs, are decoded there since issue 24; a bench review found the soak watched the server alone)."""
    total = 0
    for member in family(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:  # a worker that ended between the listing and the read
            continue
        total += next((int(line.split()[1]) for line in lines if line.startswith("VmRSS:")), 0)
    return total / 1024.0


def open_fds(pid: int) -> int | None:
    """Open files of the server process and its decode workers."""
    try:
        return sum(len(os.listdir(f"/proc/{member}/fd")) for member in family(pid))
    except OSError:
        return None


async def one_client(client: httpx.AsyncClient, uploads: list[Upload], bad: list[Upload], *, invalid_fraction: float,
                     deadline: float, rng: random.Random, tally: Tally) -> None:
    while time.perf_counter() < deadline:
        upload = rng.choice(bad) if bad and rng.random() < invalid_fraction else rng.choice(uploads)
        start = time.perf_counter()
        try:
            response = await client.post(PREDICT, files={"file": (upload.name, upload.data,
                                                                  "application/octet-stream")})
        except httpx.HTTPError as exc:
            tally.statuses["transport error"] += 1
            tally.unexpected[f"{'valid' if upload.valid else 'invalid'}->{type(exc).__name__}"] += 1
            continue
        elapsed = time.perf_counter() - start
        code = response.status_code
        tally.statuses[str(code)] += 1
        tally.latencies_s.append(elapsed)
        if upload.valid:
            tally.valid_latencies_s.append(elapsed)
        if (upload.valid and code != 200) or (not upload.valid and not 400 <= code < 500):
            tally.unexpected[f"{'valid' if upload.valid else 'invalid'}->{code}"] += 1


async def sample_memory(pid: int, *, every_s: float, deadline: float, t0: float,
                        samples: list[tuple[float, float]]) -> None:
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return
        await asyncio.sleep(min(every_s, remaining))
        samples.append((time.perf_counter() - t0, rss_mb(pid)))


async def soak(url: str, pid: int, uploads: list[Upload], bad: list[Upload], args: argparse.Namespace,
               seconds: float) -> tuple[Tally, list[tuple[float, float]], float]:
    """Run the clients for ``seconds``; returns the tally, the (seconds, RSS MB) samples and the elapsed time."""
    tally = Tally()
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        deadline = t0 + seconds
        samples = [(0.0, rss_mb(pid))]
        rngs = [random.Random(args.seed * 1000 + i) for i in range(args.clients)]
        await asyncio.gather(
            sample_memory(pid, every_s=args.sample_s, deadline=deadline, t0=t0, samples=samples),
            *(one_client(client, uploads, bad, invalid_fraction=args.invalid_fraction, deadline=deadline,
                         rng=rng, tally=tally) for rng in rngs))
        elapsed = time.perf_counter() - t0
    if elapsed - samples[-1][0] > 1.0:  # the sampler may already have taken the last one
        samples.append((elapsed, rss_mb(pid)))
    return tally, samples, elapsed


def percentile_ms(latencies_s: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(latencies_s) * 1000.0, q)), 1) if latencies_s else None


def memory_summary(samples: list[tuple[float, float]]) -> dict:
    seconds, mb = np.asarray([s for s, _ in samples]), np.asarray([m for _, m in samples])
    slope = float(np.polyfit(seconds / 60.0, mb, 1)[0]) if len(samples) >= 2 and np.ptp(seconds) > 0 else None
    return {"rss_start_mb": round(float(mb[0]), 1), "rss_end_mb": round(float(mb[-1]), 1),
            "rss_max_mb": round(float(mb.max()), 1),
            "rss_slope_mb_per_min": round(slope, 3) if slope is not None else None,
            "rss_samples": [[round(float(s), 1), round(float(m), 1)] for s, m in samples]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default_data = Path(os.environ.get("PNEUMO_DATA", REPO.parent / "shared" / "data" / "chest_xray"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="run folder or checkpoint (default: the shipped default model)")
    parser.add_argument("--data", type=Path, default=default_data, help="dataset root whose test split is posted")
    parser.add_argument("--minutes", type=float, default=10.0, help=f"soak duration (at most {MAX_MINUTES})")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--invalid-fraction", type=float, default=0.25, help="share of requests with bad input")
    parser.add_argument("--images", type=int, default=64, help="how many test-split X-rays to rotate through")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the soak is measured")
    parser.add_argument("--threads", type=int, help="model CPU threads in the server")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 <= args.minutes <= MAX_MINUTES or args.clients < 1 or not 0 <= args.invalid_fraction <= 1:
        parser.error(f"need 0 <= --minutes <= {MAX_MINUTES}, --clients >= 1, 0 <= --invalid-fraction <= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    uploads, bad = xray_uploads(args.data, args.images, args.seed), corpus_error_uploads()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:  # the server's stderr: a pipe nobody reads could fill up and stall it
        server = start_server(args, port, log)
        try:
            ready = wait_ready(url, server, log)
            rss_loaded = rss_mb(server.pid)
            if args.warmup > 0:
                asyncio.run(soak(url, server.pid, uploads, bad, args, args.warmup))
            fds_start = open_fds(server.pid)
            tally, samples, elapsed = asyncio.run(soak(url, server.pid, uploads, bad, args, args.minutes * 60.0))
            fds_end = open_fds(server.pid)
            alive = server.poll() is None
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
    requests = sum(tally.statuses.values())
    server_errors = sum(n for code, n in tally.statuses.items() if code.isdigit() and int(code) >= 500)
    record("soak", {
        "model_id": ready["model_id"], "backend": ready.get("backend"), "minutes": args.minutes, "clients": args.clients,
        "invalid_fraction": args.invalid_fraction, "valid_images": len(uploads), "invalid_inputs": len(bad),
        "seconds": round(elapsed, 2), "requests": requests,
        "requests_by_status": dict(sorted(tally.statuses.items())), "server_errors_5xx": server_errors,
        "unexpected": dict(sorted(tally.unexpected.items())), "server_alive_at_end": alive,
        "requests_per_s": round(requests / elapsed, 2) if elapsed > 0 else None,
        "p50_ms": percentile_ms(tally.latencies_s, 50), "p99_ms": percentile_ms(tally.latencies_s, 99),
        "valid_p50_ms": percentile_ms(tally.valid_latencies_s, 50),
        "valid_p99_ms": percentile_ms(tally.valid_latencies_s, 99),
        "rss_of": "the server process and its decode workers",
        "rss_after_load_mb": round(rss_loaded, 1), **memory_summary(samples),
        "open_fds_start": fds_start, "open_fds_end": fds_end,
    })
    failed = server_errors or tally.unexpected or not alive or requests == 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
