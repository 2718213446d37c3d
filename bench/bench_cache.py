"""Cache build time for the whole dataset (issue: <= 60 s on the 2-core machine).

    python bench/bench_cache.py --data ../shared/data/chest_xray [--size 224] [--policy squash]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record

from pneumo.data.cache import build_cache
from pneumo.data.manifest import scan_dataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--policy", default="squash")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        start = time.perf_counter()
        df = scan_dataset(args.data)
        scan_s = time.perf_counter() - start
        start = time.perf_counter()
        cache = build_cache(df, args.data, size=args.size, policy=args.policy, cache_dir=tmp, progress=False)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        build_cache(df, args.data, size=args.size, policy=args.policy, cache_dir=tmp, progress=False)
        reopen_s = time.perf_counter() - start
        result = {"images": len(df), "size": args.size, "policy": args.policy, "scan_s": round(scan_s, 2),
                  "build_s": round(build_s, 2), "reopen_s": round(reopen_s, 4),
                  "cache_mb": round(cache.file.stat().st_size / 1e6, 1)}
        record(f"cache-{args.size}-{args.policy}", result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
