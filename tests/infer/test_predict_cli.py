"""`pneumo predict` on real X-rays, folders, globs, the bad-input corpus, both backends."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

import pneumo
from pneumo.cli import main
from pneumo.infer.export import export_onnx
from pneumo.infer.predictor import Predictor


@pytest.fixture(scope="module")
def xrays(full_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("xrays")
    for sub in ("NORMAL", "PNEUMONIA"):
        for path in sorted((full_data / "test" / sub).glob("*.jpeg"))[:3]:
            shutil.copyfile(path, folder / path.name)
    return folder


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_predict_a_folder_writes_one_csv_row_per_image(xrays: Path, tiny_model: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", str(xrays), "--model", str(tiny_model)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 6
    for row in rows:
        p = float(row["p_pneumonia"])
        assert 0.0 <= p <= 1.0
        assert row["label"] == ("PNEUMONIA" if p >= float(row["threshold"]) else "NORMAL")


def test_model_default_names_the_shipped_model_as_in_evaluate(xrays: Path, tmp_path: Path, monkeypatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    """A CLI review: `--model default` worked in evaluate and model-card but was "model not found" in predict, explain
    and operating-point; a folder of that name here still wins."""
    image = str(min(xrays.iterdir()))
    monkeypatch.chdir(tmp_path)
    assert main(["predict", image, "--model", "default", "--backend", "torch"]) == 0
    named = [{k: v for k, v in row.items() if k != "created"} for row in _rows(capsys.readouterr().out)]
    assert main(["predict", image, "--backend", "torch"]) == 0
    shipped = [{k: v for k, v in row.items() if k != "created"} for row in _rows(capsys.readouterr().out)]
    assert named == shipped and named[0]["model_id"] == Predictor(None).model_id
    (tmp_path / "default").mkdir()
    assert main(["predict", image, "--model", "default"]) == 2
    assert "default" in capsys.readouterr().err


def test_every_row_says_which_model_and_operating_point_answered(xrays: Path, tiny_model: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """The service's responses carried model_id and threshold_policy; predict's file did not, so a predictions file
    could not be tied to the model (or the derived operating point) that wrote it."""
    (tmp_path / "broken.jpeg").write_bytes(b"not an image")
    assert main(["predict", str(xrays), str(tmp_path / "broken.jpeg"), "--model", str(tiny_model)]) == 1
    rows = _rows(capsys.readouterr().out)
    predictor = Predictor(tiny_model)
    assert len(rows) == 7 and {r["model_id"] for r in rows} == {predictor.model_id}
    assert {r["threshold_policy"] for r in rows} == {predictor.meta.threshold_policy or ""}
    assert rows[-1]["error"] and rows[-1]["model_id"] == predictor.model_id  # the error row too
    # and which code, backend and run (an audit-trail review: the file carried no time, version or backend)
    assert {(r["pneumo_version"], r["backend"]) for r in rows} == {(pneumo.__version__, "onnx")}
    assert len({r["created"] for r in rows}) == 1 and rows[0]["created"].endswith("Z")


def test_predictions_match_the_predictor_on_the_same_images(xrays: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.jsonl"
    assert main(["predict", str(xrays / "*.jpeg"), "--model", str(tiny_model), "--format", "jsonl",
                 "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    predictor = Predictor(tiny_model)
    from pneumo.data.decode import load_image_file

    direct = predictor.predict([load_image_file(Path(r["path"]), target=64) for r in rows])
    assert np.allclose([r["p_pneumonia"] for r in rows], [d.p_pneumonia for d in direct], atol=1e-6)


def test_bad_inputs_get_a_one_line_error_and_the_rest_is_predicted(corpus: dict, tiny_model: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    paths = [str(case.path) for case in corpus.values()]
    code = main(["predict", *paths, "--model", str(tiny_model), "--format", "jsonl"])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1 and len(rows) == len(paths)
    by_file = {r["path"]: r for r in rows}
    for case in corpus.values():
        row = by_file[str(case.path).encode("utf-8", "backslashreplace").decode()]
        if case.expect == "ok":
            assert row["error"] is None and row["label"] in ("NORMAL", "PNEUMONIA"), case.name  # JSON null
        else:
            assert row["error"] and "\n" not in row["error"] and row["label"] is None, case.name
            assert row["p_pneumonia"] is None, case.name
    errors = [line for line in captured.err.splitlines() if line.startswith("pneumo predict:")]  # not the summary
    assert len(errors) == sum(case.expect != "ok" for case in corpus.values())
    refused = [by_file[str(case.path)] for case in corpus.values() if case.expect == "refused"]
    assert refused and all("not a chest radiograph" in row["error"] for row in refused)


def test_missing_input_is_a_one_line_error(tiny_model: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", "/no/such/file.jpeg", "--model", str(tiny_model)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_heat_map_folder_that_cannot_be_made_names_heatmaps_and_a_run_lock_says_where_it_lives(
        xrays: Path, tiny_model: Path, capsys: pytest.CaptureFixture) -> None:
    """An audit of machine failures: a read-only --heatmaps folder was reported as "--out"; a run whose parent folder
    cannot be written gave "[Errno 1] Operation not permitted: '.../.tiny.lock'"."""
    from pneumo.data.rundir import run_lock
    from pneumo.errors import ConfigError

    assert main(["predict", str(xrays), "--model", str(tiny_model), "--heatmaps", "/proc/pneumo/maps"]) == 2
    assert "error: --heatmaps /proc/pneumo/maps: cannot make the folder" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"cannot create the run lock /proc/1/\.run\.lock .*make /proc/1 writable"), \
            run_lock("/proc/1/run"):
        pass


def test_an_export_folder_on_onnx_runtime_agrees_with_torch_within_1e4(xrays: Path, tiny_model: Path,
                                                                       tmp_path: Path) -> None:
    onnx_path = export_onnx(tiny_model, tmp_path / "export")
    torch_out, onnx_out = tmp_path / "t.csv", tmp_path / "o.csv"  # (without --backend it would be ONNX on both sides)
    assert main(["predict", str(xrays), "--model", str(tiny_model), "--backend", "torch", "--output",
                 str(torch_out)]) == 0
    assert main(["predict", str(xrays), "--model", str(onnx_path), "--backend", "onnx", "--output", str(onnx_out)]) == 0
    a = [float(r["p_pneumonia"]) for r in _rows(torch_out.read_text())]
    b = [float(r["p_pneumonia"]) for r in _rows(onnx_out.read_text())]
    assert {r["backend"] for r in _rows(torch_out.read_text())} == {"torch"}
    assert {r["backend"] for r in _rows(onnx_out.read_text())} == {"onnx"}
    assert np.allclose(a, b, atol=1e-4)


def test_default_backend_exports_once_to_the_cache_and_writes_heat_maps(xrays: Path, tiny_model: Path,
                                                                        cache_dir: Path, tmp_path: Path) -> None:
    out, maps = tmp_path / "p.csv", tmp_path / "maps"
    assert main(["predict", str(xrays), "--model", str(tiny_model), "--output", str(out), "--heatmaps", str(maps)]) == 0
    assert len(list((cache_dir / "onnx").glob("*.onnx"))) == 1
    assert len(_rows(out.read_text())) == 6 and len(list(maps.glob("*.cam.png"))) == 6
    reference = tmp_path / "torch.csv"
    assert main(["predict", str(xrays), "--model", str(tiny_model), "--backend", "torch", "--output", str(reference)]) == 0
    a = [float(r["p_pneumonia"]) for r in _rows(out.read_text())]
    b = [float(r["p_pneumonia"]) for r in _rows(reference.read_text())]
    assert np.allclose(a, b, atol=1e-4)


def test_heatmaps_are_written_on_the_original_geometry(xrays: Path, tiny_model: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "maps"
    assert main(["predict", str(xrays), "--model", str(tiny_model), "--heatmaps", str(out),
                 "--output", str(tmp_path / "p.csv")]) == 0
    rows = _rows((tmp_path / "p.csv").read_text())
    assert len(rows) == len(list(xrays.iterdir()))
    for row in rows:  # the heatmap column links each row to its overlay; the raw map sits next to it
        overlay = Path(row["heatmap"])
        assert overlay.is_file() and overlay.name.endswith(".cam.png")
        cam = np.load(overlay.with_name(overlay.name.replace(".cam.png", ".cam.npy")))
        with Image.open(row["path"]) as original:
            assert cam.shape == (original.height, original.width)


def test_heat_maps_have_unique_deterministic_names_linked_per_row(xrays: Path, tiny_model: Path,
                                                                  tmp_path: Path) -> None:
    twin = tmp_path / "twin"  # same file names in another folder: names must not clash or depend on order
    shutil.copytree(xrays, twin)
    outs = []
    for k, order in enumerate(([str(xrays), str(twin)], [str(twin), str(xrays)])):
        out, maps = tmp_path / f"p{k}.csv", tmp_path / f"maps{k}"
        assert main(["predict", *order, "--model", str(tiny_model), "--backend", "torch", "--heatmaps", str(maps),
                     "--output", str(out)]) == 0
        rows = _rows(out.read_text())
        assert len(rows) == 12 and len({r["heatmap"] for r in rows}) == 12
        for row in rows:
            assert Path(row["heatmap"]).is_file() and Path(row["heatmap"]).parent == maps.resolve()
            assert Path(row["heatmap"]).name.startswith(Path(row["path"]).stem + "-")
        outs.append({r["path"]: Path(r["heatmap"]).name for r in rows})
    assert outs[0] == outs[1]  # the same input gets the same name whatever the order
    assert not list((tmp_path / "maps0").glob("*-2.cam.png"))


def test_results_arrive_one_by_one_while_heat_maps_are_written(xrays: Path, tiny_model: Path,
                                                                tmp_path: Path) -> None:
    from pneumo.infer.batch import predict_file_results

    files = sorted(xrays.iterdir())
    maps = tmp_path / "maps"
    seen = []
    from pneumo.explain.overlay import HeatmapWriter

    predictor = Predictor(tiny_model)
    for item in predict_file_results(predictor, files, batch_size=32, heatmaps=HeatmapWriter(predictor, maps)):
        seen.append(len(list(maps.glob("*.png"))))  # overlays on disk when this result arrives
        assert item.heatmap is not None and item.error is None
    assert seen == list(range(1, len(files) + 1))  # one result per heat map, not one batch at the end


def test_the_output_extension_decides_the_format(xrays: Path, tiny_model: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    jsonl = tmp_path / "p.jsonl"
    assert main(["predict", str(xrays), "--model", str(tiny_model), "--output", str(jsonl)]) == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]  # JSON lines, not CSV
    assert len(rows) == 6 and all(0.0 <= r["p_pneumonia"] <= 1.0 for r in rows)
    assert main(["predict", str(xrays), "--model", str(tiny_model), "--output", str(tmp_path / "p.txt"),
                 "--format", "jsonl"]) == 0  # an unknown extension is fine with an explicit --format
    assert len((tmp_path / "p.txt").read_text().splitlines()) == 6
    capsys.readouterr()
    for argv, message in ((["--output", str(tmp_path / "p.txt")], "cannot tell the format"),
                          (["--output", str(tmp_path / "q.csv"), "--format", "jsonl"], "contradicts")):
        assert main(["predict", str(xrays), "--model", str(tiny_model), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pneumo predict: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q.csv").exists()
    # "-" is standard output (it wrote a file named "-"); a device or a pipe is refused, never replaced by a file
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(xrays), "--model", str(tiny_model), "--output", "-", "--format", "csv"]) == 0
    assert len(_rows(capsys.readouterr().out)) == 6 and not (tmp_path / "-").exists()
    os.mkfifo(tmp_path / "fifo.csv")
    assert main(["predict", str(xrays), "--model", str(tiny_model), "--output", str(tmp_path / "fifo.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a regular file" in err and len(err.splitlines()) == 1
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo.csv").st_mode)


@pytest.mark.parametrize("existing", [True, False])
def test_an_output_folder_gets_predictions_inside_it(xrays: Path, tiny_model: Path, tmp_path: Path,
                                                     existing: bool) -> None:
    folder = tmp_path / "results"
    if existing:
        folder.mkdir()
    assert main(["predict", str(xrays), "--model", str(tiny_model),
                 "--output", str(folder) if existing else f"{folder}/"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["predictions.csv"]
    assert len(_rows((folder / "predictions.csv").read_text())) == 6


def test_a_summary_line_ends_the_run_on_stderr(xrays: Path, tiny_model: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", str(xrays), "--model", str(tiny_model)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "summary: 6 input(s): scored 6, errors 0, not assessed 0, out-of-distribution 0, refused (input) 0"


def test_every_named_input_that_is_skipped_gets_a_row_with_its_reason(xrays: Path, tiny_model: Path,
                                                                       tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    import os

    loop, dangling, fifo, empty = tmp_path / "loop.jpeg", tmp_path / "gone.jpeg", tmp_path / "pipe", tmp_path / "empty"
    loop.symlink_to(loop)
    dangling.symlink_to(tmp_path / "nowhere.jpeg")
    os.mkfifo(fifo)
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    xray = next(xrays.iterdir())
    named = [loop, dangling, fifo, empty]
    assert main(["predict", str(xray), *map(str, named), "--model", str(tiny_model), "--output",
                 str(tmp_path / "p.csv")]) == 1
    rows = {r["path"]: r for r in _rows((tmp_path / "p.csv").read_text())}
    assert set(rows) == {str(p) for p in (xray, *named)}
    reasons = {p: rows[str(p)]["error"] for p in named}
    assert "symlink loop" in reasons[loop] and "dangling symlink" in reasons[dangling]
    assert "named pipe" in reasons[fifo] and "folder without images" in reasons[empty]
    assert all(rows[str(p)]["label"] == "" and rows[str(p)]["p_pneumonia"] == "" for p in named)
    assert rows[str(xray)]["label"] in ("NORMAL", "PNEUMONIA")
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("summary: 5 input(s): scored 1, errors 4, not assessed 0, out-of-distribution 0, refused (input) 0")


def test_rows_come_in_the_order_the_inputs_name_them_skipped_ones_included(xrays: Path, tiny_model: Path,
                                                                         tmp_path: Path) -> None:
    """A skipped input's row sits where it was named (and inside a folder, in path order), not first: rows can be
    matched to inputs by position."""
    images = sorted(xrays.iterdir())
    dangling, folder = tmp_path / "gone.jpeg", tmp_path / "folder"
    dangling.symlink_to(tmp_path / "nowhere.jpeg")
    folder.mkdir()
    (folder / "a.jpeg").write_bytes(images[2].read_bytes())
    (folder / "b.jpeg").symlink_to(tmp_path / "nowhere.jpeg")  # dangling, inside a folder, between two images
    (folder / "c.jpeg").write_bytes(images[3].read_bytes())
    named = [images[0], dangling, images[1], folder]
    assert main(["predict", *map(str, named), "--model", str(tiny_model), "--output", str(tmp_path / "p.csv")]) == 1
    paths = [r["path"] for r in _rows((tmp_path / "p.csv").read_text())]
    assert paths == [str(p) for p in (images[0], dangling, images[1], folder / "a.jpeg", folder / "b.jpeg",
                                      folder / "c.jpeg")]


def test_the_parts_of_a_torchrun_predict_concatenate_to_the_one_process_output(
        xrays: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank takes a contiguous part of the inputs, skipped ones included, so that its part file sits in place:
    part 0 + part 1 is the one-process output (a skipped input had gone to rank 0's part wherever it was named)."""
    images = sorted(xrays.iterdir())[:4]
    dangling = tmp_path / "gone.jpeg"
    dangling.symlink_to(tmp_path / "nowhere.jpeg")
    named = [*map(str, images[:3]), str(dangling), str(images[3])]
    main(["predict", *named, "--model", str(tiny_model), "--output", str(tmp_path / "one.csv")])
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        main(["predict", *named, "--model", str(tiny_model), "--output", str(tmp_path / "p.csv")])
    one = _rows((tmp_path / "one.csv").read_text())
    parts = [_rows((tmp_path / f"p.csv.part-{r}-of-2.csv").read_text()) for r in (0, 1)]
    assert [r["path"] for r in parts[0] + parts[1]] == [r["path"] for r in one] == named
    assert [len(p) for p in parts] == [3, 2]


