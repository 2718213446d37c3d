"""Model cards, built one way for every model: the shipped default (`tools/ship_model.py` writes its ``.md``), an
adapted model (`pneumo adapt` writes ``model.md``) and a run or a derived model (built from its sidecar when printed).

A card is a title, the research-use line, a summary, sections (metrics as tables, each value with its 95 % CI), the
intended use and the limits; `model_card_text` prints it followed by the facts read from the checkpoint."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from pneumo import atomic
from pneumo.errors import IntegrityError, one_line
from pneumo.models.ood import load_ood
from pneumo.models.orientation import load_orientation
from pneumo.models.records import verify_onnx
from pneumo.models.scores import threshold_on_calibrated_scale
from pneumo.models.sidecar import (
    CARD_KEY,
    CheckpointMeta,
    read_meta,
    resolve_model,
    stem_of,
    verify_weights,
    weights_path,
    write_meta,
)
from pneumo.policy import at_chance, low_specificity_warning, missed_pneumonia_warning, small_sample_warning
from pneumo.templates import fmt_ci, fmt_threshold

RESEARCH_ONLY = "**Research use only — not a medical device.**"
# (an export audit: a model that had just failed at a site showed the same card, without a word)
OTHER_EVALUATIONS = ("Evaluations on other images (`pneumo evaluate --data`) are not part of this card: each writes "
                     "its own report.")
INTENDED_USE = ("Research on pneumonia detection in **pediatric** frontal chest X-rays like those of the Guangzhou "
                "Women and Children's Medical Center (Kermany et al.), ages about 1-5: triage experiments, teaching, "
                "benchmarking. Not a medical device: not for diagnosing or triaging patients.")
LIMITS = (("Trained and validated on one hospital's images: at another hospital (adults, other scanners, other "
          "prevalence) it is a different model. Check a site with `pneumo site check`, set its operating point with "
          "`pneumo operating-point` or adapt it (a binary model) with `pneumo adapt` on labelled local images first. Images flagged "
          "out of distribution get no verdict. Labels of the source data are image-level and noisy."),
          ("An image without a verdict (\"not assessed\") is not a normal result: read it without the model. A heat map "
           "shows, coarsely, what influenced the score, not where disease is: do not use it to localise pneumonia."))
HEADLINE = ("accuracy", "sensitivity", "specificity", "roc_auc")


_MD_SPECIAL = str.maketrans({ch: f"\\{ch}" for ch in "\\|<>`"})
_LINK = re.compile(r"\](?=[(\[])")


def md_text(value: object) -> str:
    """``value`` as markdown text that stays what it is: one line (control characters escaped), and a ``|`` (a
    table's column), ``<`` / ``>`` (HTML) or a backtick (a code span) from a site's folder names or CSV values
    backslash-escaped, so it shows as written and cannot shift a table's columns or carry markup; and a ``(`` or ``[``
    right after a ``]``, so that no ``[text](url)`` or ``![image](url)`` of a CSV value or file name becomes a live
    link or a remote image in a card that is served and rendered (a review). Our own ``[lo, hi]`` intervals read as
    written."""
    return _LINK.sub(r"]\\", one_line(str(value)).translate(_MD_SPECIAL))


class Markdown(str):
    """A cell that is markdown already (a link this code made, its text through `md_text`): `md_table` keeps it."""


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table's lines; every cell through `md_text` but a `Markdown` one (the one table writer: cards,
    adapt reports, `pneumo compare`'s leaderboard, the selection of `compare --select`)."""
    def cell(value: object) -> str:
        return value if isinstance(value, Markdown) else md_text(value)

    return [f"| {' | '.join(md_text(h) for h in header)} |", "|" + "---|" * len(header),
            *(f"| {' | '.join(cell(c) for c in row)} |" for row in rows)]


def metric_rows(keys: Sequence[str], *columns: tuple[dict, dict]) -> list[list[str]]:
    """One row per metric: its name, then ``value [CI]`` from each ``(metrics, cis)`` column."""
    return [[key.replace("_", "-"), *(fmt_ci(metrics.get(key), cis.get(key)) for metrics, cis in columns)]
            for key in keys]


def build_card(title: str, *, summary: Sequence[str] = (), sections: Sequence[tuple[str, Sequence[str]]] = (),
               intended_use: str = INTENDED_USE, limits: Sequence[str] = LIMITS) -> str:
    """The card's markdown: title, research-use line, summary lines, ``(heading, lines)`` sections, intended use,
    limits."""
    lines = [f"# {title}", "", RESEARCH_ONLY, ""] + ([*summary, ""] if summary else [])
    for heading, body in [*sections, ("Intended use", [intended_use]), ("Limits", [f"- {item}" for item in limits])]:
        lines += [f"## {heading}", "", *body, ""]
    return "\n".join(lines).rstrip() + "\n"


