"""The dataset report: one self-contained ``index.html`` (`pneumo.templates`: no CDN, no script) with PNG figures.

Sections: counts per split x class x subtype, image sizes by source kind, pixel intensities per class (a bounded,
seeded sample), sample images, low-resolution copies, exact-duplicate groups, the leakage check, the patient-grouped
train/val split, and the dataset's attribution. Only a bounded sample of images is decoded, so the report of the full
5,856-image set takes seconds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pneumo import atomic
from pneumo.data.decode import load_image
from pneumo.data.manifest import DatasetSource, resolve_root
from pneumo.data.splits import check_leakage, leakage_report
from pneumo.errors import DataError, InputError, LeakageError
from pneumo.templates import Section, escape, figure, page, table
from pneumo.templates.figures import new_figure, save_png

log = logging.getLogger(__name__)

SECTIONS = (
    ("counts", "Counts per split, class and subtype"),
    ("sizes", "Image sizes"),
    ("intensity", "Pixel intensities per class"),
    ("samples", "Sample images"),
    ("lowres", "Low-resolution copies"),
    ("duplicates", "Duplicate groups"),
    ("leakage", "Leakage check"),
    ("folds", "Patient-grouped train/val split"),
    ("attribution", "Attribution and license"),
)
SPLIT_ORDER = ("train", "val", "test")
SUBTYPE_ORDER = ("normal", "bacteria", "virus")
LOW_RES_KIND = "resized224_rgb"
SUBTYPE_COLORS = {"normal": "#4c78a8", "bacteria": "#e45756", "virus": "#f58518"}
KIND_COLORS = {"original": "#4c78a8", LOW_RES_KIND: "#e45756", "unknown": "#9d9d9d"}
DECODE_TARGET = 128  # JPEG draft decoding keeps the short side >= 256 px: plenty for histograms and thumbnails
ATTRIBUTION = """
<p>Data: Kermany D, Zhang K, Goldbaum M. <em>Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for
Classification.</em> Mendeley Data, v2, 2018.
<a href="https://doi.org/10.17632/rscbjbr9sj.2">doi:10.17632/rscbjbr9sj.2</a>.</p>
<p>Paper: Kermany DS, Goldbaum M, Cai W, et al. <em>Identifying Medical Diagnoses and Treatable Diseases by Image-Based
Deep Learning.</em> Cell 172(5):1122&ndash;1131.e9, 2018.
<a href="https://doi.org/10.1016/j.cell.2018.02.010">doi:10.1016/j.cell.2018.02.010</a>.</p>
<p>License: <a href="https://creativecommons.org/licenses/by/4.0/">CC BY 4.0</a>. Copies that were downscaled,
converted to grayscale or re-encoded are derivatives of the original images.</p>
"""


def write_data_report(
    manifest_df: pd.DataFrame,
    root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    folds_df: pd.DataFrame | None = None,
    leakage: Mapping[str, object] | None = None,
    split_error: str | None = None,
    seed: int = 0,
    images_per_class: int = 100,
    samples_per_class: int = 6,
) -> Path:
    """Write ``out_dir/index.html`` and its PNG figures (each file written atomically).

    Args:
        manifest_df: the output of ``manifest.scan_dataset`` (columns ``path``, ``split``, ``label``, ``subtype``,
            ``patient_key``, ``sha256``, ``width``, ``height``, ``source_kind``, ``dup_group``).
        root: the dataset folder or zip the manifest was scanned from (``None``: ``$PNEUMO_DATA``).
        out_dir: report folder (created); nothing is written elsewhere.
        folds_df: the manifest with the ``fold`` column of ``splits.assign_folds``; enables the split and leakage parts.
        leakage: a ``splits.leakage_report`` result to show; computed from ``folds_df`` when omitted.
        split_error: why the patient-grouped split was refused (a ``LeakageError``'s text), shown as a failed check.
        seed: seeds the choice of decoded and displayed images.
        images_per_class: images decoded per subtype for the intensity histograms.
        samples_per_class: images per subtype in the sample grid.

    Returns:
        The path of ``index.html``.
    """
    df = _checked(manifest_df)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = DatasetSource(resolve_root(root))
    decoded, failed = _decode_sample(df, source, per_class=max(images_per_class, samples_per_class), seed=seed)
    if len(df) and not any(decoded.values()):
        raise DataError(f"none of the sampled images could be read from {source.location}; is it the scanned dataset?")

    save_png(_plot_counts(df), out / "counts.png")
    save_png(_plot_sizes(df), out / "sizes.png")
    save_png(_plot_intensity({k: v[:images_per_class] for k, v in decoded.items()}), out / "intensity.png")
    save_png(_plot_samples({k: v[:samples_per_class] for k, v in decoded.items()}), out / "samples.png")

    bodies = {
        "counts": _counts_section(df),
        "sizes": _sizes_section(df),
        "intensity": _intensity_section(decoded, images_per_class, failed),
        "samples": figure(
            "samples.png",
            f"Seeded sample (seed {seed}) of up to {samples_per_class} images per "
            "subtype; titles give split and source kind.",
        ),
        "lowres": _lowres_section(df, folds_df),
        "duplicates": _duplicates_section(df),
        "leakage": _leakage_section(df, folds_df, leakage, split_error),
        "folds": _folds_section(folds_df, split_error),
        "attribution": ATTRIBUTION,
    }
    summary = (f"<p>{len(df):,} images, {df['patient_key'].nunique():,} patients, read from "
               f"<code>{escape(source.location)}</code>.</p>")
    html = page("pneumo dataset report", [Section(key, title, bodies[key]) for key, title in SECTIONS], intro=summary,
                stamp=False)
    return atomic.write_text(out / "index.html", html)


def _checked(df: pd.DataFrame) -> pd.DataFrame:
    required = ["path", "split", "label", "subtype", "patient_key", "sha256", "width", "height"]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"the manifest lacks column(s) {', '.join(missing)}; build it with `pneumo data scan`")
    df = df.copy()
    df["source_kind"] = df["source_kind"].fillna("unknown") if "source_kind" in df else "unknown"
    df["dup_group"] = df["dup_group"].fillna("").astype(str) if "dup_group" in df else ""
    df["width"] = pd.to_numeric(df["width"])
    df["height"] = pd.to_numeric(df["height"])
    return df


def _ordered(values: Iterable[str], order: Sequence[str]) -> list[str]:
    present = set(values)
    return [v for v in order if v in present] + sorted(present - set(order))


# ---------------------------------------------------------------- images


def _decode_sample(
    df: pd.DataFrame, source: DatasetSource, *, per_class: int, seed: int
) -> tuple[dict[str, list[tuple[pd.Series, np.ndarray]]], int]:
    """Up to ``per_class`` decoded images per subtype (seeded order; unreadable files skipped and counted)."""
    rng = np.random.default_rng(seed)
    decoded: dict[str, list[tuple[pd.Series, np.ndarray]]] = {}
    failed = 0
    for subtype in _ordered(df["subtype"], SUBTYPE_ORDER):
        rows = df[df["subtype"] == subtype].sort_values("path")
        picked = rows.iloc[rng.permutation(len(rows))[:per_class]]
        decoded[subtype] = []
        for _, row in picked.iterrows():
            try:
                image = load_image(source.read(row["path"]), target=DECODE_TARGET)
            except (OSError, KeyError, InputError) as exc:
                log.warning("cannot read %s for the report: %s", row["path"], exc)
                failed += 1
                continue
            decoded[subtype].append((row, image))
    return decoded, failed


# ---------------------------------------------------------------- figures


def _plot_counts(df: pd.DataFrame) -> Figure:
    splits = _ordered(df["split"], SPLIT_ORDER)
    subtypes = _ordered(df["subtype"], SUBTYPE_ORDER)
    table = df.groupby(["split", "subtype"]).size().unstack(fill_value=0).reindex(index=splits, columns=subtypes)
    table = table.fillna(0).astype(int)
    fig = new_figure(7, 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(subtypes))
    x = np.arange(len(splits))
    for i, subtype in enumerate(subtypes):
        bars = ax.bar(
            x + (i - (len(subtypes) - 1) / 2) * width,
            table[subtype],
            width,
            label=subtype,
            color=SUBTYPE_COLORS.get(subtype, "#999"),
        )
        ax.bar_label(bars, fontsize=8, padding=2)
    ax.set_xticks(x, splits)
    ax.set_ylabel("images")
    ax.set_title("Images per split and subtype")
    ax.legend(frameon=False)
    ax.margins(y=0.12)
    return fig


def _plot_sizes(df: pd.DataFrame) -> Figure:
    fig = new_figure(10, 4)
    scatter, ratio = fig.subplots(1, 2)
    for kind in _ordered(df["source_kind"], tuple(KIND_COLORS)):
        part = df[df["source_kind"] == kind]
        color = KIND_COLORS.get(kind, "#2ca02c")
        scatter.scatter(
            part["width"], part["height"], s=6, alpha=0.4, color=color, label=f"{kind} ({len(part)})", linewidths=0
        )
        ratio.hist(part["width"] / part["height"], bins=np.linspace(0.5, 3.0, 51), alpha=0.6, color=color, label=kind)
    scatter.set(xlabel="width (px)", ylabel="height (px)", title="Stored image size by source kind")
    scatter.legend(frameon=False, markerscale=3)
    ratio.set(xlabel="aspect ratio (width / height)", ylabel="images", title="Aspect ratio by source kind")
    ratio.legend(frameon=False)
    return fig


def _plot_intensity(decoded: Mapping[str, list[tuple[pd.Series, np.ndarray]]]) -> Figure:
    fig = new_figure(10, 4)
    hist_ax, box_ax = fig.subplots(1, 2)
    bins = np.arange(0, 257, 4)
    means, names = [], []
    for subtype, items in decoded.items():
        if not items:
            continue
        per_image = np.stack([np.histogram(img, bins=bins, density=True)[0] for _, img in items])
        color = SUBTYPE_COLORS.get(subtype, "#999")
        hist_ax.plot(bins[:-1] + 2, per_image.mean(axis=0), color=color, label=f"{subtype} (n={len(items)})")
        lo, hi = np.percentile(per_image, [25, 75], axis=0)
        hist_ax.fill_between(bins[:-1] + 2, lo, hi, color=color, alpha=0.15, linewidth=0)
        means.append([float(img.mean()) for _, img in items])
        names.append(subtype)
    hist_ax.set(xlabel="pixel value (uint8 gray)", ylabel="density", title="Mean histogram per image (band: IQR)")
    hist_ax.legend(frameon=False)
    if means:
        box_ax.boxplot(means, tick_labels=names)
    box_ax.set(ylabel="mean pixel value per image", title="Mean intensity per image")
    return fig


def _plot_samples(decoded: Mapping[str, list[tuple[pd.Series, np.ndarray]]]) -> Figure:
    rows = [(k, v) for k, v in decoded.items() if v]
    cols = max((len(v) for _, v in rows), default=1)
    fig = new_figure(1.9 * cols, 2.1 * max(1, len(rows)))
    axes = np.atleast_2d(fig.subplots(max(1, len(rows)), cols, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    for r, (subtype, items) in enumerate(rows):
        for c, (row, image) in enumerate(items):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            kind = "224px copy" if row["source_kind"] == LOW_RES_KIND else str(row["source_kind"])
            ax.set_title(f"{subtype}\n{row['split']} · {kind}", fontsize=7)
    return fig


# ---------------------------------------------------------------- HTML sections


def _kind_counts(name: str, part: pd.DataFrame) -> list[object]:
    """[name, images, patients, originals, 224 px copies] for one table row."""
    kinds = part["source_kind"]
    return [name, len(part), part["patient_key"].nunique(), (kinds == "original").sum(), (kinds == LOW_RES_KIND).sum()]


def _counts_section(df: pd.DataFrame) -> str:
    rows = []
    for split in _ordered(df["split"], SPLIT_ORDER):
        for label in sorted(df.loc[df["split"] == split, "label"].unique()):
            part = df[(df["split"] == split) & (df["label"] == label)]
            for subtype in _ordered(part["subtype"], SUBTYPE_ORDER):
                rows.append([split, label, *_kind_counts(subtype, part[part["subtype"] == subtype])])
    rows.append(["total", "", *_kind_counts("", df)])
    header = ["split", "label", "subtype", "images", "patients", "original", "224px copies"]
    plot = figure("counts.png", "Images per split (as on disk) and subtype.")
    return plot + table(header, rows, table_id="counts-table", total_last=True)


def _sizes_section(df: pd.DataFrame) -> str:
    rows = []
    for kind in _ordered(df["source_kind"], tuple(KIND_COLORS)):
        w, h = df.loc[df["source_kind"] == kind, "width"], df.loc[df["source_kind"] == kind, "height"]
        rows.append([kind, len(w), f"{w.min()}–{w.max()}", f"{h.min()}–{h.max()}", f"{(w / h).median():.2f}"])
    header = ["source kind", "images", "width (px)", "height (px)", "median aspect ratio"]
    plot = figure("sizes.png", "Stored width and height of every image, colored by source kind.")
    return plot + table(header, rows, table_id="sizes-table")


def _intensity_section(decoded: Mapping[str, list], per_class: int, failed: int) -> str:
    counts = ", ".join(f"{k}: {min(len(v), per_class)}" for k, v in decoded.items())
    note = (
        f"Up to {per_class} images per subtype, seeded ({counts}); decoded as uint8 gray at reduced scale "
        "(short side &ge; 256 px)."
    )
    if failed:
        note += f" {failed} sampled file(s) could not be read and were skipped."
    return figure("intensity.png", "Pixel-value distribution per subtype.") + f'<p class="note">{note}</p>'


def _lowres_table(df: pd.DataFrame, column: str, table_id: str) -> str:
    rows = []
    for value, part in [(v, df[df[column] == v]) for v in _ordered(df[column], SPLIT_ORDER)] + [("total", df)]:
        low = int((part["source_kind"] == LOW_RES_KIND).sum())
        unknown = int((part["source_kind"] == "unknown").sum())
        rows.append([value, len(part), low, f"{100 * low / max(1, len(part)):.1f}%", unknown])
    header = [column, "images", "224px copies", "share", "source unknown"]
    return table(header, rows, table_id=table_id, total_last=True)


def _lowres_section(df: pd.DataFrame, folds_df: pd.DataFrame | None) -> str:
    intro = (
        "<p>Images with source kind <code>resized224_rgb</code> are 224&times;224 copies that lost their aspect "
        "ratio; originals keep it. A model can learn the copy artefacts, so look at their share per split.</p>"
    )
    parts = [intro, "<h3>Per split (as on disk)</h3>", _lowres_table(df, "split", "lowres-split")]
    if folds_df is not None and "fold" in folds_df:
        folds = folds_df.assign(source_kind=folds_df.get("source_kind", "unknown"))
        parts += ["<h3>Per fold (patient-grouped split)</h3>", _lowres_table(folds, "fold", "lowres-fold")]
    return "".join(parts)


def _duplicates_section(df: pd.DataFrame, max_groups: int = 200) -> str:
    dups = df[df["dup_group"] != ""]
    if dups.empty:
        return '<p id="duplicates-summary">No exact duplicates (byte-identical files) found.</p>'
    groups = dups.groupby("dup_group", sort=True)
    spanning = int((groups["split"].nunique() > 1).sum())
    summary = (
        f'<p id="duplicates-summary">{groups.ngroups} group(s) of byte-identical files, {len(dups)} files in all; '
        f"{spanning} group(s) span more than one split.</p>"
    )
    rows = [
        [name, len(members), ", ".join(_ordered(members["split"], SPLIT_ORDER)),
         ", ".join(sorted(members["patient_key"].unique())), "; ".join(sorted(members["path"]))]
        for name, members in list(groups)[:max_groups]
    ]  # fmt: skip
    listing = table(["group", "files", "splits", "patients", "members"], rows, table_id="duplicates-table")
    if groups.ngroups > max_groups:
        listing += f'<p class="note">First {max_groups} of {groups.ngroups} groups shown.</p>'
    return summary + listing


def _badge(passed: bool) -> str:
    return '<span class="pass">PASS</span>' if passed else '<span class="fail">FAIL</span>'


def _leakage_section(df: pd.DataFrame, folds_df: pd.DataFrame | None, leakage: Mapping[str, object] | None,
                     split_error: str | None = None) -> str:
    official = leakage_report(df, column="split")
    clean = not (official["patients_in_two_splits"] or official["duplicates_in_two_splits"])
    parts = [
        "<h3>Official splits (as on disk)</h3>",
        f'<p id="leakage-official-result">{_badge(clean)} no patient and no exact duplicate in two official splits.</p>',
        _leakage_table(official, "leakage-official"),
    ]
    parts.append("<h3>Patient-grouped folds</h3>")
    detail = ""
    if leakage is None and folds_df is not None and "fold" in folds_df:
        leakage = leakage_report(folds_df)
        try:
            check_leakage(folds_df)
        except LeakageError as exc:
            detail = str(exc)
    if split_error or leakage is None:
        parts.append(f'<p id="leakage-result">{_badge(False)} the patient-grouped split was refused: '
                     f'{escape(split_error)}</p>' if split_error else
                     '<p id="leakage-result">Not checked: no patient-grouped split was made.</p>')
        return "".join(parts)
    passed = bool(
        leakage.get("passed", not (leakage.get("patients_in_two_splits") or leakage.get("duplicates_in_two_splits")))
    )
    parts.append(f'<p id="leakage-result">{_badge(passed)} no patient and no exact duplicate may sit in two folds.</p>')
    parts.append(_leakage_table(leakage, "leakage-folds"))
    if detail:
        parts.append(f'<p class="note">{escape(detail)}</p>')
    return "".join(parts)


def _leakage_table(result: Mapping[str, object], table_id: str) -> str:
    labels = {
        "patients_in_two_splits": "patients in more than one split",
        "duplicates_in_two_splits": "exact-duplicate groups in more than one split",
        "duplicate_groups": "exact-duplicate groups (all)",
    }
    return table(
        ["check", "count"], [[labels.get(k, k), v] for k, v in result.items() if k != "passed"], table_id=table_id
    )


def _folds_section(folds_df: pd.DataFrame | None, split_error: str | None = None) -> str:
    if folds_df is None or "fold" not in folds_df:
        why = "the split was refused (see the leakage check above)" if split_error else "no split was made"
        return f'<p id="folds-none">No patient-grouped folds: {why}.</p>'
    folds = _ordered(folds_df["fold"], SPLIT_ORDER)
    subtypes = _ordered(folds_df["subtype"], SUBTYPE_ORDER)
    rows = []
    for fold, part in [(f, folds_df[folds_df["fold"] == f]) for f in folds] + [("total", folds_df)]:
        per_subtype = [int((part["subtype"] == s).sum()) for s in subtypes]
        rows.append([fold, *per_subtype, len(part), part["patient_key"].nunique()])
    note = (
        '<p class="note"><code>test</code> is the official test split, untouched; <code>train</code> and '
        "<code>val</code> split the official train + val images by patient, stratified by subtype.</p>"
    )
    return note + table(["fold", *subtypes, "images", "patients"], rows, table_id="folds-table", total_last=True)


