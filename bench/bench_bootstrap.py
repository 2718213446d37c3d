"""Bootstrap CIs on a test-split-sized set: 1,000 resamples of 624 scores (what every evaluation runs).

    python bench/bench_bootstrap.py [--n 624] [--resamples 1000] [--repeats 5]

(Was a unit test's "under 2 s" assertion; a time belongs here, on a named machine.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record

from pneumo.evaluate.metrics import bootstrap_cis


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=624)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(8)
    y = (rng.random(args.n) < 0.62).astype(int)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(6)
    seconds = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        bootstrap_cis(y, p, 0.5, n_resamples=args.resamples, seed=repeat)
        seconds.append(time.perf_counter() - start)
    best, median = min(seconds), float(np.median(seconds))
    record("bootstrap", {"n": args.n, "resamples": args.resamples, "seconds": seconds, "best_s": best,
                         "median_s": median})
    print(f"| bootstrap CIs, {args.resamples} resamples of {args.n} | {best:.2f} s best, {median:.2f} s median |")


if __name__ == "__main__":
    main()