def _warnings(test: dict, ci: dict, cells: dict | None = None) -> list[str]:
    """What the evaluation's headline warns of these figures, for the card (a training audit: the report said "do not
    use" and the card did not): a small sample (from the confusion ``cells``; a reporting audit: a smoke run's card
    showed ROC-AUC 0.570 on 24 images without a word), chance-level ranking, most pneumonias missed, most normal films
    called pneumonia."""
    said = [small_sample_warning(cells or {}),
            ("the model does not separate pneumonia from normal on these images (ROC-AUC "
             f"{fmt_ci(test.get('roc_auc'), ci.get('roc_auc'))}): do not use it") if at_chance(test, ci) else None,
            missed_pneumonia_warning(test.get("sensitivity"), ci.get("sensitivity")),
            low_specificity_warning(test.get("specificity"), ci.get("specificity"))]
    said = [w for w in said if w]
    return ["", f"**Warning:** {md_text('; '.join(said))}."] if said else []


def with_ci(chosen: dict, key: str, ci_key: str | None = None) -> str:
    """``0.950 [0.890, 0.980]``: a value of an operating point's ``chosen_on`` record with its interval (exact for the
    proportions; an older record, or an AUC without one: the value alone), or ``n/a``."""
    value, ci = chosen.get(key), chosen.get(ci_key or f"{key}_exact_ci")
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci[:2] else "")


def _performance(meta: dict) -> list[str]:
    """Test metrics with CIs, or what a derived model has instead (its operating point's validation figures)."""
    metrics = meta.get("metrics") or {}
    test = {k: v for k, v in (metrics.get("test") or {}).items() if isinstance(v, float)}
    if any(key in test for key in HEADLINE):
        data = (meta.get("config") or {}).get("data") or {}
        n = f"{metrics['test_n']} images" if isinstance(metrics.get("test_n"), int) else None
        subset = (f"a subset: data.limit_per_class = {data['limit_per_class']}" if data.get("limit_per_class")
                  else None)  # (a training audit: the card read as the official split's figures)
        where = ", ".join(md_text(x) for x in (n, subset, data.get("root")) if x)  # a run's own split, or the official one
        three = metrics.get("test_3class")
        vs = ", pneumonia (either class) vs normal" if three else ""
        lines = [f"The test split of its dataset{f' ({where})' if where else ''}, at this operating point (95 % CI){vs}:",
                 "",
                 *md_table(["metric", "value"], metric_rows(HEADLINE, (test, metrics.get("test_ci") or {}))),
                 *_warnings(test, metrics.get("test_ci") or {}, metrics.get("test"))]
        if three:  # a 3-class model's own figures, on the same images
            lines += ["", "Three classes (normal / bacteria / virus) on the same images:", "",
                      *md_table(["metric", "value"], metric_rows(("accuracy", "macro_f1", "bacteria_vs_virus_roc_auc"),
                                                                 (three, metrics.get("test_3class_ci") or {})))]
        return [*lines, "", OTHER_EVALUATIONS]
    op = meta.get("operating_point")
    if op:
        chosen = op.get("chosen_on", {})
        lines = [(f"Not measured at this operating point yet (`pneumo evaluate --model` this folder). Where the "
                  f"threshold was chosen ({chosen.get('n')} images of {md_text(chosen.get('kind'))}, "
                  f"{chosen.get('n_pneumonia')} with pneumonia): sensitivity "
                  f"{with_ci(chosen, 'sensitivity')}, specificity "
                  f"{with_ci(chosen, 'specificity')}"
                  + (f", ROC-AUC {with_ci(chosen, 'roc_auc', 'roc_auc_ci')}" if chosen.get("roc_auc") is not None else "")
                  + " (95 % CI; optimistic: the same images chose it).")]
        if op.get("warning"):  # what `pneumo operating-point` warned, with the folder (a review: the card left it out)
            lines += ["", f"**Warning, recorded when this operating point was set:** {md_text(op['warning'])}"]
        return lines
    return ["Not measured yet: run `pneumo evaluate --model` on this run."]


