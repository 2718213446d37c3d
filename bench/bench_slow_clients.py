"""`pneumo serve` under slow and many clients (issue #12 items 1-2), on 127.0.0.1 only.

    python bench/bench_slow_clients.py [--model RUN] [--slow 64 256] [--slow-seconds 20]
                                       [--idle-rate 100] [--idle-seconds 20]
                                       [--clients 64 128] [--load-seconds 30] [--no-retry-after]

Starts the server with its default limits (bench_service's launcher), then, one after the other:

* slow loris: N connections that send a request at 1 byte/s (half stall in the headers, half in the body) and
  reconnect when the server drops them, for ``--slow-seconds``; meanwhile ``/healthz`` is polled every 0.5 s and one
  normal client posts a real X-ray back to back. Reported: health and predict success rates, predict p50/p99.
* idle flood (issue 24 item 4): ``--idle-rate`` new connections a second that send nothing and stay open until the
  server closes them, for ``--idle-seconds``; /healthz and one normal client as above. Reported: health and predict
  success rates, predict p50/p99, connections opened / closed by the server / still open at the end.
* well-behaved load: N clients posting the X-ray back to back for ``--load-seconds``; a 503 must carry Retry-After,
  which the client waits out (unless ``--no-retry-after``). Reported: status counts, 5xx share, 503s without
  Retry-After, p50/p99 of the 200s, and whether ``/healthz`` still answers afterwards.

Also counted: WARNING lines the server logged per scenario (rejections are logged at a bounded rate). Every loop
is bounded in time; the server is stopped at the end. JSON in bench/out/slow-clients.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from bench_service import default_image, free_port, start_server, wait_ready
from common import record

MAX_SECONDS = 120
PREDICT = "/api/v1/predict"


def percentiles(seconds: list[float]) -> dict[str, float | None]:
    ms = np.asarray(seconds) * 1000.0
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 1) if ms.size else None for q in (50, 99)}


async def slow_connection(port: int, request: bytes, stall_at: int, deadline: float, counts: Counter) -> None:
    """Send ``request[:stall_at]`` at once, then 1 byte/s; reconnect whenever the server drops or answers."""
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["connect failed"] += 1
            await asyncio.sleep(0.5)
            continue
        counts["connections"] += 1
        try:
            writer.write(request[:stall_at])
            for byte in request[stall_at:]:
                if time.monotonic() >= deadline:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    reply = await asyncio.wait_for(reader.read(64), 1.0)
                except TimeoutError:
                    continue
                counts[_outcome(reply, "dropped")] += 1
                break
        except OSError:
            counts["dropped"] += 1
        finally:
            writer.close()


async def slow_loris(url: str, port: int, image: bytes, *, clients: int, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    body_request = (b"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                    + f"Content-Length: {len(image)}\r\n\r\n".encode() + image)
    head_end = body_request.index(b"\r\n\r\n") + 4
    slow_counts: Counter = Counter()
    health: Counter = Counter()
    predict: Counter = Counter()
    latencies: list[float] = []

    slow = [slow_connection(port, body_request, 20 if i % 2 else head_end + 10, deadline, slow_counts)
            for i in range(clients)]
    async with httpx.AsyncClient(base_url=url) as client:
        await asyncio.gather(*slow, poll_health(client, deadline, health),
                             normal_client(client, image, deadline, predict, latencies))
    return {"slow_clients": clients, "seconds": seconds, "slow": dict(slow_counts),
            **watched(health, predict, latencies)}


async def poll_health(client: httpx.AsyncClient, deadline: float, health: Counter) -> None:
    """GET /healthz every 0.5 s until ``deadline``, counting the answers."""
    while time.monotonic() < deadline:
        try:
            health[(await client.get("/healthz", timeout=5)).status_code] += 1
        except httpx.HTTPError as exc:
            health[type(exc).__name__] += 1
        await asyncio.sleep(0.5)


async def normal_client(client: httpx.AsyncClient, image: bytes, deadline: float, predict: Counter,
                        latencies: list[float]) -> None:
    """One well-behaved client posting ``image`` back to back (from 2 s in: the bad clients are there)."""
    await asyncio.sleep(2.0)
    while time.monotonic() < deadline:
        start = time.perf_counter()
        try:
            status = (await client.post(PREDICT, files={"file": ("x.jpeg", image, "image/jpeg")},
                                        timeout=30)).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        predict[status] += 1
        if status == 200:
            latencies.append(time.perf_counter() - start)


def watched(health: Counter, predict: Counter, latencies: list[float]) -> dict:
    total_health, total_predict = sum(health.values()), sum(predict.values())
    return {"healthz": {str(k): v for k, v in health.items()},
            "healthz_ok_share": round(health[200] / total_health, 4) if total_health else None,
            "predict": {str(k): v for k, v in predict.items()},
            "predict_ok_share": round(predict[200] / total_predict, 4) if total_predict else None,
            **percentiles(latencies)}


def _outcome(reply: bytes, closed: str) -> str:
    """What a connection's first bytes from the server say: its status line, or ``closed`` for none."""
    return "answered " + reply.split(b"\r\n", 1)[0].decode("latin-1") if reply else closed


