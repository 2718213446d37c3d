"""Is a new site's image set like the model's training data? `check_site` answers at the level of the whole set.

The site's images (a folder of JPEG/PNG/DICOM at any depth, found as `pneumo predict` finds them, or a CSV with a
``path`` column) are scored by the model and compared with a **reference**: a seeded random sample of the model's own
training distribution, drawn from the train + val folds of its dataset (``--dataset`` or ``$PNEUMO_DATA``; never the
official test split; images whose bytes also appear in the site's set are left out). Where the model records its
split, the sample comes from its **val fold**: the OOD class means and covariance (and the model) were fitted on the
train fold, whose images score lower than any new image (a half of the val fold against a train + val sample gave
A = 0.73: "shifted"), while the val fold is what the OOD threshold was set on (the same patients' pool, the same mix
of 224 x 224 copies and originals). Without the dataset the reference is what the model's sidecar records: the OOD
threshold is the val percentile P, so a share of (100 - P) % is expected above it, and the training prevalence of
pneumonia (``train_prevalence`` in its metrics or training record, else 0.74, Kermany train); the distribution
comparisons are then not made, and the output says so.

Measurements: (a) the share of images flagged out of distribution and the OOD-score distribution, (b) the share
predicted positive at the stored threshold, (c) the P(pneumonia) distribution, (d) image properties (size, mode,
intensity, a border-vs-centre inversion heuristic, input-gate refusals, DICOM tags).

**The rule.** A measurement is a reason for ``shifted: true`` only when it is significant at ``ALPHA`` = 0.01 AND its
effect is at least a stated minimum (large sets make tiny differences significant):

1. OOD share: a one-sided binomial test against p0 = the design share (100 - P) % (the share of the val fold the
   limit leaves above it by construction), at least 1 % (new images of the training hospital, its official test
   split, run at 1 %); effect = share - p0 >= 0.05. The reference sample's own share is shown,
   not tested against: it is drawn from the very val images that set the limit (a review: its 0-3 flagged images
   made the test depend on the seed).
2. OOD scores (needs the dataset): one-sided Mann-Whitney U, "site scores larger"; effect = A = U / (n_site n_ref),
   the probability that a site image scores above a reference image (Vargha-Delaney A); A >= 0.64 ("medium").
   Not a reason (a note) when the reference holds training images (a model that records no split, or a site that
   holds its val fold): they score lower than any new image.
3. Predicted-positive rate: two-sided Fisher exact test against the reference's rate (without the dataset: a
   binomial test against the training prevalence); effect = Cohen's h, |h| >= 0.5 ("medium").
4. P(pneumonia) distribution (needs the dataset): two-sided Mann-Whitney U; |A - 0.5| >= 0.14 (A >= 0.64 or
   <= 0.36); the Kolmogorov-Smirnov D is reported too.
   3 and 4 are **case mix**, not shift: a site with other prevalence (the training set is 74 % pneumonia) differs
   there while its images are like the training ones, and sensitivity and specificity do not depend on prevalence
   (a review: same-hospital test images at 10 % prevalence were "shifted" every time). They set ``case_mix_differs``
   with their sentences; alone they do not make ``shifted``.
5. Image properties count only when large: images refused by the input gate (`check_radiograph`), and images the
   model's orientation check refuses (turned, flipped or inverted: `pneumo predict` gives them no verdict), each a
   one-sided binomial against max(reference share, 1 %), excess >= 0.05; and the share whose border is brighter than
   their centre (inverted grey scale?), two-sided Fisher exact against the reference, difference >= 0.25. Sizes, modes and
   intensities are notes, never reasons (the Kermany train set itself mixes 224 x 224 copies with originals).

``shifted`` is true when 1, 2 or 5 gives a reason; the reasons are plain-English sentences. Byte-identical files are
measured once (a folder of copies is one image, however many times it is there).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo.adapt.site_images import Scored, score_images
from pneumo.adapt.site_report import property_notes, summarize_properties
from pneumo.adapt.sources import site_items, source_config
from pneumo.adapt.stats import cohen_h, fisher_test, rank_test, share_test
from pneumo.config import MAX_SEED
from pneumo.data.files import MAX_LISTED
from pneumo.errors import ConfigError, DataError
from pneumo.evaluate.scoring import val_fold_mismatch
from pneumo.infer.predictor import Predictor
from pneumo.provenance import record as provenance_record

log = logging.getLogger(__name__)

ALPHA = 0.01
# the measurements that can each give a reason (OOD share, OOD scores, input gate, orientation check, border-brighter
# share): a site like the training data meets p < ALPHA in at least one of them with probability at most
# N_TESTS x ALPHA (Bonferroni), less with the effect-size floors below (the two case-mix tests: 2 x ALPHA more, for
# case_mix_differs at the training prevalence)
N_TESTS = 5
MIN_OOD_EXCESS = 0.05
MIN_OOD_P0 = 0.01  # the OOD share tested against: at least this, as the gate's and the orientation check's
MIN_A = 0.64  # Vargha-Delaney A: 0.56 small, 0.64 medium, 0.71 large
MIN_H = 0.5  # Cohen's h: 0.2 small, 0.5 medium, 0.8 large
MIN_GATE_EXCESS = 0.05
MIN_INVERSION_DIFF = 0.25
KERMANY_PREVALENCE = 0.743  # 3,875 of 5,216 Kermany train images are pneumonia
DEFAULT_SAMPLE = 300
MIN_IMAGES = 10
# below this many scored site images a "not shifted" is weak evidence: a review's simulation with this module's tests
# found a 10 % out-of-distribution share (against 0.5 % expected) in 64 % of 20-image sites and 89 % of 50-image ones
POWERED_IMAGES = 50
SITE_JSON = "site.json"  # the verdict
SITE_FILES = frozenset({SITE_JSON, "images.csv", "report.html", "figures"})  # what a site check writes, all


@dataclass
class Reference:
    """What the site is compared with: a scored sample of the training pool (``kind`` "dataset") or only what the
    model's sidecar records (``kind`` "sidecar", ``scored`` None)."""

    kind: str
    prevalence: float
    prevalence_source: str
    ood_design_share: float | None
    scored: Scored | None = None
    dataset: str | None = None
    pool: str = ""
    pool_size: int = 0
    seed: int = 0
    expected: str = "the training prevalence"  # what ``prevalence`` is, in the case-mix sentence
    in_sample: bool = False  # the sample holds training images (no val fold to draw from): they score low
    pediatric: bool = True  # the model learned from Kermany's children only (not adapted to another site)


