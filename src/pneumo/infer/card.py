"""A model's card as text: the ``<stem>.md`` written for it (the shipped and adapted models have one) or, for a run
or a derived model, a card built from its sidecar: intended use, limits, the operating point and where it was chosen,
test metrics with their confidence intervals (or why there are none), then the facts of the checkpoint."""

from __future__ import annotations

import json
import os

from pneumo.models.sidecar import card_markdown, resolve_model

INTENDED_USE = ("Research on pneumonia detection in **pediatric** frontal chest X-rays like those of the Guangzhou "
                "Women and Children's Medical Center (Kermany et al.), ages about 1-5. Not a medical device: no "
                "diagnosis or triage without a clinician.")
LIMITS = ("Trained and validated on one hospital's images: at another hospital (adults, other scanners, other "
          "prevalence) it is a different model. Check a site with `pneumo site check`, set its operating point with "
          "`pneumo operating-point` or adapt it with `pneumo adapt` on labelled local images first. Images flagged "
          "out of distribution get no verdict. Labels of the source data are image-level and noisy.")
HEADLINE = ("accuracy", "sensitivity", "specificity", "roc_auc")


def _metric_lines(metrics: dict) -> list[str]:
    test, cis = metrics.get("test") or {}, metrics.get("test_ci") or {}
    lines = []
    for key in HEADLINE:
        if isinstance(test.get(key), float):
            ci = cis.get(key)
            lines.append(f"- {key.replace('_', '-')}: {test[key]:.3f}"
                         + (f" [95 % CI {ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""))
    return lines


def _performance(meta: dict) -> list[str]:
    """Test metrics with CIs, or what a derived model has instead (its operating point's validation figures)."""
    lines = _metric_lines(meta.get("metrics") or {})
    if lines:
        return ["Official test split, at this operating point:", *lines]
    op = meta.get("operating_point")
    if op:
        chosen = op.get("chosen_on", {})
        return [(f"Not measured at this operating point yet (`pneumo evaluate --model` this folder). Where the "
                 f"threshold was chosen ({chosen.get('n')} images of {chosen.get('kind')}, "
                 f"{chosen.get('n_pneumonia')} with pneumonia): sensitivity "
                 f"{chosen.get('sensitivity', float('nan')):.3f}, specificity "
                 f"{chosen.get('specificity', float('nan')):.3f} (optimistic: the same images chose it).")]
    return ["Not measured yet: run `pneumo evaluate --model` on this run."]


def model_card_text(model: str | os.PathLike | None = None) -> str:
    """The card of a run folder, checkpoint or None/"default" (the shipped model); reads files only."""
    sidecar = resolve_model(None if model in (None, "default") else model)
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    markdown = card_markdown(sidecar)
    if markdown is not None:
        parts = [markdown.rstrip()]
    else:
        name = (meta.get("config") or {}).get("name") or sidecar.parent.name
        parts = [f"# Model card: {name}", f"## Intended use\n\n{INTENDED_USE}", f"## Limits\n\n{LIMITS}",
                 "## Performance\n\n" + "\n".join(_performance(meta))]
    facts = [f"- file: {sidecar}",
             (f"- architecture: {meta.get('arch', '?')} ({meta.get('mode', '?')}), input {meta.get('input_size')} px "
              f"{meta.get('resize_policy', 'squash')}, intensity {meta.get('intensity', 'none')}"
              + (f", crop {meta['crop']}" if meta.get("crop", "none") != "none" else "")),
             f"- classes: {', '.join(meta.get('classes', []))}"]
    if meta.get("threshold_policy"):
        facts.append(f"- operating point: threshold {meta['threshold']:.4f} on the uncalibrated P(pneumonia), policy "
                     f"{meta.get('threshold_policy', '?')}; temperature {meta.get('temperature', 1.0):.3f} for the "
                     "calibrated probability")
    else:
        facts.append("- operating point: none yet (evaluate the run first)")
    op = meta.get("operating_point")
    if op:
        chosen = op.get("chosen_on", {})
        facts.append(f"- operating point v{op.get('version')}: chosen on {chosen.get('n')} images of "
                     f"{chosen.get('kind')} ({op.get('created')}), derived from "
                     f"{(op.get('derived_from') or {}).get('model')}")
    if meta.get("adaptation"):
        site = meta["adaptation"].get("site") or {}
        facts.append(f"- adapted on {site.get('n_images')} images of {site.get('n_patients')} patients "
                     f"({meta['adaptation'].get('created')})")
    if meta.get("sha256"):
        facts.append(f"- weights sha256: {meta['sha256']}")
    parts.append("## Facts from the checkpoint\n\n" + "\n".join(facts))
    parts.append("Research use only, not a medical device.")
    return "\n\n".join(parts) + "\n"