async def idle_connection(port: int, deadline: float, counts: Counter) -> None:
    """Connect, send nothing, wait until the server closes the socket or ``deadline``."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        counts["connect failed"] += 1
        return
    counts["opened"] += 1
    with contextlib.closing(writer):
        try:
            data = await asyncio.wait_for(reader.read(64), max(0.01, deadline - time.monotonic()))
            counts[_outcome(data, "closed by server")] += 1
        except TimeoutError:
            counts["open at the end"] += 1
        except OSError:
            counts["reset by server"] += 1


async def idle_flood(url: str, port: int, image: bytes, *, rate: float, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    idle: Counter = Counter()
    health: Counter = Counter()
    predict: Counter = Counter()
    latencies: list[float] = []
    sockets: list[asyncio.Task] = []

    async def opener() -> None:
        start, n = time.monotonic(), 0
        while time.monotonic() < deadline:
            sockets.append(asyncio.create_task(idle_connection(port, deadline, idle)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))  # the rate, not 1/rate after each

    async with httpx.AsyncClient(base_url=url) as client:
        await asyncio.gather(opener(), poll_health(client, deadline, health),
                             normal_client(client, image, deadline, predict, latencies))
        await asyncio.gather(*sockets)
    return {"idle_rate_per_s": rate, "seconds": seconds, "idle": dict(idle), **watched(health, predict, latencies)}


async def well_behaved(url: str, image: bytes, *, clients: int, seconds: float, retry_after: bool) -> dict:
    deadline = time.monotonic() + seconds
    statuses: Counter = Counter()
    no_retry_after = 0
    waited = 0.0
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def one_client() -> None:
            nonlocal no_retry_after, waited
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    response = await client.post(PREDICT, files={"file": ("x.jpeg", image, "image/jpeg")})
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                    continue
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                elif response.status_code == 503:
                    header = response.headers.get("retry-after", "")
                    if not header.isdigit():
                        no_retry_after += 1
                    elif retry_after:
                        pause = min(float(header), max(0.0, deadline - time.monotonic()))
                        waited += pause
                        await asyncio.sleep(pause)

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        try:
            alive = (await client.get("/healthz", timeout=5)).status_code == 200
        except httpx.HTTPError:
            alive = False
    total = sum(statuses.values())
    server_errors = sum(v for k, v in statuses.items() if not isinstance(k, int) or k >= 500)
    other = sum(v for k, v in statuses.items() if k not in (200, 503))
    return {"clients": clients, "seconds": round(elapsed, 1), "honors_retry_after": retry_after,
            "statuses": {str(k): v for k, v in statuses.items()}, "requests": total,
            "ok_per_s": round(statuses[200] / elapsed, 2), "share_5xx": round(server_errors / total, 4) if total else None,
            "replies_not_200_or_503": other, "503_without_retry_after": no_retry_after,
            "seconds_waited_for_retry_after": round(waited, 1), "healthz_after": alive, **percentiles(latencies)}


def warnings_since(log, offset: int) -> tuple[int, int]:
    log.seek(offset)
    text = log.read().decode(errors="replace")
    return sum("WARNING" in line for line in text.splitlines()), offset + len(text.encode())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="run folder or checkpoint (default: the shipped default model)")
    parser.add_argument("--image", help="the X-ray to post (default: the first test-split pneumonia image)")
    parser.add_argument("--slow", type=int, nargs="*", default=[64, 256], help="slow-loris client counts")
    parser.add_argument("--slow-seconds", type=float, default=20.0)
    parser.add_argument("--idle-rate", type=float, nargs="*", default=[100.0],
                        help="new idle connections a second (idle flood)")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, nargs="*", default=[64, 128], help="well-behaved client counts")
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--no-retry-after", action="store_true", help="clients retry a 503 at once")
    parser.add_argument("--threads", type=int, help="model CPU threads in the server")
    args = parser.parse_args()
    args.backend, args.max_batch, args.batch_window_ms = "auto", None, None  # the server's defaults
    image_path = Path(args.image) if args.image else default_image()
    image = image_path.read_bytes()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    results: dict = {"image": image_path.name, "image_bytes": len(image), "slow_loris": [], "idle_flood": [],
                     "load": []}
    with tempfile.TemporaryFile() as log:
        server = start_server(args, port, log)
        try:
            ready = wait_ready(url, server, log)
            results["model_id"], results["backend"] = ready["model_id"], ready.get("backend")
            offset = 0
            asyncio.run(well_behaved(url, image, clients=4, seconds=3.0, retry_after=True))  # warm-up
            scenarios = [  # (results key, values, seconds, the scenario for one value)
                ("slow_loris", args.slow, args.slow_seconds,
                 lambda n, t: slow_loris(url, port, image, clients=n, seconds=t)),
                ("idle_flood", args.idle_rate, args.idle_seconds,
                 lambda r, t: idle_flood(url, port, image, rate=r, seconds=t)),
                ("load", args.clients, args.load_seconds,
                 lambda n, t: well_behaved(url, image, clients=n, seconds=t, retry_after=not args.no_retry_after))]
            for key, values, seconds, scenario in scenarios:
                for value in values:
                    result = asyncio.run(scenario(value, min(max(seconds, 5.0), MAX_SECONDS)))
                    result["server_warnings"], offset = warnings_since(log, offset)
                    results[key].append(result)
                    print(result, flush=True)
                    time.sleep(2.0)
            results["server_alive"] = server.poll() is None
        finally:
            server.terminate()
            try:
                server.wait(10)
            except Exception:  # noqa: BLE001 - stop it whatever happened
                server.kill()
    record("slow-clients", results)


if __name__ == "__main__":
    main()
