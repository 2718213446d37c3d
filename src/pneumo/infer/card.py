"""A model's card as text: the ``<stem>.md`` written for it (the shipped model has one), then the facts from its
sidecar (architecture, input, classes, operating point and where it was chosen, test metrics)."""

from __future__ import annotations

import json
import os

from pneumo.models.sidecar import card_markdown, resolve_model


def model_card_text(model: str | os.PathLike | None = None) -> str:
    """The card of a run folder, checkpoint or None/"default" (the shipped model); reads files only."""
    sidecar = resolve_model(None if model in (None, "default") else model)
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    markdown = card_markdown(sidecar)
    parts = [markdown.rstrip()] if markdown is not None else []
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
                     f"{chosen.get('kind')} ({op.get('created')})")
    test = (meta.get("metrics") or {}).get("test") or {}
    if test:
        facts.append("- test split: " + ", ".join(f"{k} {v:.3f}" for k, v in test.items() if isinstance(v, float)))
    if meta.get("sha256"):
        facts.append(f"- weights sha256: {meta['sha256']}")
    parts.append("## Facts from the checkpoint\n\n" + "\n".join(facts))
    parts.append("Research use only, not a medical device.")
    return "\n\n".join(parts) + "\n"
