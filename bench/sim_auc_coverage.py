"""Coverage of pneumo's 95 % ROC-AUC interval against the percentile interval it replaced, on binormal scores, by
true AUC and class size (images resampled, as pneumo does without patient groups):
`python bench/sim_auc_coverage.py [--sims 2000]` (seeded; ~5 min on 1 core). Both intervals come from the same
resamples (`pneumo.evaluate.intervals.resample_weights`); pneumo's is `bootstrap_cis`, as every evaluation computes it."""
import argparse
import time

import numpy as np
from scipy.stats import norm

from pneumo.evaluate.intervals import percentile_ci, resample_weights, weighted_auc
from pneumo.evaluate.metrics import bootstrap_cis, is_small_sample

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--sims", type=int, default=2000)
parser.add_argument("--resamples", type=int, default=1000)
args = parser.parse_args()
rng = np.random.default_rng(0)
start = time.perf_counter()
print("| true AUC | images a class | percentile coverage | pneumo (BCa) coverage | simulations |")
print("|---|---|---|---|---|")
for true_auc in (0.75, 0.85, 0.95, 0.98):
    delta = np.sqrt(2) * norm.ppf(true_auc)
    for n in (10, 15, 20, 30, 50):
        hits = {"percentile": 0, "pneumo": 0}
        for _ in range(args.sims):
            y = np.r_[np.ones(n), np.zeros(n)].astype(int)
            p = norm.cdf(np.r_[rng.normal(delta, 1, n), rng.normal(0, 1, n)])  # scores as probabilities
            seed = int(rng.integers(1 << 30))
            aucs, _ = weighted_auc(resample_weights(2 * n, args.resamples, seed), y, p)
            lo, hi = percentile_ci(aucs, 0.95)
            hits["percentile"] += lo <= true_auc <= hi
            lo, hi = bootstrap_cis(y, p, 0.5, n_resamples=args.resamples, seed=seed)["roc_auc"]
            hits["pneumo"] += lo <= true_auc <= hi  # (nan, nan): not shown (`is_small_sample`)
        shown = f"{hits['pneumo'] / args.sims:.3f}" if not is_small_sample(n, n) else "not shown (< 30 images)"
        print(f"| {true_auc} | {n} | {hits['percentile'] / args.sims:.3f} | {shown} | {args.sims} "
              f"({time.perf_counter() - start:.0f} s) |", flush=True)
