"""Issue 24 items 1 and 5: the progressive-JPEG scan bomb and the lossless WebP, as the red team built them, through the
one decoder every path uses (`pneumo.data.decode.load_image`): the time until the answer and the peak traced memory.

    python bench/bench_decode_bombs.py [--side 7000] [--scans 4000]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import tracemalloc
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "infer"))
from common import record
from test_jpeg_scans import scan_bomb  # the test's own generator: the same file the test refuses

from pneumo.data.decode import load_image
from pneumo.errors import PneumoError


def timed(data: bytes) -> dict:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        shape, answer = load_image(data).shape, "decoded"
    except PneumoError as exc:
        shape, answer = None, f"refused: {exc}"
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"bytes": len(data), "answer": answer, "shape": shape, "seconds": round(seconds, 4),
            "peak_traced_mb": round(peak / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("--scans", type=int, default=4000)
    args = parser.parse_args()
    buf = io.BytesIO()
    Image.new("L", (args.side, args.side), 128).save(buf, format="WEBP", lossless=True)
    rows = {"jpeg_scan_bomb_96px": timed(scan_bomb(args.scans, side=96)),  # the count, not the size, decides
            "jpeg_progressive_normal": timed(scan_bomb(8, side=96)),
            f"webp_lossless_{args.side}": timed(buf.getvalue())}
    record("decode_bombs", {"side": args.side, "scans": args.scans, **rows})


if __name__ == "__main__":
    main()