def training_pool(meta, root: str | os.PathLike) -> pd.DataFrame:
    """The train + val folds of the model's dataset (as its stored config splits it; the official test split never),
    with ``path`` relative to the dataset and the ``fold`` column."""
    from pneumo.adapt.sources import model_folds
    from pneumo.data.manifest import scan_dataset

    found = model_folds(meta, root)
    folds = found[1] if found else scan_dataset(root).assign(fold=lambda df: df["split"])
    return folds[folds["fold"].isin(["train", "val"])].reset_index(drop=True)


def site_call_rate(meta) -> tuple[float, str] | None:
    """An adapted model at its adaptation's operating point: the share its threshold calls pneumonia on the site it
    was adapted on, from the cross-fitted sensitivity and specificity and that site's prevalence (the model was not
    made for Kermany's case mix: with a low specificity it calls most of its own site's images pneumonia, and a
    site check against the training prevalence then reads that as a different case mix; a review). None otherwise."""
    adaptation, local = meta.extra.get("adaptation") or {}, (meta.metrics or {}).get("site_crossfit") or {}
    counts = (adaptation.get("site") or {}).get("by_label") or {}
    chosen = (adaptation.get("operating_point") or {}).get("threshold")
    n = sum(counts.values())
    if not ("sensitivity" in local and n and chosen == meta.threshold):  # (a derived model keeps only the AUCs)
        return None
    prevalence = counts.get("PNEUMONIA", 0) / n
    rate = local["sensitivity"] * prevalence + (1 - local["specificity"]) * (1 - prevalence)
    return rate, (f"the site it was adapted on ({n} images, {prevalence:.0%} pneumonia; cross-fitted sensitivity "
                  f"{local['sensitivity']:.2f}, specificity {local['specificity']:.2f})")


def recorded_prevalence(meta) -> tuple[float, str]:
    """The training prevalence of pneumonia the model records, else Kermany train's."""
    for where, record in (("metrics", meta.metrics), ("training record", meta.training)):
        value = (record or {}).get("train_prevalence")
        if isinstance(value, (int, float)) and 0 < value < 1:
            return float(value), f"the model's {where}"
    return KERMANY_PREVALENCE, "Kermany train (3,875 of 5,216), not recorded by the model"


