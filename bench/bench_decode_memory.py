"""Peak memory of `pneumo serve` for 4 concurrent worst-case uploads within the default limits (issue 12 item 3).

    python bench/bench_decode_memory.py [--model RUN] [--clients 4] [--threads 2]

Starts `pneumo serve` on 127.0.0.1 in its own process, waits for /readyz, warms it up with a real X-ray, then for each
worst case (the largest image of each kind that the default limits accept: 20 MB upload, 50 M pixels, 256 MB decode
budget) resets the peak-RSS counters (``/proc/PID/clear_refs``) of the server and its child processes (the decode
workers since issue 24), posts ``--clients`` copies at once and reads their high-water marks (``VmHWM``, summed: an
upper bound of the simultaneous peak). Reports the growth above the idle resident size, per case.

The decoder's formula (docs/USAGE.md, "Memory per image"): one decode holds about pixels x (bytes per decoded pixel + 1) +
~40 MB of strip buffers, at most `decode_slots` (2) at a time.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
import numpy as np
from bench_service import default_image, free_port, start_server, wait_ready
from common import family, record
from PIL import Image


def _pattern(side: int, top: float) -> np.ndarray:
    """A smooth 2-D pattern that compresses well and passes the input gate (every row and column varies)."""
    axis = np.linspace(0.0, 1.0, side, dtype=np.float32)
    return (np.add.outer(axis, axis ** 2) * (top / 2)).astype(np.float32)


def _encode(array: np.ndarray, mode: str | None, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, fmt, **save)
    return buffer.getvalue()


def worst_cases() -> dict[str, bytes]:
    """Each under 20 MB: 16-bit PNG 7000^2, float32 TIFF 7000^2 (deflate), RGBA PNG 7071^2 (50 M pixels)."""
    cases = {"png16_7000": _encode(np.rint(_pattern(7000, 60000)).astype(np.uint16), None, "PNG", compress_level=1)}
    cases["float_tiff_7000"] = _encode(np.round(_pattern(7000, 1.0), 2), "F", "TIFF", compression="tiff_deflate")
    gray = np.rint(_pattern(7071, 255)).astype(np.uint8)
    cases["rgba_png_50mpx"] = _encode(np.dstack([gray, gray, gray, np.full_like(gray, 255)]), "RGBA", "PNG",
                                      compress_level=1)
    return cases


def memory(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))


def family_memory(pids: list[int], key: str) -> int:
    """Summed over the processes (for VmHWM an upper bound of the simultaneous peak)."""
    return sum(memory(pid, key) for pid in pids if Path(f"/proc/{pid}").exists())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cases = worst_cases()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    results = {}
    with tempfile.TemporaryFile() as log:
        server = start_server(args, port, log)
        try:
            ready = wait_ready(url, server, log)
            xray = default_image().read_bytes()
            with httpx.Client(base_url=url, timeout=300) as client:
                assert client.post("/api/v1/predict", files={"file": ("x.jpeg", xray)}).status_code == 200

                def post(data: bytes) -> int:
                    return client.post("/api/v1/predict", files={"file": ("worst", data)}).status_code

                for name, data in cases.items():
                    time.sleep(1.0)
                    pids = family(server.pid)
                    for pid in pids:
                        Path(f"/proc/{pid}/clear_refs").write_text("5")
                    idle = family_memory(pids, "VmRSS")
                    start = time.perf_counter()
                    with ThreadPoolExecutor(args.clients) as pool:
                        statuses = list(pool.map(post, [data] * args.clients))
                    peak = family_memory(pids, "VmHWM")
                    results[name] = {"upload_mb": round(len(data) / 1e6, 2), "statuses": statuses, "processes": len(pids),
                                     "idle_rss_mb": round(idle / 1e6), "peak_rss_mb": round(peak / 1e6),
                                     "growth_mb": round((peak - idle) / 1e6),
                                     "seconds": round(time.perf_counter() - start, 1)}
                    print(name, results[name], flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    worst = max(results.values(), key=lambda r: r["growth_mb"])
    record("decode_memory", {"model_id": ready.get("model_id"), "clients": args.clients, "cases": results,
                             "worst_growth_mb": worst["growth_mb"], "target_growth_mb": 1500})


if __name__ == "__main__":
    main()
