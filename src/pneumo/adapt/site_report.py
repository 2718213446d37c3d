"""The HTML page of a site check (`pneumo.adapt.check`): the verdict and its reasons, the OOD and P(pneumonia)
histograms (site vs reference), the numbers, the image properties, the files left out, and what to do next; and the
image properties themselves (per image, per set, and the notes they give: notes only, never the verdict's reasons)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo import atomic
from pneumo.templates import escape, figure, fmt_number, page, table
from pneumo.templates.figures import new_figure, save_png

MAX_LISTED = 50
HIST_BINS = 32  # of the grey levels, for the set's intensity histogram


AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}  # DICOM AS: nnnD / nnnW / nnnM / nnnY


def age_years(value: object) -> float | None:
    """A DICOM Age String (``046Y``, ``018M``) in years; None when absent or malformed."""
    text = str(value or "").strip().upper()
    if len(text) != 4 or not text[:3].isdigit() or text[3] not in AGE_UNITS:
        return None
    return int(text[:3]) * AGE_UNITS[text[3]]


def header_properties(data: bytes) -> dict:
    """Format, stored size, mode / bits and, for DICOM, ViewPosition, PhotometricInterpretation, Modality and the
    patient's age in years (PatientAge: the one patient datum read, summarised per set and never stored per image;
    the shipped model learned from children, so adults are the largest shift a site can have, a clinical review).
    Empty where the header cannot be read."""
    try:
        if data[128:132] == b"DICM":
            import pydicom

            tags = ["Rows", "Columns", "BitsStored", "PhotometricInterpretation", "ViewPosition", "Modality",
                    "PatientAge"]
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=tags)
            age = age_years(ds.get("PatientAge"))
            return {"format": "DICOM", "width": int(ds.get("Columns", 0)) or None,
                    "height": int(ds.get("Rows", 0)) or None, "mode": f"{ds.get('BitsStored', '?')}-bit",
                    **{k: str(ds.get(k)) for k in tags[3:6] if ds.get(k) not in (None, "")},
                    **({"age_years": age} if age is not None else {})}
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return {"format": img.format, "width": img.width, "height": img.height, "mode": img.mode}
    except Exception:  # noqa: BLE001 - a header we cannot read is only a missing note; the decoder has the last word
        return {}


def pixel_properties(gray: np.ndarray) -> dict:
    """Intensity statistics of the decoded uint8 image and the mean of its outer 10 % band minus its centre's."""
    h, w = gray.shape
    band = max(1, round(0.1 * min(h, w)))
    inner = np.zeros_like(gray, dtype=bool)
    inner[band:h - band, band:w - band] = True
    centre = gray[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    p1, p50, p99 = np.percentile(gray, [1, 50, 99])
    return {"decoded_width": w, "decoded_height": h, "mean": float(gray.mean()), "std": float(gray.std()),
            "p1": float(p1), "p50": float(p50), "p99": float(p99),
            "border_minus_centre": float(gray[~inner].mean() - centre.mean()) if inner.any() else 0.0,
            "histogram": np.bincount(gray.ravel() // (256 // HIST_BINS), minlength=HIST_BINS) / gray.size}


def summarize_properties(scored) -> dict:
    """Sizes, modes, intensities, the inversion heuristic, gate and orientation-check refusals and DICOM tags of a
    set."""
    props = pd.DataFrame(scored.properties)
    n_gate = scored.count("gate")
    n_turned = int(sum(scored.turned))
    out: dict = {"n_decoded": len(props), "n_refused_by_gate": n_gate,
                 "share_refused_by_gate": n_gate / len(props) if len(props) else 0.0, "n_scored": scored.n,
                 "n_turned": n_turned, "share_turned": n_turned / scored.n if scored.n else 0.0}
    views = [f["view"] for f in scored.failed if f.get("view")]  # refused films (laterals) are views of the site too
    if props.empty:
        return out | ({"dicom": _dicom_counts(props, views)} if views else {})
    width = props.get("width", pd.Series(dtype=float)).fillna(props["decoded_width"])
    height = props.get("height", pd.Series(dtype=float)).fillna(props["decoded_height"])
    sizes = (width.astype(int).astype(str) + "x" + height.astype(int).astype(str)).value_counts()
    out.update({
        "width_median": float(width.median()), "height_median": float(height.median()),
        "share_square": float((width == height).mean()), "top_sizes": [[k, int(v)] for k, v in sizes.head(3).items()],
        "modes": {str(k): int(v) for k, v in props.get("mode", pd.Series(dtype=str)).fillna("?").value_counts().items()},
        "formats": {str(k): int(v) for k, v in props.get("format", pd.Series(dtype=str)).fillna("?").value_counts().items()},
        **{f"{c}_median": float(props[c].median()) for c in ("mean", "std", "p1", "p50", "p99")},
        "intensity_histogram": np.mean(np.stack(props["histogram"].to_list()), axis=0).round(5).tolist(),
        "share_border_brighter": float((props["border_minus_centre"] > 0).mean()),
        "n_border_brighter": int((props["border_minus_centre"] > 0).sum()),
        "dicom": _dicom_counts(props, views),
    })
    ages = props["age_years"].dropna() if "age_years" in props else pd.Series(dtype=float)
    if len(ages):  # counts only: no image's age is kept
        out["age"] = {"n": len(ages), "median_years": round(float(ages.median()), 1),
                      "n_adults": int((ages >= 18).sum()), "n_children_1_to_5": int(ages.between(1, 6, "left").sum())}
    return out


def _dicom_counts(props: pd.DataFrame, views: list[str]) -> dict[str, dict[str, int]]:
    """Counts of each DICOM tag's values over the decoded images, the views also over ``views`` (refused films')."""
    counts = {}
    for tag in ("ViewPosition", "PhotometricInterpretation", "Modality"):
        values = pd.concat([props[tag] if tag in props else pd.Series(dtype=object),
                            pd.Series(views if tag == "ViewPosition" else [], dtype=object)]).dropna()
        if len(values):
            counts[tag] = {str(k): int(v) for k, v in values.value_counts().items()}
    return counts


def property_notes(site: dict, ref: dict | None, *, pediatric: bool = True) -> list[str]:
    """The notes the image properties give; ``pediatric``: the model learned from Kermany's children only (the
    adult-age advice is for such a model, not for one adapted to a site's patients)."""
    notes = []
    if "width_median" not in site:
        return notes
    where = f"; reference {ref['width_median']:.0f} x {ref['height_median']:.0f}" if ref and "width_median" in ref else ""
    notes.append(f"Median stored size {site['width_median']:.0f} x {site['height_median']:.0f} pixels{where} "
                 f"(a note only: size is not a reason; the model resizes every image to its input size).")
    if ref and "mean_median" in ref:
        notes.append(f"Median of the images' mean grey level {site['mean_median']:.0f} (reference "
                     f"{ref['mean_median']:.0f}); median contrast (SD) {site['std_median']:.0f} (reference "
                     f"{ref['std_median']:.0f}).")
        if set(site["modes"]) != set(ref["modes"]):
            notes.append(f"Image modes {site['modes']} (reference {ref['modes']}).")
    for tag, counts in site.get("dicom", {}).items():
        notes.append(f"DICOM {tag}: {counts} (the training images are pediatric AP radiographs, stored as JPEG).")
    if age := site.get("age"):
        notes.append(f"DICOM PatientAge on {age['n']} image(s): median {age['median_years']:g} years, {age['n_adults']} "
                     f"of adults (18 or older), {age['n_children_1_to_5']} of children aged 1-5." + (
                         " This model learned from children aged about 1-5 (the Kermany images carry no ages) and the "
                         "shipped one ranks adult films at chance (README, \"At another hospital\"): for adults use a "
                         "model adapted to them, whatever the verdict above." if pediatric else ""))
    return notes


def histogram(path: Path, site: list[float], reference: list[float] | None, *, xlabel: str,
              line: float | None = None, line_label: str = "") -> Path:
    """Overlaid density histograms of a site's and the reference's values (non-finite values at the right edge)."""
    values = [np.asarray(site, float)] + ([np.asarray(reference, float)] if reference else [])
    finite = np.concatenate([v[np.isfinite(v)] for v in values] + [np.array([line] if line is not None else [])])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    bins = np.linspace(low, high if high > low else low + 1, 31)
    fig = new_figure(5.5, 3.4)
    ax = fig.add_subplot()
    for v, name, colour in zip(values, ("site", "reference"), ("C3", "C0")):
        ax.hist(np.clip(v, low, high), bins=bins, density=True, alpha=0.5, color=colour, label=f"{name} (n={len(v)})")
    if line is not None:
        ax.axvline(line, color="0.2", ls="--", lw=1, label=line_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(frameon=False, fontsize=8)
    return save_png(fig, path)


def _intensity_plot(path: Path, site: list[float], reference: list[float] | None) -> Path:
    """The mean per-image grey-level histogram of the site and of the reference, as lines."""
    fig = new_figure(5.5, 3.4)
    ax = fig.add_subplot()
    levels = (np.arange(HIST_BINS) + 0.5) * (256 / HIST_BINS)
    for values, name, colour in ((site, "site", "C3"), (reference, "reference", "C0")):
        if values:
            ax.plot(levels, values, color=colour, label=name)
    ax.set_xlabel("grey level (0 black, 255 white)")
    ax.set_ylabel("share of pixels")
    ax.legend(frameon=False, fontsize=8)
    return save_png(fig, path)


def next_steps(shifted: bool, few_images: bool = False, case_mix: bool = False, *, kinds: tuple[str, ...] = (),
               model: str | None = None, prevalence: float | None = None) -> str:
    """What to do after the check. ``kinds``: the verdict's reason kinds (`check.verdict`); ``model``: the model
    checked when it is not the shipped one (the commands advised name it); ``prevalence``: the training share of
    pneumonia the site's calls were compared with."""
    flag = f" --model {escape(model)}" if model else ""
    if not shifted and case_mix:
        few = (" With fewer than 50 images, also run the check on more images of this site." if few_images else "")
        share = f" ({100 * prevalence:.0f} % pneumonia)" if prevalence is not None else ""
        return ("<p>The images are like the training data, but the share the model calls pneumonia differs from the "
                f"training set's{share}: most likely another case mix. Prevalence changes the predictive "
                "values (how many positive calls are right); sensitivity and specificity do not depend on it alone "
                "(another mix of disease severity or age moves them too); check both on labelled "
                f"images of this site with <code>pneumo evaluate{flag} --data LABELLED</code> (a folder with NORMAL/ "
                "and PNEUMONIA/, or a path,label CSV), and if they fall short, <code>pneumo adapt</code> on about 200 "
                f"labelled images.{few}</p>")
    if not shifted and few_images:
        return ("<p><strong>Not enough images to tell.</strong> No shift this check can detect was found, but with "
                "fewer than 50 images the check misses real shifts often (a tenth of the images out of distribution "
                "goes unseen about one time in three at 20 images): run it on more images of this site before "
                f"trusting the stored operating point, and check that with <code>pneumo evaluate{flag} --data "
                "LABELLED</code>.</p>")
    if shifted:
        export = ""
        if set(kinds) & {"gate", "orientation", "inversion"}:  # the images as sent, before the model's fit
            export = ("<p>First the images as this site sends them: some are not upright frontal chest films with "
                      "dark lungs (turned, flipped, inverted grey scale, or not chest radiographs, as the reasons "
                      "above say). Fix the export (orientation, MONOCHROME1 photometry, what is sent) and run the "
                      "check again: adapting the model to films sent wrongly teaches it the mistake.</p>")
        return (export + "<p>This site differs from the training data: do not use the model's outputs here until it is "
                "adapted and validated (not only its operating point: its ranking may fail too, as on adult films). "
                "Label about 200 images of this site (both classes, whole patients) and run "
                f"<code>pneumo adapt{flag} --data LABELLED --out DIR</code>, then "
                "<code>pneumo evaluate --model DIR --data HELD_OUT</code> on other labelled patients of the site.</p>")
    return ("<p>No shift this check can detect was found (it measures the images, not the patients' age or the mix "
            "of disease, which can change the model's accuracy as much). The model's stored operating point can be "
            f"checked on labelled images of this site with <code>pneumo evaluate{flag} --data LABELLED</code> (a folder "
            "with NORMAL/ and PNEUMONIA/, or a path,label CSV); a site check is no substitute for that.</p>")


def _row(name: str, site: object, reference: object, p: object = None, effect: object = None) -> list:
    return [name, site, reference, "" if p is None else f"{p:.2g}", "" if effect is None else effect]


def _measures_table(result: dict) -> str:
    ood, pos, ref = result["ood"], result["positive"], result["reference"]
    rows = []
    if ood:
        rows.append(_row("OOD share (flagged)", f"{ood['n_flagged']}/{ood['n']} = {100 * ood['share']:.1f} %",
                         f"{100 * ood['p0']:.1f} % (p0, by construction)"
                         + (f"; sample {100 * ood['reference_share']:.1f} %" if ood.get("reference_share") is not None
                            else ""), ood["p_value"], f"excess {100 * ood['excess']:+.1f} pts"))
        if ood["scores"]:
            s = ood["scores"]
            rows.append(_row("OOD score, median", fmt_number(ood["site_median_score"], 1),
                             fmt_number(ood["reference_median_score"], 1), s["p_value"],
                             f"A = {s['effect_a']:.2f}, KS D = {s['ks_d']:.2f}"))
    expected = pos["reference_rate"] if pos["reference_rate"] is not None else pos["prevalence"]
    rows.append(_row("P(pneumonia) >= threshold (every scored image, those without a verdict too)",
                     f"{pos['n_positive']}/{pos['n']} = {100 * pos['rate']:.1f} %",
                     f"{100 * expected:.1f} %", pos["p_value"], f"h = {pos['effect_h']:+.2f}"))
    rows.append(_row(f"... vs {pos.get('prevalence_is', 'the training prevalence')}", f"{100 * pos['rate']:.1f} %", f"{100 * pos['prevalence']:.1f} %",
                     pos["p_value_vs_prevalence"], f"h = {pos['h_vs_prevalence']:+.2f}"))
    if pos["p_pneumonia"]:
        d = pos["p_pneumonia"]
        rows.append(_row("P(pneumonia), uncalibrated, median", fmt_number(pos["site_median_p"]),
                         fmt_number(pos.get("reference_median_p")), d["p_value"],
                         f"A = {d['effect_a']:.2f}, KS D = {d['ks_d']:.2f}"))
    drawn_again = [f"{ref[k]} {what if ref[k] == 1 else plural}" for k, what, plural in (
        ("n_copies", "copy of another drawn image, measured once", "copies of other drawn images, measured once"),
        ("n_failed", "unreadable", "unreadable")) if ref.get(k)]
    caption = (f"Reference: {ref['n']} random images of {ref['dataset']}, {ref['pool']} (seed {ref['seed']}"
               + "".join(f"; {text}" for text in drawn_again) + ")"
               if ref["kind"] == "dataset" else "Reference: the model's sidecar record (no dataset available)")
    return table(["measure", "site", "reference", "p-value", "effect"], rows, caption=caption)


def _properties_table(props: dict) -> str:
    site, ref = props["site"], props["reference"] or {}
    keys = [("decoded images", "n_decoded"), ("refused by the input gate", "n_refused_by_gate"),
            ("refused by the orientation check", "n_turned"),
            ("median width", "width_median"), ("median height", "height_median"), ("share square", "share_square"),
            ("most common sizes", "top_sizes"), ("modes", "modes"), ("formats", "formats"),
            ("median mean grey level", "mean_median"), ("median SD", "std_median"), ("median p1", "p1_median"),
            ("median p50", "p50_median"), ("median p99", "p99_median"),
            ("share with border brighter than centre", "share_border_brighter"), ("DICOM tags", "dicom"),
            ("ages (DICOM PatientAge)", "age")]

    def cell(d: dict, key: str) -> object:
        value = d.get(key, "")
        if isinstance(value, list):
            return ", ".join(f"{k} ({v})" for k, v in value)
        if key in ("width_median", "height_median") and isinstance(value, float) and value.is_integer():
            return int(value)  # a median of pixel sizes: 320, not 320.000 (a reports audit)
        return str(value) if isinstance(value, dict) else value

    return table(["property", "site", "reference"], [[name, cell(site, k), cell(ref, k)] for name, k in keys])


CASE_MIX = "Case mix (not a shift of the images; sensitivity and specificity do not depend on prevalence)"
CASE_MIX_SHIFTED = ("The share called pneumonia differs too (with the images shifted, it may come from the shift as "
                    "well as from another case mix)")


def write_site_report(result: dict, site, reference, out: Path) -> Path:
    """``out/report.html`` and its two figures; ``site`` and ``reference`` are the scored sets (reference None)."""
    figures = out / "figures"
    sections = []
    verdict = "shifted" if result["shifted"] else "not shifted"
    reasons = "".join(f"<li>{escape(r)}</li>" for r in result["reasons"]) or "<li>none</li>"
    mix = "".join(f"<li>{escape(r)}</li>" for r in result.get("case_mix", []))
    notes = "".join(f"<li>{escape(n)}</li>" for n in result["notes"])
    sections.append(("Verdict", f"<p><strong>{verdict}</strong></p><p>Reasons:</p><ul>{reasons}</ul>"
                     + (f"<p>{CASE_MIX_SHIFTED if result['shifted'] else CASE_MIX}:</p><ul>{mix}</ul>" if mix else "")
                     + (f"<p>Notes:</p><ul>{notes}</ul>" if notes else "")))
    sections.append(("What to do next", next_steps(
        result["shifted"], result.get("few_images", False), result.get("case_mix_differs", False),
        kinds=tuple(result.get("reason_kinds", ())), model=result.get("model_named"),
        prevalence=(result.get("positive") or {}).get("prevalence"))))
    plots = []
    if site.ood_scores:
        path = histogram(figures / "ood_scores.png", site.ood_scores, reference.ood_scores if reference else None,
                         xlabel="OOD score (Mahalanobis distance)", line=result["ood"]["threshold"],
                         line_label="flag threshold")
        plots.append(figure(path, "OOD scores, site vs reference", relative_to=out))
    path = histogram(figures / "p_pneumonia.png", site.p_pneumonia, reference.p_pneumonia if reference else None,
                     xlabel="P(pneumonia)", line=result["threshold"], line_label="stored threshold")
    plots.append(figure(path, "P(pneumonia), site vs reference", relative_to=out))
    intensity = [result["properties"][k].get("intensity_histogram") if result["properties"][k] else None
                 for k in ("site", "reference")]
    if intensity[0]:
        plots.append(figure(_intensity_plot(figures / "intensity.png", *intensity),
                            "Grey levels, site vs reference: the share of pixels per level, averaged over the images "
                            "(inverted or washed-out films show here first)", relative_to=out))
    sections.append(("Measurements", _measures_table(result) + "".join(plots)))
    sections.append(("Image properties", _properties_table(result["properties"])))
    failed = result["unreadable"]
    if failed:
        rows = [[f["path"], f["stage"], f["error"]] for f in failed[:MAX_LISTED]]
        more = f"<p>... and {len(failed) - MAX_LISTED} more (all in site.json).</p>" if len(failed) > MAX_LISTED else ""
        sections.append(("Files not scored", table(["file", "stage", "error"], rows) + more))
    not_read = result.get("not_read") or {}
    if not_read:  # by name (hidden, not an image suffix) or not a file: listed, as evaluate lists them
        rows = [[path, reason] for path, reason in list(not_read.items())[:MAX_LISTED]]
        more = (f"<p>... and {result['n_not_read'] - len(rows)} more.</p>" if result["n_not_read"] > len(rows) else "")
        sections.append(("Files not read", table(["file", "why"], rows) + more))
    rule = result["rule"]
    sections.append(("The rule", (f"<p>A measurement is a reason only when it is significant at "
                     f"{rule['alpha']:g} and its effect is at least: OOD share {100 * rule['min_ood_excess']:.0f} "
                     f"points above the expected share; Mann-Whitney A {rule['min_a']:.2f} for the OOD scores; "
                     f"{100 * rule['min_gate_excess']:.0f} points of input-gate or orientation-check refusals; "
                     f"{100 * rule['min_inversion_difference']:.0f} points of border-brighter share. Sizes, modes "
                     "and intensities are notes only. With "
                     f"{rule['n_tests']} such measurements, a site like the training data shows a significant "
                     f"one by chance with probability at most {rule['family_wise_bound']:.2f} "
                     "(Bonferroni), and less often a reason, which also needs the effect size. The case mix is "
                     f"measured the same way, apart: Cohen's h {rule['min_h']:.1f} for the positive rate, A at least "
                     f"{rule['min_a']:.2f} or at most {1 - rule['min_a']:.2f} for P(pneumonia) (two-sided).</p>")))
    subtitle = (f"{result['data']}: {result['n_scored']} of {result['n_images']} images scored by "
                f"{result['model']}; {result['n_unreadable']} unreadable, {result.get('n_refused', 0)} refused "
                f"(lateral films, DICOM objects without pixels), {result['n_refused_by_gate']} refused by the input gate; "
                f"{result.get('n_copies', 0)} byte-identical copies of another file, measured once (site.json: copies); "
                f"{result.get('n_not_read', 0)} other file(s) not read")
    html = page(f"Site check: {verdict}", sections, subtitle=subtitle)
    return atomic.write_text(out / "report.html", html)