def build_reference(predictor: Predictor, *, dataset: str | os.PathLike | None, sample: int, seed: int,
                    exclude_sha256: set[str] | frozenset = frozenset()) -> Reference:
    """A seeded random sample of ``sample`` train + val images of the model's dataset (``dataset``, else
    ``$PNEUMO_DATA``, else the dataset its config records where that path exists), scored; without any, the
    sidecar's record."""
    from pneumo.data.manifest import DatasetSource, resolve_root

    design = (100.0 - predictor.ood.percentile) / 100.0 if predictor.ood is not None else None
    pediatric = not predictor.meta.extra.get("adaptation")  # an adapted model learned from its site's patients too
    location = dataset if dataset not in (None, "") else os.environ.get("PNEUMO_DATA")
    saved = ((source_config(predictor.meta) or {}).get("data") or {}).get("root")
    if not location and saved and Path(saved).exists():  # the dataset the model records, where it is (as adapt reads
        location = saved  # it; a training audit: the site check ignored it)
    if not location:
        rate = site_call_rate(predictor.meta)
        if rate is not None:
            return Reference(kind="sidecar", prevalence=rate[0], prevalence_source=rate[1], ood_design_share=design,
                             expected="the call rate at the site it was adapted on", pediatric=pediatric)
        prevalence, source = recorded_prevalence(predictor.meta)
        return Reference(kind="sidecar", prevalence=prevalence, prevalence_source=source, ood_design_share=design,
                         pediatric=pediatric)
    pool = training_pool(predictor.meta, location)
    mismatch = val_fold_mismatch(predictor.meta, pool[pool["fold"] == "val"], Path(location).name)
    if mismatch:  # another data set under the layout would be "the model's val fold" (a site-check audit)
        raise DataError(f"{mismatch}: give the dataset the model was trained on (--dataset DIR), or set neither "
                        "--dataset nor PNEUMO_DATA to compare the site with the model's records only")
    train = pool[pool["fold"] == "train"]
    prevalence = float((train["label"] != "NORMAL").mean())
    pool = pool[~pool["sha256"].isin(exclude_sha256)]
    val = pool[pool["fold"] == "val"]
    recorded = bool((source_config(predictor.meta) or {}).get("data"))  # an adapted model: its source's
    if recorded and len(val) >= MIN_IMAGES:  # unseen by the model's and the OOD statistics' fit, like a new site
        pool, pool_name, in_sample = val, "the model's val fold", False
    else:
        in_sample = True
        pool_name = ("train + val folds (" + (f"its val fold has {len(val)} images not in the site's set, under "
                     f"{MIN_IMAGES}" if recorded else "the model records no split") + ": training images score "
                     "in-sample, lower than new images)")  # (it said "the val fold is in the site's set": a docs audit)
    if len(pool) < MIN_IMAGES:
        raise DataError(f"{location} holds {len(pool)} reference images not in the site's set: too few")
    rng = np.random.default_rng(seed)
    chosen = pool.iloc[np.sort(rng.choice(len(pool), size=min(sample, len(pool)), replace=False))]
    source = DatasetSource(resolve_root(location))
    items = [(rel, (lambda rel=rel: source.read(rel))) for rel in chosen["path"]]
    log.info("scoring a reference of %d images of %s, %s", len(items), location, pool_name)
    return Reference(kind="dataset", prevalence=prevalence, prevalence_source=f"the train fold of {location}",
                     ood_design_share=design, scored=score_images(predictor, items, "reference"), dataset=str(location),
                     pool=pool_name, pool_size=len(pool), seed=seed, in_sample=in_sample, pediatric=pediatric)


# --- the comparison ---------------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _p(x: float) -> str:
    return f"p = {x:.2g}" if x >= 1e-300 else "p < 1e-300"