def test_a_dicom_without_extension_in_a_folder_is_read(full_data: Path, tiny_model: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    from corpus import dicom_bytes
    from PIL import Image

    with Image.open(min((full_data / "test" / "NORMAL").glob("*.jpeg"))) as image:
        (tmp_path / "IM00000").write_bytes(dicom_bytes(np.asarray(image.convert("L"))))
    (tmp_path / "notes.txt").write_text("not an image")
    assert main(["predict", str(tmp_path), "--model", str(tiny_model), "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["IM00000"] and rows[0]["error"] is None


def test_a_pacs_exports_laterals_and_reports_are_refused_without_failing_the_run(
        full_data: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A PACS export holds lateral films, reports (no pixel data) and a DICOMDIR beside the frontal films: each was an
    error and every clean export exited 1 (a DICOM review). They are listed, refused, with their reason; a broken
    file is still an error."""
    from corpus import dicom_bytes
    from PIL import Image

    with Image.open(min((full_data / "test" / "NORMAL").glob("*.jpeg"))) as image:
        pixels = np.asarray(image.convert("L"))
    export = tmp_path / "export"
    export.mkdir()
    (export / "IM00000").write_bytes(dicom_bytes(pixels, ViewPosition="PA"))
    (export / "IM00001").write_bytes(dicom_bytes(pixels, ViewPosition="LL"))
    report = dicom_bytes(pixels, ViewPosition="PA")
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(report))
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer)
    (export / "IM00002").write_bytes(buffer.getvalue())
    (export / "DICOMDIR").write_bytes(report)
    # a patient CD's viewer beside the films (a DICOM audit: each file without a suffix was read, an error, exit 1)
    (export / "README").write_text("Open VIEWER/start to see the images.\n")
    (export / "VIEWER").mkdir()
    (export / "VIEWER" / "viewer").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(200))
    (export / "AUTORUN.INF").write_text("[autorun]\nopen=VIEWER\\viewer.exe\n")
    assert main(["predict", str(export), "--model", str(tiny_model), "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    rows = {Path(r["path"]).name: r for r in map(json.loads, captured.out.splitlines())}
    assert sorted(rows) == ["IM00000", "IM00001", "IM00002"] and rows["IM00000"]["error"] is None
    assert "lateral film" in rows["IM00001"]["error"] and "no pixel data" in rows["IM00002"]["error"]
    assert captured.err.strip().splitlines()[-1] == ("summary: 3 input(s): scored 1, errors 0, not assessed 0, "
                                                     "out-of-distribution 0, refused (input) 2; 4 other file(s) in the "
                                                     "folders not read (DICOMDIR, hidden, not images)")
    (export / "IM00003").write_bytes(b"DICM but broken")
    assert main(["predict", str(export), "--model", str(tiny_model), "--format", "jsonl"]) == 1
    # a folder of refused films only: refused, listed, exit 0 (it was "none of the 1 input(s) could be read", exit 2)
    capsys.readouterr()
    assert main(["predict", str(export / "IM00001"), "--model", str(tiny_model), "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    assert "lateral film" in json.loads(captured.out)["error"] and captured.err.strip().endswith("refused (input) 1")
    assert main(["predict", str(export / "IM00001"), str(export / "IM00003"), "--model", str(tiny_model)]) == 2
    assert capsys.readouterr().err.strip().endswith("none of the 2 input(s) could be read (1 refused)")


def test_batches_scored_side_by_side_come_back_in_input_order_as_one_at_a_time(
        full_data: Path, tmp_path: Path) -> None:
    """`pneumo predict`'s pipeline (issue 24): a batch per worker, each on a one-thread model, results in input order,
    a bad file in its place, and the same probabilities as each image scored alone."""
    from pneumo.data.decode import load_image_file
    from pneumo.infer.batch import predict_file_results

    files = [path for sub in ("NORMAL", "PNEUMONIA") for path in sorted((full_data / "test" / sub).glob("*.jpeg"))[:5]]
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    files.insert(4, bad)
    predictor = Predictor(None, backend="auto", threads=1)
    results = list(predict_file_results(predictor, files, batch_size=3, workers=3))
    assert [r.path for r in results] == files
    assert results[4].error and results[4].prediction is None
    for result in results[:4] + results[5:]:
        alone = predictor.predict([load_image_file(result.path, target=predictor.size)])[0]
        assert result.error is None
        assert result.prediction.p_pneumonia == pytest.approx(alone.p_pneumonia, abs=1e-6)
        assert result.prediction.label == alone.label and result.prediction.ood_score == pytest.approx(alone.ood_score)


def test_predict_threads_gives_the_same_rows_as_the_default(xrays: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """`--threads 3 --batch-size 2`: three batches scored side by side, the same rows in the same order."""
    assert main(["predict", str(xrays), "--output", str(tmp_path / "one.csv")]) == 0
    assert main(["predict", str(xrays), "--threads", "3", "--batch-size", "2", "--output", str(tmp_path / "three.csv")]) == 0
    one, three = ([{k: v for k, v in row.items() if k != "created"}  # (each run's own time apart)
                   for row in csv.DictReader(io.StringIO((tmp_path / name).read_text()))] for name in ("one.csv", "three.csv"))
    assert one == three and len(one) == 6
    capsys.readouterr()
    assert main(["predict", str(xrays), "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "pneumo predict: error: --threads must be >= 1, got 0"


def test_a_glob_that_names_folders_reads_their_images(xrays: Path, tmp_path: Path) -> None:
    """`pneumo predict 'site_*'` where the matches are folders: their images, not silence."""
    from pneumo.infer.batch import find_inputs

    images = sorted(xrays.iterdir())
    for name, part in (("site_a", images[:2]), ("site_b", images[2:3])):
        (tmp_path / name).mkdir()
        for path in part:
            shutil.copyfile(path, tmp_path / name / path.name)
    found = find_inputs([str(tmp_path / "site_*")])
    assert sorted(p.name for p in found.files) == sorted(p.name for p in images[:3]) and not found.skipped


def test_heat_maps_do_not_change_the_scores_of_a_large_jpeg(full_data: Path, tmp_path: Path) -> None:
    """A large JPEG is scored from its reduced DCT scale (as by predict, serve and evaluate) also when heat maps are
    asked for; the heat map gets the full-resolution image to draw on and the scored input to explain."""
    from PIL import Image

    from pneumo.data.decode import load_image_file
    from pneumo.infer.batch import predict_file_results

    source = min((full_data / "test" / "PNEUMONIA").glob("*.jpeg"))
    big = tmp_path / "big.jpeg"
    with Image.open(source) as img:
        img.convert("L").resize((2400, 2000), Image.Resampling.BICUBIC).save(big, quality=95)
    seen = []

    class Sink:
        def write(self, path, gray, prediction, *, prepared=None):
            seen.append(gray.shape)
            assert np.array_equal(prepared, predictor.preprocess(load_image_file(big, target=predictor.size)))

    predictor = Predictor(None, backend="torch", threads=1)
    plain = next(predict_file_results(predictor, [big])).prediction
    with_maps = next(predict_file_results(predictor, [big], heatmaps=Sink())).prediction
    assert seen == [(2000, 2400)]
    assert with_maps.p_pneumonia == plain.p_pneumonia and with_maps.label == plain.label


def test_non_finite_model_output_is_withheld_and_written_as_empty(tiny_model: Path) -> None:
    from pneumo.commands.predict import _flatten

    predictor = Predictor(tiny_model)
    nan, good = predictor.predictions(np.array([[np.nan, np.nan], [0.0, 1.0]], np.float32), None)
    assert not nan.assessed and "not a finite number" in nan.reason and nan.label == "not assessed"
    assert good.assessed and good.label == "PNEUMONIA"
    row = _flatten(nan, predictor.classes, None)
    assert row["p_pneumonia"] is None and json.loads(json.dumps(row, allow_nan=False))["label"] == "not assessed"


def test_an_onnx_export_without_features_is_refused_when_the_model_has_checks(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Its OOD and orientation checks could not run: predict and serve would label images evaluate withholds."""
    from pneumo.errors import ModelError
    from pneumo.infer import export
    from pneumo.models.sidecar import DEFAULT_MODEL

    for path in DEFAULT_MODEL.parent.glob(f"{DEFAULT_MODEL.stem}.*"):
        shutil.copyfile(path, tmp_path / path.name)
    sidecar = tmp_path / DEFAULT_MODEL.name
    monkeypatch.setattr(export, "OUTPUTS", ("logits",))  # what an older `pneumo export` wrote
    export_onnx(sidecar, tmp_path)
    monkeypatch.undo()
    for backend in ("onnx", "auto"):
        with pytest.raises(ModelError, match="no features output"):
            Predictor(sidecar, backend=backend)


def test_a_stopped_run_keeps_the_rows_it_wrote_private_and_a_killed_runs_rows_are_kept_not_deleted(
        xrays: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """A volume audit: `predict --output` stopped at 26 % of 5,856 images left nothing (SIGTERM), or a hidden file
    that the next run deleted (SIGKILL): hours of scoring lost. The rows go to OUTPUT.partial, readable by the owner
    alone; the output itself is still whole or absent."""
    import subprocess
    import sys

    from pneumo.infer import batch

    real = batch.predict_file_results

    def stopped_after_two(*args, **kwargs):
        results = real(*args, **kwargs)
        yield next(results)
        yield next(results)
        raise KeyboardInterrupt  # Ctrl-C (SIGTERM unwinds the same way: cli.Terminated)

    monkeypatch.setattr(batch, "predict_file_results", stopped_after_two)
    out = tmp_path / "out.csv"
    assert main(["predict", str(xrays), "--model", str(tiny_model), "--output", str(out)]) == 130
    partial = tmp_path / "out.csv.partial"
    rows = list(csv.DictReader(partial.open()))
    assert not out.exists() and len(rows) == 2 and stat.S_IMODE(partial.stat().st_mode) == 0o600
    assert f"stopped after 2 of {len(list(xrays.iterdir()))} image(s): their rows are in {partial}" in \
        capsys.readouterr().err
    monkeypatch.setattr(batch, "predict_file_results", real)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no longer runs: a writer killed with SIGKILL
    (tmp_path / f".out.csv.{child.pid}.0123abcd.tmp").write_text("path,label\nkilled.jpeg,NORMAL\n")
    assert main(["predict", str(xrays), "--model", str(tiny_model), "--output", str(out)]) == 0
    assert partial.read_text() == "path,label\nkilled.jpeg,NORMAL\n" and out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.csv.partial"]
