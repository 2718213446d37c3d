"""The accuracy study: each row a config (preset + overrides), run for several seeds through the real product
(`train` + `evaluate_run`), reported on the official test split with everything selected on validation.

    python bench/accuracy.py --data ../shared/data/chest_xray [--rows lite0-probe,lite0-partial-markers,...] [--seeds 0,1,2]

Ensemble rows (ENSEMBLES) average the probabilities of member rows' runs of the same seed, reusing them from the same
--out-dir when they exist.

A "seed" is the split seed and the training seed together: a new patient-grouped val fold each time, so the spread
includes how much the validation-chosen threshold moves. Writes bench/out/accuracy.json and a markdown table.

Rows of options that left the product (eval.val_view, data.train_sources, label smoothing, mixup, EMA, distillation,
train.depthwise_fp32, train.logit_penalty (lite0-partial-markers-logitreg, 5bb3e9a): lite0-probe-valorig, -origtrain, lite0-partial-markers-ls, -mixup, -ema, -distill, -dwfp32,
lite0-finetune-ls) run from the commits BENCHMARKS.md records for them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine, record

from pneumo.allocator import hold_freed_memory
from pneumo.config import load_config
from pneumo.evaluate.runner import evaluate_ensemble, evaluate_run
from pneumo.train.run import train

# name -> (preset, overrides). CPU-feasible rows first; GPU rows need `--device cuda`.
ROWS: dict[str, tuple[str, list[str]]] = {
    "lite0-probe": ("lite0-probe", []),
    "lite0-probe-equalize": ("lite0-probe", ["data.intensity=equalize"]),
    "lite0-probe-clahe": ("lite0-probe", ["data.intensity=clahe"]),
    "lite0-probe-standardize": ("lite0-probe", ["data.intensity=standardize"]),
    "lite0-probe-letterbox": ("lite0-probe", ["data.resize_policy=letterbox"]),
    "lite0-probe-320": ("lite0-probe", ["data.image_size=320"]),
    "lite0-probe-tta": ("lite0-probe", ["eval.tta=true"]),
    "lite1-probe": ("lite1-probe", []),
    "lite2-probe": ("lite2-probe", []),
    "lite0-probe-3class": ("lite0-probe", ["data.task=3class"]),
    "scratch-cnn": ("scratch-cnn", []),
    "scratch-cnn-3class": ("scratch-cnn", ["data.task=3class"]),
    "lite0-partial": ("lite0-partial", []),
    "lite0-partial-markers": ("lite0-partial", ["data.markers=inpaint"]),  # markers and text in-painted
    "lite0-partial-markers-3class": ("lite0-partial", ["data.markers=inpaint", "data.task=3class"]),
    "lite0-partial-markers-erase": ("lite0-partial", ["data.markers=inpaint", "train.augment.erase=0.25"]),
    # fifth round (one seed each unless a row wins): the same configuration, other training seeds on the same split
    # (members of a seed ensemble), a larger input
    "lite0-partial-markers-t1": ("lite0-partial", ["data.markers=inpaint"]),
    "lite0-partial-markers-t2": ("lite0-partial", ["data.markers=inpaint"]),
    "lite0-partial-markers-256": ("lite0-partial", ["data.markers=inpaint", "data.image_size=256"]),
    "lite0-partial-markers-border10": ("lite0-partial", ["data.markers=inpaint", "data.crop=border:0.1"]),
    "lite0-partial-markers-lungs": ("lite0-partial", ["data.markers=inpaint", "data.crop=lungs"]),
    "lite0-partial-markers-strongaug": ("lite0-partial", ["data.markers=inpaint", "train.augment.rotate_deg=15",
                                                          "train.augment.scale=0.2", "train.augment.translate=0.1",
                                                          "train.augment.brightness=0.3", "train.augment.contrast=0.3",
                                                          "train.augment.gamma=0.3", "train.augment.blur=1.5",
                                                          "train.augment.noise=0.05"]),
    # issue 22 item 4 (study branch study/i22-robust): acquisition-shift augmentation, logit regularisation
    "lite0-partial-markers-acq": ("lite0-partial", ["data.markers=inpaint", "train.augment.rotate_deg=15",
                                                     "train.augment.scale=0.2", "train.augment.translate=0.1",
                                                     "train.augment.brightness=0.3", "train.augment.contrast=0.3",
                                                     "train.augment.gamma=0.3", "train.augment.blur=1.5",
                                                     "train.augment.noise=0.05", "train.augment.resolution=0.6",
                                                     "train.augment.jpeg=20", "train.augment.collimation=0.12"]),
    "lite0-partial-markers-320": ("lite0-partial", ["data.markers=inpaint", "data.image_size=320"]),
    "lite0-finetune": ("lite0-finetune", []),
    "lite0-finetune-markers-e8": ("lite0-finetune", ["data.markers=inpaint", "train.epochs=8"]),  # the 8 epochs
    "lite0-finetune-3class": ("lite0-finetune", ["data.task=3class"]),
    "lite0-finetune-focal": ("lite0-finetune", ["train.loss=focal"]),
    "lite0-finetune-strongaug": ("lite0-finetune", ["train.augment.rotate_deg=15", "train.augment.scale=0.2",
                                                     "train.augment.translate=0.1", "train.augment.brightness=0.3",
                                                     "train.augment.contrast=0.3", "train.augment.gamma=0.3"]),
}
# rows trained with another training seed on the same split: train.seed = seed + offset (the split seed stays `seed`)
TRAIN_SEED_OFFSET: dict[str, int] = {"lite0-partial-markers-t1": 100, "lite0-partial-markers-t2": 200}
# name -> member rows: the mean probability of runs of the same split seed (`pneumo evaluate --model RUN --model RUN --out DIR`)
ENSEMBLES: dict[str, list[str]] = {
    "ens-lite012-probe": ["lite0-probe", "lite1-probe", "lite2-probe"],  # = the `ens-lite-probes` preset
    "ens-lite0-probe-views": ["lite0-probe", "lite0-probe-letterbox", "lite0-probe-clahe"],
    "ens-partial-markers-seeds": ["lite0-partial-markers", "lite0-partial-markers-t1", "lite0-partial-markers-t2"],
}
HEAD = ["accuracy", "sensitivity", "specificity", "roc_auc"]


def run_row(name: str, data: str, seeds: list[int], out_dir: Path, extra: list[str]) -> dict:
    if name in ENSEMBLES:
        return run_ensemble(name, data, seeds, out_dir, extra)
    preset, overrides = ROWS[name]
    per_seed = []
    for seed in seeds:
        cfg = load_config(preset, [f"data.root={data}", f"out_dir={out_dir}", f"name={name}-s{seed}",
                                   f"train.seed={seed + TRAIN_SEED_OFFSET.get(name, 0)}", f"data.split_seed={seed}",
                                   *overrides, *extra])
        start = time.perf_counter()
        run_dir = train(cfg, force=True)
        per_seed.append(_row(seed, evaluate_run(run_dir, analysis=False), time.perf_counter() - start))
        print(json.dumps({"row": name, **per_seed[-1]}), flush=True)
    return {"row": name, "preset": preset, "overrides": overrides + extra, "seeds": per_seed,
            "mean": _mean_sd(per_seed)}


def run_ensemble(name: str, data: str, seeds: list[int], out_dir: Path, extra: list[str]) -> dict:
    """Members are reused from earlier rows of this study (same out_dir, same seed) or trained first."""
    per_seed = []
    for seed in seeds:
        members = [out_dir / f"{row}-s{seed}" for row in ENSEMBLES[name]]
        for row, run_dir in zip(ENSEMBLES[name], members):
            if not (run_dir / "metrics.json").is_file():
                run_row(row, data, [seed], out_dir, extra)
        start = time.perf_counter()
        result = evaluate_ensemble(members, out_dir / f"{name}-s{seed}")
        per_seed.append(_row(seed, result, time.perf_counter() - start))
        print(json.dumps({"row": name, **per_seed[-1]}), flush=True)
    return {"row": name, "preset": "+".join(ENSEMBLES[name]), "overrides": extra, "seeds": per_seed,
            "mean": _mean_sd(per_seed)}


def _row(seed: int, result: dict, wall_s: float) -> dict:
    m = result["test"]["metrics"]
    row = {"seed": seed, "val_auc": result["val"]["roc_auc"], "threshold": result["threshold"],
           "temperature": result["temperature"], "ece_before": result["test"]["ece_before"],
           "ece_after": result["test"]["ece_after"], "wall_s": round(wall_s, 1),
           **{k: m[k] for k in HEAD}, "ci": {k: result["test"]["ci"].get(k) for k in HEAD}}
    if "multiclass" in result["test"]:
        mc = result["test"]["multiclass"]
        row.update(acc3=mc["accuracy"], macro_f1=mc["macro_f1"],
                   bv_acc=mc["bacteria_vs_virus"]["accuracy"], bv_auc=mc["bacteria_vs_virus"]["roc_auc"])
    return row


def _mean_sd(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and k != "seed"]
    out = {}
    for k in keys:
        values = [r[k] for r in rows if r.get(k) is not None]
        if values:
            out[k] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return out


def markdown(results: list[dict]) -> str:
    lines = ["| row | seeds | val AUC | test acc | sens | spec | test AUC | ECE before→after | 3-class acc | bac/vir acc, AUC | wall s/seed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["mean"]

        def f(k: str, digits: int = 3, m: dict = m) -> str:
            if k not in m:
                return "–"
            mean, sd = m[k]
            return f"{mean:.{digits}f} ± {sd:.{digits}f}"

        ece = f"{m['ece_before'][0]:.3f}→{m['ece_after'][0]:.3f}" if "ece_before" in m else "–"
        bv = f"{f('bv_acc')}, {f('bv_auc')}" if "bv_acc" in m else "–"
        lines.append(f"| {r['row']} | {','.join(str(s['seed']) for s in r['seeds'])} | {f('val_auc', 4)} | "
                     f"{f('accuracy')} | {f('sensitivity')} | {f('specificity')} | {f('roc_auc')} | {ece} | "
                     f"{f('acc3')} | {bv} | {m['wall_s'][0]:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--rows", default="lite0-probe", help=f"comma list of: {', '.join([*ROWS, *ENSEMBLES])}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out-dir", default=str(OUT / "runs"))
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra override for every row")
    args = parser.parse_args()
    hold_freed_memory()  # as `pneumo train` does for its own process (train() leaves the allocator alone)
    unknown = [name for name in args.rows.split(",") if name not in ROWS and name not in ENSEMBLES]
    if unknown:  # before hours of training, not at the row (a bench review: a KeyError after the earlier rows)
        parser.error(f"unknown row(s) {', '.join(unknown)}; known: {', '.join([*ROWS, *ENSEMBLES])}")
    seeds = [int(s) for s in args.seeds.split(",")]
    results = [run_row(name, args.data, seeds, Path(args.out_dir), args.extra) for name in args.rows.split(",")]
    table = markdown(results)
    print(table)
    tag = args.rows.replace(",", "+")[:80]
    record(f"accuracy-{tag}", {"results": results, "table": table, "machine_note": machine()})


if __name__ == "__main__":
    main()