def ood_measure(site: Scored, ref: Reference, threshold: float | None) -> dict | None:
    """(a): the flagged share against the design share p0, and the score distributions."""
    if not site.ood_flags or ref.ood_design_share is None:
        return None
    k, n = int(sum(site.ood_flags)), len(site.ood_flags)
    ref_share = None
    if ref.scored is not None and ref.scored.ood_flags:
        ref_share = float(np.mean(ref.scored.ood_flags))
    # the design share, by construction (the reference's share is drawn from the images that set the limit), at
    # least MIN_OOD_P0: new images of the training hospital run above it (the official test split 1 %), which made a
    # like site "shifted" more often than ALPHA (a site-check audit)
    p0 = max(ref.ood_design_share, MIN_OOD_P0)
    p_value = share_test(k, n, p0, "greater")
    out = {"n": n, "n_flagged": k, "share": k / n, "threshold": threshold, "design_share": ref.ood_design_share,
           "reference_share": ref_share, "p0": p0, "p_value": p_value,
           "excess": k / n - p0, "site_median_score": float(np.median(site.ood_scores)), "scores": None}
    if ref.scored is not None and ref.scored.ood_scores:
        out["reference_median_score"] = float(np.median(ref.scored.ood_scores))
        out["scores"] = rank_test(np.asarray(site.ood_scores), np.asarray(ref.scored.ood_scores), "greater")
    return out


def positive_measure(site: Scored, ref: Reference) -> dict:
    """(b) and (c): the predicted-positive rate and the P(pneumonia) distribution."""
    k, n = int(sum(site.positive)), site.n
    out = {"n": n, "n_positive": k, "rate": k / n, "prevalence": ref.prevalence,
           "prevalence_source": ref.prevalence_source, "prevalence_is": ref.expected,
           "p_value_vs_prevalence": share_test(k, n, ref.prevalence, "two-sided"),
           "h_vs_prevalence": cohen_h(k / n, ref.prevalence), "reference_rate": None, "p_pneumonia": None}
    out.update(p_value=out["p_value_vs_prevalence"], effect_h=out["h_vs_prevalence"], compared_with=ref.expected)
    if ref.scored is not None:
        kr, nr = int(sum(ref.scored.positive)), ref.scored.n
        out.update(reference_rate=kr / nr, p_value=fisher_test(k, n, kr, nr), effect_h=cohen_h(k / n, kr / nr),
                   compared_with="the reference sample")
        out["p_pneumonia"] = rank_test(np.asarray(site.p_pneumonia), np.asarray(ref.scored.p_pneumonia),
                                       "two-sided")
        out["reference_median_p"] = float(np.median(ref.scored.p_pneumonia))
    out["site_median_p"] = float(np.median(site.p_pneumonia))
    return out


def verdict(ood: dict | None, positive: dict, site_props: dict, ref_props: dict | None, ref: Reference) -> dict:
    """The rule of the module docstring: reasons (significant AND large enough), the case-mix findings (3 and 4) and
    notes (everything else worth saying). ``shifted`` is true when there is a reason."""
    reasons, notes, kinds = [], [], []
    if ref.kind == "sidecar":
        notes.append("The training dataset was not available (give --dataset or set PNEUMO_DATA): the site is compared "
                     "with what the model records (the OOD design share and the training prevalence) only; the score "
                     "distributions were not compared.")
    if ood is None:
        notes.append("This model has no out-of-distribution statistics: the OOD share was not measured.")
    else:
        if ood["p_value"] < ALPHA and ood["excess"] >= MIN_OOD_EXCESS:
            kinds.append("ood_share")
            reasons.append(f"{ood['n_flagged']} of {ood['n']} images ({_pct(ood['share'])}) are out of distribution, "
                           f"where at most {_pct(ood['p0'])} are expected ({_p(ood['p_value'])}).")
        scores = ood["scores"]
        if scores and scores["p_value"] < ALPHA and scores["effect_a"] >= MIN_A and ref.in_sample:
            notes.append(f"The site's OOD scores are higher than the reference's (A = {scores['effect_a']:.2f}, "
                         f"{_p(scores['p_value'])}), but the reference holds training images, which score lower than "
                         "any new image (half of the val fold scored A = 0.73 against such a sample): not a reason.")
        elif scores and scores["p_value"] < ALPHA and scores["effect_a"] >= MIN_A:
            kinds.append("ood_scores")
            reasons.append(f"The site's OOD scores are higher than the reference's: a site image scores above a "
                           f"reference image with probability A = {scores['effect_a']:.2f} ({_p(scores['p_value'])}).")
    case_mix = []
    h, p = positive["effect_h"], positive["p_value"]
    expected = positive["reference_rate"] if positive["reference_rate"] is not None else positive["prevalence"]
    if p < ALPHA and abs(h) >= MIN_H:  # the raw decision on every scored image (predict withholds some of them)
        case_mix.append(f"P(pneumonia) is at or above the threshold on {_pct(positive['rate'])} of the images, "
                        f"against {_pct(expected)} on {positive['compared_with']} (h = {h:+.2f}, {_p(p)}).")
    dist = positive["p_pneumonia"]
    if dist and dist["p_value"] < ALPHA and abs(dist["effect_a"] - 0.5) >= MIN_A - 0.5:
        side = "higher" if dist["effect_a"] > 0.5 else "lower"
        case_mix.append(f"P(pneumonia) is {side} than on the reference (A = {dist['effect_a']:.2f}, KS D = "
                        f"{dist['ks_d']:.2f}, {_p(dist['p_value'])}).")
    for kind, reason in _property_reasons(site_props, ref_props):
        kinds.append(kind)
        reasons.append(reason)
    notes += property_notes(site_props, ref_props, pediatric=ref.pediatric)
    return {"shifted": bool(reasons), "reasons": reasons, "reason_kinds": kinds, "case_mix_differs": bool(case_mix),
            "case_mix": case_mix, "notes": notes}