def _facts(meta: dict, sidecar: os.PathLike) -> list[str]:
    facts = [f"- file: {md_text(sidecar)}",
             (f"- architecture: {meta.get('arch', '?')} ({meta.get('mode', '?')}), input {meta.get('input_size')} px "
              f"{meta.get('resize_policy', 'squash')}, intensity {meta.get('intensity', 'none')}"
              + (f", crop {meta['crop']}" if meta.get("crop", "none") != "none" else "")
              + (f", burnt-in markers {meta['markers']}" if meta.get("markers", "none") != "none" else "")),
             f"- classes: {', '.join(meta.get('classes', []))}"]
    if meta.get("threshold_policy"):
        on_calibrated = threshold_on_calibrated_scale(meta["threshold"], meta.get("temperature", 1.0))
        calibrated = f" ({fmt_threshold(on_calibrated)} on the calibrated scale)" if len(meta.get("classes", [])) == 2 else ""
        facts.append(f"- operating point: threshold {fmt_threshold(meta['threshold'])} on the uncalibrated P(pneumonia)"
                     f"{calibrated}, policy {meta.get('threshold_policy', '?')}; temperature "
                     f"{meta.get('temperature', 1.0):.3f} for the "
                     "calibrated probability")
    else:
        facts.append("- operating point: none yet (evaluate the run first)")
    op = meta.get("operating_point")
    if op:
        chosen = op.get("chosen_on", {})
        source = (op.get("derived_from") or {}).get("model")  # version 1 is the run's own: derived from nothing
        facts.append(f"- operating point v{op.get('version')}: chosen on {chosen.get('n')} images of "
                     f"{chosen.get('kind')} ({op.get('created')})" + (f", derived from {source}" if source else ""))
    if meta.get("adaptation"):
        site = meta["adaptation"].get("site") or {}
        facts.append(f"- adapted on {site.get('n_images')} images of {site.get('n_patients')} patients "
                     f"({meta['adaptation'].get('created')})")
    missing = [name for key, name in (("ood", "out-of-distribution"), ("orientation", "orientation")) if not meta.get(key)]
    if missing:  # a model of an older pneumo: the card's "flagged images get no verdict" does not hold for it
        facts.append(f"- checks: no {' and no '.join(missing)} check: this model gives a verdict on any image, X-ray "
                     f"or not (`pneumo ood fit --model` on {md_text(sidecar)} fits them)")
    if meta.get("sha256"):
        facts.append(f"- weights sha256: {meta['sha256']} (checked against the weights file, where there is one)")
    return facts


def model_card_text(model: str | os.PathLike | None = None) -> str:
    """The card of a run folder, checkpoint or None/"default" (the shipped model): its ``<stem>.md`` (the shipped
    and adapted models have one) or one built from its sidecar, then the facts of the checkpoint; reads files only.

    Raises:
        ModelError: a sidecar that does not check out (`read_meta`), a missing or changed check file (OOD statistics,
            orientation check); IntegrityError: weights or card not the recorded ones.
    """
    sidecar = resolve_model(None if model in (None, "default") else model)
    checked = read_meta(sidecar)  # as every command reads a sidecar: a broken one is one line, not a traceback
    onnx = sidecar.with_suffix(".onnx")
    if weights_path(sidecar, checked).is_file() or not onnx.is_file():  # the weights the card describes are the
        verify_weights(sidecar, checked)  # recorded ones (a folder with neither them nor an export: refused)
    elif not verify_onnx(onnx, checked.sha256):  # an export's folder: its recorded ONNX file, as predict loads it
        raise IntegrityError(f"{onnx.name} has no checksum record ({onnx.name}.sha256): refusing it")
    load_ood(sidecar, checked.ood)  # and its checks, which predict and serve refuse to run without (a review)
    load_orientation(sidecar, checked.extra.get("orientation"))
    meta = checked.to_json()  # the values checked above, not a second read of the file
    return f"{card_of(sidecar, checked).rstrip()}\n\n## Facts from the checkpoint\n\n" + "\n".join(_facts(meta, sidecar)) + "\n"


def card_of(sidecar: os.PathLike, meta: CheckpointMeta | None = None) -> str:
    """The card's markdown: the model's ``<stem>.md`` (its SHA-256 recorded in the sidecar), or one built from its
    sidecar (a run has no file of its own)."""
    meta = read_meta(sidecar) if meta is None else meta
    markdown = card_markdown(sidecar, meta)
    if markdown is None:
        payload = meta.to_json()
        name = (payload.get("config") or {}).get("name") or Path(sidecar).parent.name
        if isinstance(payload.get("adaptation"), dict):  # adapted by an older pneumo: no recorded card
            return _unrecorded_adapted_card(Path(sidecar).parent.name, payload)
        markdown = build_card(f"Model card: {md_text(name)}", sections=[("Performance", _performance(payload))])
    return markdown


