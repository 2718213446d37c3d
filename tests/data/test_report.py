"""The HTML dataset report on a small real slice (and one timing check on the full set)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pneumo.data.manifest import scan_dataset
from pneumo.data.report import SECTIONS, write_data_report
from pneumo.data.splits import assign_folds
from pneumo.errors import DataError

FIGURES = ("counts.png", "sizes.png", "intensity.png", "samples.png")


class _Tables(HTMLParser):
    """Rows of every ``<table id=...>`` as lists of cell texts (header row included)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _tables(index: Path) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser.tables


@pytest.fixture(scope="module")
def slice_manifest(data_slice: Path) -> pd.DataFrame:
    return scan_dataset(data_slice)


@pytest.fixture(scope="module")
def slice_folds(slice_manifest: pd.DataFrame) -> pd.DataFrame:
    return assign_folds(slice_manifest, val_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def report(
    slice_manifest: pd.DataFrame, slice_folds: pd.DataFrame, data_slice: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("report")
    return write_data_report(slice_manifest, data_slice, out, folds_df=slice_folds, images_per_class=8)


def test_report_names_every_section(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    for key, title in SECTIONS:
        assert f'<section id="{key}"><h2>{title}</h2>' in text


def test_report_carries_the_dataset_attribution(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    for needle in ("doi:10.17632/rscbjbr9sj.2", "doi:10.1016/j.cell.2018.02.010", "CC BY 4.0", "Kermany"):
        assert needle in text


def test_report_figures_are_valid_pngs_linked_from_the_page(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    for name in FIGURES:
        with Image.open(report.parent / name) as img:
            img.verify()
            assert img.format == "PNG"
        assert f'src="{name}"' in text


def test_report_leaves_only_the_page_and_its_figures(report: Path) -> None:
    assert sorted(p.name for p in report.parent.iterdir()) == sorted([*FIGURES, "index.html"])


def test_counts_table_matches_the_manifest(report: Path, slice_manifest: pd.DataFrame) -> None:
    header, *rows = _tables(report)["counts-table"]
    assert header[:4] == ["split", "label", "subtype", "images"]
    *cells, total = rows
    expected = slice_manifest.groupby(["split", "label", "subtype"]).size()
    shown = {(r[0], r[1], r[2]): int(r[3]) for r in cells}
    assert shown == {k: int(v) for k, v in expected.items()}
    assert int(total[3]) == len(slice_manifest)
    assert int(total[4]) == slice_manifest["patient_key"].nunique()


def test_low_resolution_share_is_counted_per_split(report: Path, slice_manifest: pd.DataFrame) -> None:
    _, *rows = _tables(report)["lowres-split"]
    low = slice_manifest[slice_manifest["source_kind"] == "resized224_rgb"].groupby("split").size()
    for split, images, copies, share, _ in rows[:-1]:
        assert int(images) == int((slice_manifest["split"] == split).sum())
        assert int(copies) == int(low.get(split, 0))
        assert share == f"{100 * int(copies) / int(images):.1f}%"
    assert int(rows[-1][2]) == int(low.sum()) > 0


def test_fold_table_matches_the_patient_grouped_split(report: Path, slice_folds: pd.DataFrame) -> None:
    header, *rows = _tables(report)["folds-table"]
    for row in rows[:-1]:
        part = slice_folds[slice_folds["fold"] == row[0]]
        record = dict(zip(header, row))
        assert int(record["images"]) == len(part)
        assert int(record["patients"]) == part["patient_key"].nunique()
        for subtype in ("normal", "bacteria", "virus"):
            assert int(record[subtype]) == int((part["subtype"] == subtype).sum())


def test_clean_split_shows_a_passed_leakage_check(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    result = text.split('id="leakage-result">', 1)[1].split("</p>", 1)[0]
    assert "PASS" in result and "FAIL" not in result


def test_patient_in_two_folds_shows_a_failed_leakage_check(
    slice_manifest: pd.DataFrame, slice_folds: pd.DataFrame, data_slice: Path, tmp_path: Path
) -> None:
    folds = slice_folds.copy()
    patient = folds.loc[folds["fold"] == "train", "patient_key"].value_counts().index[0]
    folds.loc[(folds["patient_key"] == patient).idxmax(), "fold"] = "val"
    index = write_data_report(slice_manifest, data_slice, tmp_path, folds_df=folds, images_per_class=2)
    text = index.read_text(encoding="utf-8")
    assert "FAIL" in text.split('id="leakage-result">', 1)[1].split("</p>", 1)[0]
    assert "1 patient group(s) straddle splits" in text
    assert dict(_tables(index)["leakage-folds"][1:])["patients in more than one split"] == "1"


def test_report_without_a_split_says_so(slice_manifest: pd.DataFrame, data_slice: Path, tmp_path: Path) -> None:
    text = write_data_report(slice_manifest, data_slice, tmp_path, images_per_class=2).read_text(encoding="utf-8")
    assert "Not checked: no patient-grouped split was made." in text
    assert 'id="folds-none"' in text


def test_duplicate_groups_list_their_members(slice_manifest: pd.DataFrame, data_slice: Path, tmp_path: Path) -> None:
    df = slice_manifest.copy()
    pair = df[df["split"] == "test"].index[:2]
    df.loc[pair, "dup_group"] = "twin"
    index = write_data_report(df, data_slice, tmp_path, images_per_class=2)
    rows = {r[0]: r for r in _tables(index)["duplicates-table"][1:]}
    assert rows["twin"][1] == "2"
    assert rows["twin"][4] == "; ".join(sorted(df.loc[pair, "path"]))


def test_sample_images_are_chosen_by_seed(slice_manifest: pd.DataFrame, data_slice: Path, tmp_path: Path) -> None:
    def samples(seed: int, name: str) -> bytes:
        index = write_data_report(slice_manifest, data_slice, tmp_path / name, seed=seed, images_per_class=1,
                                  samples_per_class=1)
        return (index.parent / "samples.png").read_bytes()

    assert samples(1, "a") == samples(1, "b")
    assert samples(1, "a") != samples(2, "c")


def test_manifest_without_required_columns_is_refused(
    slice_manifest: pd.DataFrame, data_slice: Path, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match="patient_key"):
        write_data_report(slice_manifest.drop(columns="patient_key"), data_slice, tmp_path)


def test_root_without_the_manifest_images_is_a_data_error(slice_manifest: pd.DataFrame, tmp_path: Path) -> None:
    other = tmp_path / "other"
    for label in ("NORMAL", "PNEUMONIA"):
        (other / "train" / label).mkdir(parents=True)
        Image.new("L", (8, 8)).save(other / "train" / label / "unrelated.jpeg")
    with pytest.raises(DataError, match="none of the sampled images could be read"):
        write_data_report(slice_manifest, other, tmp_path / "out", images_per_class=2)


def test_full_dataset_report_counts_every_image(full_data: Path, tmp_path: Path) -> None:
    df = scan_dataset(full_data)
    folds = assign_folds(df)
    index = write_data_report(df, full_data, tmp_path, folds_df=folds)
    assert int(_tables(index)["counts-table"][-1][3]) == len(df) == 5856


def test_the_cli_writes_the_report_of_a_leaking_dataset_then_fails_in_one_line(
        data_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A patient's images in train and test: `data report` stopped before writing anything, so the report's FAIL
    for the official splits could never be seen. Now the report is written, then the error (exit 2)."""
    import shutil

    from pneumo.cli import main

    root = tmp_path / "ds"
    shutil.copytree(data_slice, root)
    train = min((root / "train" / "NORMAL").glob("IM-*.jpeg"))
    patient = "-".join(train.name.split("-")[:2])
    shutil.copyfile(train, root / "test" / "NORMAL" / f"{patient}-9999.jpeg")  # the same patient in test
    out = tmp_path / "report"
    assert main(["data", "report", "--dataset", str(root), "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("pneumo data report: [")]
    assert len(err) == 1 and err[0].startswith("pneumo data report: error:"), err
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "FAIL" in text.split('id="leakage-official-result">', 1)[1].split("</p>", 1)[0]
    # the folds' check says the split was refused and why (it said "Not checked: no patient-grouped split was given")
    folds = text.split('id="leakage-result">', 1)[1].split("</p>", 1)[0]
    assert "FAIL" in folds and "refused" in folds and "straddle splits" in folds
    assert "the split was refused" in text.split('id="folds-none">', 1)[1].split("</p>", 1)[0]


def test_an_out_that_is_a_file_is_one_line_before_the_scan(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`data report --out FILE` scanned the whole dataset, then failed with "[Errno 17] File exists" (a data audit)."""
    import pneumo.commands.data as data_command
    from pneumo.cli import main

    taken = tmp_path / "report.zip"
    taken.write_text("a file")

    def no_scan(*args, **kwargs):
        raise AssertionError("scanned before checking --out")

    monkeypatch.setattr(data_command, "scan_dataset", no_scan)
    assert main(["data", "report", "--dataset", str(tmp_path), "--out", str(taken)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"pneumo data report: error: --out {taken} is a file, not a folder: give a folder for the report"