def _excess(k: int, n: int, p0: float) -> float | None:
    """The one-sided p-value of k of n against p0 when the excess share is also large enough (a reason), else None."""
    if not n or k / n - p0 < MIN_GATE_EXCESS:
        return None
    p = share_test(k, n, p0, "greater")
    return p if p < ALPHA else None


def _property_reasons(site: dict, ref: dict | None) -> list[tuple[str, str]]:
    """(kind, sentence) of each image property that is a reason: ``gate``, ``orientation``, ``inversion``."""
    reasons = []
    n = site["n_decoded"]
    k, p0 = site["n_refused_by_gate"], max(ref["share_refused_by_gate"] if ref else 0.0, 0.01)
    if (p := _excess(k, n, p0)) is not None:
        reasons.append(("gate", (f"{k} of {n} decoded images ({_pct(k / n)}) do not look like chest radiographs "
                                f"to the input gate ({_p(p)}).")))
    scored, turned = site["n_scored"], site["n_turned"]
    p0 = max(ref["share_turned"] if ref and ref["n_scored"] else 0.0, 0.01)
    if (p := _excess(turned, scored, p0)) is not None:
        reasons.append(("orientation", (f"The orientation check refuses {turned} of {scored} scored images "
                                       f"({_pct(turned / scored)}: turned, flipped or inverted?), where at most "
                                       f"{_pct(p0)} are expected ({_p(p)}); pneumo predict gives them no verdict.")))
    if ref and n and ref.get("n_decoded") and "n_border_brighter" in site and "n_border_brighter" in ref:
        diff = site["share_border_brighter"] - ref["share_border_brighter"]
        p = fisher_test(site["n_border_brighter"], n, ref["n_border_brighter"], ref["n_decoded"])
        if p < ALPHA and abs(diff) >= MIN_INVERSION_DIFF:
            reasons.append(("inversion", (f"{_pct(site['share_border_brighter'])} of the images have a border "
                                         f"brighter than their centre, against {_pct(ref['share_border_brighter'])} "
                                         f"of the reference (inverted grey scale or another framing? {_p(p)}).")))
    return reasons


