"""Coverage of the percentile-bootstrap 95 % ROC-AUC interval (images resampled, as pneumo does without patient
groups) on binormal scores, by true AUC and class size: `python bench/sim_auc_coverage.py` (seeded; ~10 min, 1 core)."""
import numpy as np
from scipy.stats import norm

rng = np.random.default_rng(0)

def auc_matrix(pos, neg):
    # pos: (B, n1), neg: (B, n0) -> (B,)
    d = pos[:, :, None] - neg[:, None, :]
    return ((d > 0) + 0.5 * (d == 0)).mean(axis=(1, 2))

for true_auc in (0.75, 0.85, 0.95):
    delta = np.sqrt(2) * norm.ppf(true_auc)
    for n in (10, 15, 20, 30, 50):
        hits, sims, B = 0, 400, 1000
        for _ in range(sims):
            y = np.r_[np.ones(n), np.zeros(n)].astype(int)
            s = np.r_[rng.normal(delta, 1, n), rng.normal(0, 1, n)]
            idx = rng.integers(0, 2 * n, size=(B, 2 * n))  # resample images, as pneumo does without patient groups
            ys, ss = y[idx], s[idx]
            aucs = []
            for b in range(B):
                p, q = ss[b][ys[b] == 1], ss[b][ys[b] == 0]
                if len(p) == 0 or len(q) == 0:
                    continue
                aucs.append(((p[:, None] > q[None, :]) + 0.5 * (p[:, None] == q[None, :])).mean())
            lo, hi = np.percentile(aucs, [2.5, 97.5])
            hits += lo <= true_auc <= hi
        print(f"AUC {true_auc} n/class {n}: coverage {hits / sims:.3f} ({sims} sims x {B} resamples)", flush=True)
