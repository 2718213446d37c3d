"""Tables and the pre-written rule for issue 22 item 4 (BENCHMARKS.md, "Second round"): per configuration the mean
and SD over seeds of bench_robust.py's measures, the test figures accuracy.py recorded (report only), and the rule.

    python bench/robust_table.py --robust bench/results/robust.jsonl --runs /work/r22/runs
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench_robust import CORRUPTIONS

ROWS = {"reference (`default`)": "lite0-partial-markers", "acquisition augmentation": "lite0-partial-markers-acq",
        "logit penalty 0.02": "lite0-partial-markers-logitreg"}


def config_of(model: str) -> str:
    if model == "shipped":
        return "lite0-partial-markers"
    return Path(model).name.rsplit("-s", 1)[0]


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def fmt(values: list[float], digits: int = 4) -> str:
    m, s = mean_sd(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def test_row(runs: Path, model: str) -> dict | None:
    folder = Path(model) if model != "shipped" else None
    if folder is None or not (folder / "metrics.json").is_file():
        return None
    m = json.loads((folder / "metrics.json").read_text())
    return {"test_auc": m["test"]["metrics"]["roc_auc"], "spec": m["test"]["metrics"]["specificity"],
            "sens": m["test"]["metrics"]["sensitivity"], "wall": (m.get("training") or {}).get("wall_time_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--robust", required=True)
    parser.add_argument("--runs", required=True)
    args = parser.parse_args()
    rows = [json.loads(line) for line in Path(args.robust).read_text().splitlines()]
    by_config: dict[str, list[dict]] = {}
    for row in rows:
        by_config.setdefault(config_of(row["model"]), []).append(row)
    print("| configuration | seeds | val AUC | val log-loss | val saturated | **shifted val AUC** | shifted log-loss | "
          "NIH AUC | NIH median P(normal) | NIH saturated | NIH OOD | commit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    stats = {}
    for label, config in ROWS.items():
        got = by_config.get(config, [])
        if not got:
            print(f"| {label} | 0 | not run |||||||||| |")
            continue
        col = {k: [r["val"][k] for r in got] for k in ("auc", "log_loss", "saturated")}
        shifted = [r["shifted_auc"] for r in got]
        stats[config] = {"shifted": mean_sd(shifted), "auc": mean_sd(col["auc"]), "n": len(got)}
        site = [r["site"] for r in got if "site" in r]
        print(f"| {label} | {len(got)} | {fmt(col['auc'])} | {fmt(col['log_loss'], 3)} | {fmt(col['saturated'], 3)} | "
              f"**{fmt(shifted)}** | {fmt([r['shifted_log_loss'] for r in got], 3)} | "
              f"{fmt([s['auc'] for s in site], 3)} | {fmt([s['median_p_normal'] for s in site], 3)} | "
              f"{fmt([s['saturated'] for s in site], 3)} | {fmt([s.get('ood_share', float('nan')) for s in site], 3)} "
              f"| {', '.join(sorted({r['commit'] for r in got}))} |")
    print("\nPer corruption, val ROC-AUC (mean over seeds):\n")
    print("| configuration | " + " | ".join(CORRUPTIONS) + " |")
    print("|---|" + "---|" * len(CORRUPTIONS))
    for label, config in ROWS.items():
        got = by_config.get(config, [])
        if got:
            print(f"| {label} | " + " | ".join(f"{statistics.fmean(r[c]['auc'] for r in got):.4f}"
                                              for c in CORRUPTIONS) + " |")
    print("\nOfficial test split (accuracy.py's report, read only), per seed:\n")
    print("| run | test AUC | sens:0.95 sensitivity / specificity | training wall s |")
    print("|---|---|---|---|")
    for row in rows:
        t = test_row(Path(args.runs), row["model"])
        if t:
            print(f"| {Path(row['model']).name} | {t['test_auc']:.3f} | {t['sens']:.3f} / {t['spec']:.3f} | "
                  f"{t['wall'] if t['wall'] is None else round(t['wall'])} |")
    ref = stats.get("lite0-partial-markers")
    if ref:
        print("\nRule (pre-written): candidate mean shifted AUC > reference + max(SD); clean val AUC >= reference - 0.002")
        for config, s in stats.items():
            if config == "lite0-partial-markers":
                continue
            margin = max(ref["shifted"][1], s["shifted"][1])
            a = s["shifted"][0] - ref["shifted"][0] > margin
            b = s["auc"][0] >= ref["auc"][0] - 0.002
            print(f"- {config}: shifted {s['shifted'][0]:.4f} vs {ref['shifted'][0]:.4f} (margin {margin:.4f}) -> "
                  f"(a) {a}; clean val AUC {s['auc'][0]:.4f} vs {ref['auc'][0]:.4f} -> (b) {b}; seeds {s['n']}")


if __name__ == "__main__":
    main()