def check_site(data: str | os.PathLike, out: str | os.PathLike, *, model: str | os.PathLike | None = None,
               dataset: str | os.PathLike | None = None, sample: int = DEFAULT_SAMPLE, seed: int = 0,
               predictor: Predictor | None = None, replace: bool = False) -> dict:
    """Compare a site's images with the model's training distribution; write ``site.json``, ``images.csv`` and
    ``report.html`` into ``out`` (whole or not at all; an earlier check there is replaced only with ``replace``: a
    site's checks over time are its drift record); return site.json's dict.

    Raises:
        DataError: no images, fewer than ``MIN_IMAGES`` scorable images, or a dataset that is not there.
        ConfigError: a reference sample under ``MIN_IMAGES``, a bad seed; ``out`` holds files that aren't a site check,
            or an earlier one without ``replace``.
    """
    from pneumo import atomic
    from pneumo.adapt.site_report import write_site_report

    if sample < MIN_IMAGES:
        raise ConfigError(f"the reference sample (--sample) must hold at least {MIN_IMAGES} images, got {sample}")
    if not 0 <= seed <= MAX_SEED:  # before the scoring (a negative seed failed inside NumPy after it)
        raise ConfigError(f"--seed must be within 0..{MAX_SEED}, got {seed}")
    atomic.check_folder(out, owned=SITE_FILES, replace=replace, what="site check",  # before the long part
                        hint="give --force to replace it, or another --out")
    items, left_out = site_items(data, outputs=(SITE_JSON,))
    predictor = predictor or Predictor(model, backend="torch")
    log.debug("scoring %d site images", len(items))
    site = score_images(predictor, items, "site images")
    if site.n < MIN_IMAGES:
        example = f"; e.g. {Path(site.failed[0]['path']).name}: {site.failed[0]['error']}" if site.failed else ""
        copies = f" ({len(site.copies)} are copies of another file, measured once)" if site.copies else ""
        stages = f"{site.count('gate')} not chest films to the input gate, {site.count('refused')} refused as " \
                 f"predict refuses them (lateral, FOR PROCESSING, no pixels), {site.count('decode')} unreadable"
        raise DataError(f"only {site.n} of {len(items)} images in {data} could be scored ({stages}){copies}, at least "
                        f"{MIN_IMAGES} are needed{example}")
    ref = build_reference(predictor, dataset=dataset, sample=sample, seed=seed,
                          exclude_sha256={p["sha256"] for p in site.properties})
    threshold = predictor.ood.threshold if predictor.ood is not None else None
    ood = ood_measure(site, ref, threshold)
    positive = positive_measure(site, ref)
    site_props = summarize_properties(site)
    ref_props = summarize_properties(ref.scored) if ref.scored is not None else None
    result = {  # paths absolute: site.json is read later, from another folder
        "data": os.path.abspath(data), "model": predictor.model_id,
        "model_sidecar": os.path.abspath(predictor.sidecar), "provenance": provenance_record(),
        "model_named": None if model in (None, "") else str(model),  # as given: the advice names it
        "threshold": predictor.threshold, "n_images": len(items), "n_scored": site.n,
        "few_images": site.n < POWERED_IMAGES,  # "not shifted" then says little: check more images
        "n_unreadable": site.count("decode"), "n_refused": site.count("refused"), "refused": site.refused_kinds(),
        "n_refused_by_gate": site.count("gate"), "unreadable": site.failed, "n_copies": len(site.copies),
        "copies": dict(list(site.copies.items())[:MAX_LISTED]), **left_out,
        **verdict(ood, positive, site_props, ref_props, ref),
        "reference": {"kind": ref.kind, "dataset": os.path.abspath(ref.dataset) if ref.dataset else None,
                      "pool": ref.pool or None, "pool_size": ref.pool_size, "n": ref.scored.n if ref.scored else 0,
                      "n_failed": len(ref.scored.failed) if ref.scored else 0, "seed": ref.seed,
                      "n_copies": len(ref.scored.copies) if ref.scored else 0,  # drawn, but one image's bytes again
                      "prevalence": ref.prevalence, "prevalence_source": ref.prevalence_source,
                      "ood_design_share": ref.ood_design_share},
        "ood": ood, "positive": positive, "properties": {"site": site_props, "reference": ref_props},
        "rule": {"alpha": ALPHA, "n_tests": N_TESTS, "family_wise_bound": N_TESTS * ALPHA,
                 "min_ood_excess": MIN_OOD_EXCESS, "min_a": MIN_A, "min_h": MIN_H,
                 "min_gate_excess": MIN_GATE_EXCESS, "min_inversion_difference": MIN_INVERSION_DIFF},
    }
    frame = pd.DataFrame({"path": site.paths, "p_pneumonia": site.p_pneumonia, "positive": site.positive})
    withheld = np.array(site.turned, dtype=bool)
    if len(site.ood_scores) == site.n:
        frame["ood_score"], frame["ood"] = site.ood_scores, site.ood_flags
        withheld |= np.array(site.ood_flags, dtype=bool)
    # an image predict gives no verdict (out of distribution, or turned) gets no per-image call here either (the site
    # rates count every image)
    frame["turned"] = site.turned
    frame["positive"] = frame["positive"].where(~withheld, None)
    with atomic.folder(out, owned=SITE_FILES, replace=replace) as folder:  # whole or not at all
        atomic.write_json(folder / SITE_JSON, atomic.to_jsonable(result))  # strict JSON: a non-finite score is null
        atomic.write_csv(folder / "images.csv", frame)
        write_site_report(result, site, ref.scored, folder)
    return result
