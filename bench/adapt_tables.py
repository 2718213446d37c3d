"""Markdown tables of `bench_adapt.py`'s JSONL rows (the learning curve, mean over draws with each draw's CI; the
full-adapt rows at the adapted operating point).

    python bench/adapt_tables.py bench/results/adapt_curve.jsonl bench/results/adapt_full.jsonl
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def _ci(block: dict | None) -> str:
    if not block or block.get("auc") is None:
        return "n/a"
    return f"{block['auc']:.3f} [{block['ci'][0]:.3f}, {block['ci'][1]:.3f}]"


def curve(rows: list[dict]) -> str:
    by_n = defaultdict(list)
    for r in rows:
        by_n[r["n"]].append(r)
    out = [("| N labelled (images / patients, mean) | draws | held-out AUC, mean ± SD | per draw [95 % CI] | "
           "`pneumonia_only` AUC, mean | radiologist-labelled AUC, mean (n) | source test AUC, mean | commit |"),
           "|---|---|---|---|---|---|---|---|"]
    for n in sorted(by_n):
        rs = sorted(by_n[n], key=lambda r: r["draw"])
        auc = np.array([r["held_out"]["auc"] for r in rs])
        po = np.mean([r["pneumonia_only"]["auc"] for r in rs])
        rad = [r["radiologist"]["auc"] for r in rs if r["radiologist"]["auc"] is not None]
        src = np.mean([r["source_test"]["auc"] for r in rs])
        label = "0 (shipped model)" if n == 0 else (f"{n} ({np.mean([r['n_images'] for r in rs]):.0f} / "
                                                   f"{np.mean([r['n_patients'] for r in rs]):.0f})")
        out.append(f"| {label} | {len(rs)} | {auc.mean():.3f} ± {auc.std(ddof=1) if len(rs) > 1 else 0:.3f} | "
                   + "; ".join(_ci(r["held_out"]) for r in rs)
                   + f" | {po:.3f} | {np.mean(rad):.3f} ({np.mean([r['radiologist']['n'] for r in rs]):.0f}) | "
                   f"{src:.3f} | {', '.join(sorted({r['commit'] for r in rs}))} |")
    return "\n".join(out)


def full(rows: list[dict]) -> str:
    out = [("| draw | N (patients, positives) | cross-fitted AUC / sens / spec | threshold | held-out AUC [CI] | "
           "held-out sensitivity [exact CI] | held-out specificity [exact CI] | source test AUC before -> after | "
           "time (s) | commit |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["n"], r["draw"])):
        op, m, cf = r["at_operating_point"], r["at_operating_point"]["metrics"], r["crossfit"]
        s = r["source_test"]
        out.append(
            f"| {r['draw']} | {r['n_images']} ({r['n_patients']}, {r['n_pos']}) | {cf['roc_auc']:.3f} / "
            f"{cf['sensitivity']:.3f} / {cf['specificity']:.3f} | {r['operating_point']['threshold']:.3f} | "
            f"{_ci(r['held_out'])} | {m['sensitivity']:.3f} [{op['sensitivity_exact_ci'][0]:.3f}, "
            f"{op['sensitivity_exact_ci'][1]:.3f}] | {m['specificity']:.3f} [{op['specificity_exact_ci'][0]:.3f}, "
            f"{op['specificity_exact_ci'][1]:.3f}] | {s['before']['metrics']['roc_auc']:.3f} -> "
            f"{s['after']['metrics']['roc_auc']:.3f} | {r['adapt_seconds']['total']:.0f} | {r['commit']} |")
    return "\n".join(out)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="+", help="bench/results/*.jsonl files written by bench/bench_adapt.py")
    for name in parser.parse_args().results:
        rows = [json.loads(line) for line in Path(name).read_text().splitlines() if line.strip()]
        kinds = {r["kind"] for r in rows}
        print(f"### {name}\n")
        if "curve" in kinds:
            print(curve([r for r in rows if r["kind"] == "curve"]) + "\n")
        if "full" in kinds:
            print(full([r for r in rows if r["kind"] == "full"]) + "\n")


if __name__ == "__main__":
    main()