def _unrecorded_adapted_card(name: str, payload: dict) -> str:
    """The card of an adapted model whose sidecar records none (an older pneumo adapted it): its own file is never
    shown unrecorded, and the generic card described the source hospital's model, without the adaptation's figures or
    its do-not-deploy warning (an upgrade review); built from the checked sidecar's adaptation record."""
    adaptation, metrics = payload["adaptation"], payload.get("metrics") or {}
    site = adaptation.get("site") if isinstance(adaptation.get("site"), dict) else {}
    cross = {k: v for k, v in (metrics.get("site_crossfit") or {}).items() if isinstance(v, float)}
    point = (adaptation.get("operating_points") or {}).get(payload.get("threshold_policy") or "") or {}
    own = point.get("threshold") == payload.get("threshold")  # not a later operating point set on other images
    lines = [(f"Adapted by an older pneumo to {md_text(site.get('n_images', '?'))} images of "
             f"{md_text(site.get('n_patients', '?'))} patients of {md_text(site.get('data', 'a site'))}. Its own card is "
             "not recorded in its sidecar and is not shown: adapt the source model again with this pneumo for a "
             "verified card.")]
    if cross:
        at = "this operating point" if own else "the adaptation's operating point, not this model's"
        lines += ["", (f"Cross-fitted on those images ({md_text(metrics.get('site_crossfit_n', '?'))} images; no "
                      f"image scored by a model adapted on it), at {at}:"), "",
                  *md_table(["metric", "value"], metric_rows(HEADLINE, (cross, {})))]
    for warning in ((low_specificity_warning(point.get("specificity"), point.get("specificity_exact_ci"),
                                             measured="cross-fitted specificity",
                                             advice="do not deploy it at this operating point"),
                     missed_pneumonia_warning(point.get("sensitivity"), point.get("sensitivity_exact_ci"),
                                              measured="cross-fitted sensitivity",
                                              advice="do not use it to rule pneumonia out at this operating point"))
                    if own else ()):
        lines += ["", f"**Warning**: {warning}."] if warning else []
    return build_card(f"Adapted model: {md_text(name)}", sections=[("Performance", lines)],
                      intended_use=("Research on pneumonia detection in frontal chest X-rays of the site it was adapted "
                                    "to, validated there on other patients before any use. Not a medical device: not "
                                    "for diagnosing or triaging patients."),
                      limits=(("Its figures come from the site's own images it was adapted on (cross-fitted): "
                               "validate it on other patients of the site (`pneumo evaluate --data`)."), LIMITS[1]))


def card_markdown(sidecar: str | os.PathLike, meta: CheckpointMeta | None = None) -> str | None:
    """The model's card, ``<stem>.md`` next to its sidecar (the shipped and adapted models have one), when the
    sidecar records its SHA-256 (``card_sha256``, `record_card`) and the file matches it; None when there is no
    record or no file (an unrecorded card is never shown, and a card left behind in a copy is not needed: the caller
    builds the card from the checked sidecar). A sidecar of the older format records no card: its card is not shown
    until a command rewrites the sidecar (`pneumo ood fit --model`), which records it.

    Raises:
        IntegrityError: the card is not the file the sidecar records (edited, corrupted, replaced, or missing).
    """
    sidecar = stem_of(sidecar).with_suffix(".json")
    markdown = sidecar.with_suffix(".md")
    meta = read_meta(sidecar) if meta is None else meta
    recorded = meta.extra.get(CARD_KEY)
    if not markdown.is_file():
        if recorded is not None:  # a card lost in a copy: a generic one would describe another model (a review)
            raise IntegrityError(f"the model card {markdown} that its sidecar records is missing: copy the whole model "
                                 "folder again")
        return None
    if recorded is None:  # never read: an older sidecar's card too (a red-team review linked one to a secret file,
        return None  # and the service showed it); `write_meta` records it when a command rewrites that sidecar
    data = markdown.read_bytes()
    if hashlib.sha256(data).hexdigest() != recorded:
        raise IntegrityError(f"the model card {markdown} does not match the SHA-256 its sidecar records: it was "
                             "changed after pneumo wrote it; refusing to use the model (copy it again)")
    return data.decode("utf-8", errors="replace")


def record_card(sidecar: str | os.PathLike) -> Path:
    """Record the SHA-256 of the card ``<stem>.md`` just written beside ``sidecar`` in the sidecar."""
    sidecar = stem_of(sidecar).with_suffix(".json")
    digest = atomic.sha256_file(sidecar.with_suffix(".md"))
    meta = read_meta(sidecar)
    return write_meta(sidecar, dataclasses.replace(meta, extra={**meta.extra, CARD_KEY: digest}))
