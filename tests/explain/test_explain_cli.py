"""`pneumo explain` end to end on real radiographs, through ``pneumo.cli.main``."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pneumo.cli import main
from pneumo.explain.overlay import heatmap_name


@pytest.fixture()
def folder(tmp_path: Path, real_paths: list[Path]) -> Path:
    """Two real radiographs and one corrupt JPEG."""
    images = tmp_path / "images"
    images.mkdir()
    for path in real_paths[1:3]:
        shutil.copyfile(path, images / path.name)
    (images / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return images


def test_folder_with_a_corrupt_file_explains_the_good_ones_and_reports_the_bad_one(
        tmp_path: Path, folder: Path, checkpoint_factory: Callable[..., Path], real_paths: list[Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    """... and a dangling link, which it left out without a word (exit 0); the contact sheet counted the films it
    showed only, and named no model (an explain audit)."""
    (folder / "gone.jpeg").symlink_to(tmp_path / "nowhere.jpeg")
    out = tmp_path / "out"
    rc = main(["explain", str(folder), "--model", str(checkpoint_factory()), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert [line for line in err.splitlines() if line.strip()] == [
        line for line in err.splitlines() if "broken.jpeg" in line or "gone.jpeg: skipped: dangling" in line]
    assert len(err.strip().splitlines()) == 2
    for path in real_paths[1:3]:
        name = heatmap_name(folder / path.name)  # named after the file explained (the folder's copy)
        raw = np.load(out / f"{name}.cam.npy")
        assert (out / f"{name}.cam.png").is_file() and raw.ndim == 2
    assert not list(out.glob("broken*"))
    page = (out / "index.html").read_text()
    assert all(f"thumbs/{heatmap_name(folder / p.name)}.cam.png" in page for p in real_paths[1:3])
    assert "2 image(s); 2 not explained." in page and "gone.jpeg</b>: not explained: skipped: dangling" in page
    assert "broken.jpeg</b>: not explained:" in page and "· gradcam · target predicted" in page
    capsys.readouterr()
    assert main(["explain", str(folder / "gone.jpeg"), "--out", str(tmp_path / "none")]) == 2
    assert "no input images found; " in capsys.readouterr().err  # and why: the link's target is not there


def test_occlusion_method_writes_its_own_files(tmp_path: Path, real_paths: list[Path],
                                               checkpoint_factory: Callable[..., Path]) -> None:
    out = tmp_path / "out"
    rc = main(["explain", str(real_paths[0]), "--model", str(checkpoint_factory()), "--out", str(out),
               "--method", "occlusion", "--window", "16", "--stride", "8"])
    assert rc == 0
    assert (out / f"{heatmap_name(real_paths[0])}.occlusion-w16s8.png").is_file()
    assert not (out / "index.html").exists()
    # another window writes other files (a second run overwrote the first's), the defaults keep the plain name
    assert main(["explain", str(real_paths[0]), "--model", str(checkpoint_factory()), "--out", str(out),
                 "--method", "occlusion"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        f"{heatmap_name(real_paths[0])}.{tag}.png" for tag in ("occlusion-w16s8", "occlusion"))


def test_window_and_stride_for_another_method_are_refused_and_the_caption_names_the_settings(
        tmp_path: Path, real_paths: list[Path], checkpoint_factory: Callable[..., Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    """--window/--stride with Grad-CAM were ignored without a word; a map of another layer had the default's caption
    word for word (explanations review)."""
    from pneumo.explain.render import caption_lines
    from pneumo.infer.predictor import Predictor

    model = str(checkpoint_factory())
    assert main(["explain", str(real_paths[0]), "--model", model, "--out", str(tmp_path / "a"), "--window", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--window and --stride apply to occlusion only" in err and "\n" not in err
    prediction = Predictor(model).predict([np.zeros((64, 64), np.uint8) + 100])[0]
    assert caption_lines(prediction, detail="layer blocks.2")[1].startswith("Grad-CAM (layer blocks.2): evidence for")


def test_another_target_or_layer_writes_its_own_files(tmp_path: Path, real_paths: list[Path],
                                                      checkpoint_factory: Callable[..., Path]) -> None:
    """`--target pneumonia` and `--layer` wrote the same <stem>.cam.png as the default: a second run into the same
    --out overwrote the first's maps."""
    out, model, name = tmp_path / "out", str(checkpoint_factory()), heatmap_name(real_paths[0])
    runs = {"cam": [], "cam-pneumonia": ["--target", "pneumonia"]}
    from pneumo.explain.cam import default_layer_name
    from pneumo.infer.predictor import Predictor

    layer = default_layer_name(Predictor(model).torch_model)
    runs[f"cam-{layer}"] = ["--layer", layer]
    for extra in runs.values():
        assert main(["explain", str(real_paths[0]), "--model", model, "--out", str(out), *extra]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{name}.{tag}.png" for tag in runs)


def test_onnx_model_path_is_refused_with_a_clear_message(tmp_path: Path, real_paths: list[Path],
                                                         checkpoint_factory: Callable[..., Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    onnx = checkpoint_factory().with_suffix(".onnx")
    rc = main(["explain", str(real_paths[0]), "--model", str(onnx), "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "explanations need the PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_layer_lists_the_valid_ones_and_writes_nothing(tmp_path: Path, real_paths: list[Path],
                                                               checkpoint_factory: Callable[..., Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["explain", str(real_paths[0]), "--model", str(checkpoint_factory()), "--out", str(tmp_path / "o"),
               "--layer", "blocks.9"])
    assert rc == 2
    assert "valid layers include backbone.blocks.4" in capsys.readouterr().err
    assert not list((tmp_path / "o").glob("*.png"))


def test_the_score_shown_is_predicts_also_for_a_large_jpeg(tmp_path: Path, real_paths: list[Path],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """`explain` scored the full-resolution decode; predict, serve and training score a large JPEG from its reduced
    decode, so the label and P(pneumonia) it printed could differ from predict's."""
    from PIL import Image

    from pneumo.data.decode import load_image_file
    from pneumo.explain.overlay import HeatmapWriter
    from pneumo.infer.predictor import Predictor

    big = tmp_path / "big.jpeg"
    with Image.open(real_paths[0]) as img:
        img.convert("L").resize((2400, 2000), Image.Resampling.BICUBIC).save(big, quality=95)
    passed, real = [], HeatmapWriter.write_result

    def recording(self, path, gray, prediction=None, *, prepared=None):
        passed.append((gray.shape, prediction, prepared))
        return real(self, path, gray, prediction, prepared=prepared)

    monkeypatch.setattr(HeatmapWriter, "write_result", recording)
    assert main(["explain", str(big), "--out", str(tmp_path / "maps")]) == 0
    predictor = Predictor(None)
    expected = predictor.predict([load_image_file(big, target=predictor.size)])[0]
    (shape, prediction, prepared), = passed
    assert shape == (2000, 2400) and prediction is not None
    # the map explains the input that was scored (it explained the full-resolution decode, up to 103 levels off)
    assert np.array_equal(prepared, predictor.preprocess(load_image_file(big, target=predictor.size)))
    assert prediction.p_pneumonia == pytest.approx(expected.p_pneumonia, abs=1e-6)
    printed = capsys.readouterr().out
    assert f"P(pneumonia)={expected.p_pneumonia:.3f}" in printed and "\tmap_scale=" in printed


def test_images_the_input_gate_refuses_are_refused_as_predict_refuses_them(
        tmp_path: Path, folder: Path, checkpoint_factory: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A blank image and a tiny one were explained with a score and a heat map (exit 0) where predict, serve and
    evaluate refuse them: explain reads its inputs as predict does (`load_input`), with the same reasons."""
    from PIL import Image

    Image.new("L", (400, 400), 128).save(folder / "blank.png")
    Image.new("L", (60, 50), 90).save(folder / "tiny.png")
    model = str(checkpoint_factory())
    rc = main(["explain", str(folder), "--model", model, "--out", str(tmp_path / "out")])
    explained = capsys.readouterr()
    assert rc == 1 and "blank.png" not in explained.out and "tiny.png" not in explained.out
    main(["predict", str(folder), "--model", model, "--output", str(tmp_path / "p.csv")])
    capsys.readouterr()
    import pandas as pd

    rows = pd.read_csv(tmp_path / "p.csv").assign(name=lambda df: df["path"].map(lambda p: Path(p).name))
    for name in ("blank.png", "tiny.png"):
        reason = rows.loc[rows["name"] == name, "error"].item()
        assert f"{name}: {reason}" in explained.err
    assert not list((tmp_path / "out").glob("blank*")) and not list((tmp_path / "out").glob("tiny*"))


def test_an_image_without_a_verdict_says_so_beside_its_map(tmp_path: Path, real_paths: list[Path],
                                                           capsys: pytest.CaptureFixture) -> None:
    """An inverted film got "evidence for PNEUMONIA" at P 1.00 on the CLI with no word of the refusal (the web page
    said it): the caption, stdout and the contact sheet now say there is no verdict and why."""
    from PIL import Image, ImageDraw, ImageOps

    from pneumo.explain.render import caption_lines
    from pneumo.infer.predictor import Predictor

    inverted = tmp_path / "inverted.png"
    with Image.open(real_paths[0]) as img:
        ImageOps.invert(img.convert("L")).save(inverted)
    upright = tmp_path / real_paths[1].name
    shutil.copyfile(real_paths[1], upright)
    assert main(["explain", str(inverted), str(upright), "--out", str(tmp_path / "maps")]) == 0
    printed = capsys.readouterr().out.splitlines()
    refused = next(line for line in printed if line.startswith(str(inverted)))
    assert "not assessed" in refused and "no verdict: " in refused and "audit only" in refused
    assert "no verdict" not in next(line for line in printed if line.startswith(str(upright)))
    assert "no verdict: " in (tmp_path / "maps" / "index.html").read_text()
    from pneumo.data.decode import load_image_file

    prediction = Predictor(None).predict([load_image_file(inverted)])[0]
    assert caption_lines(prediction)[-1] == f"NO VERDICT: {prediction.reason}; map for audit only"
    # on a narrow overlay (the service's: 320 px wide) the whole caption fits: it was cut off at the image's edge
    from pneumo.explain.render import _font, wrap

    narrow = Image.new("RGB", (320, 451))
    font, _, pad = _font(narrow)
    lines = wrap(caption_lines(prediction), font, narrow.width - 2 * pad)
    measure = ImageDraw.Draw(narrow)
    assert len(lines) > len(caption_lines(prediction)) and " ".join(lines).endswith("map for audit only")
    assert all(measure.textlength(line, font=font) <= narrow.width - 2 * pad for line in lines)
    assert " ".join(lines).split() == " ".join(caption_lines(prediction)).split()  # every word, in order


def test_an_output_path_that_is_a_file_is_one_line_before_any_work(tmp_path: Path, real_paths: list[Path],
                                                                   capsys: pytest.CaptureFixture) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for argv in (["explain", str(real_paths[0]), "--out", str(taken)],
                 ["explain", str(real_paths[0]), "--out", str(taken / "sub")],
                 ["predict", str(real_paths[0]), "--heatmaps", str(taken), "--output", str(tmp_path / "p.csv")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "is a file" in err, err
    assert main(["explain", str(real_paths[0]), "--out", "/proc/no-such-folder"]) == 2  # was a bare "[Errno 2] ..."
    assert "--out /proc/no-such-folder: cannot make the folder" in capsys.readouterr().err


def test_explain_prints_one_line_per_file_whatever_its_name(tmp_path: Path, real_paths: list[Path],
                                                            checkpoint_factory: Callable[..., Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A file named with an escape sequence and a newline cleared the operator's screen and forged an 'INFO' line."""
    images = tmp_path / "images"
    images.mkdir()
    shutil.copyfile(real_paths[1], images / "ansi\x1b[31mRED\nINFO fake log line.jpeg")
    (images / "broken\x1b[2J\nERROR forged.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    assert main(["explain", str(images), "--model", str(checkpoint_factory()), "--out", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    for stream, expected in ((captured.out, 2), (captured.err, 1)):  # the result and the contact sheet; the error
        assert "\x1b" not in stream and len(stream.strip().splitlines()) == expected, stream
    assert "ansi\\x1b[31mRED\\nINFO fake log line.jpeg" in captured.out


def test_a_malformed_dicom_is_one_line_without_pydicoms_warnings(tmp_path: Path, capsys) -> None:
    """pydicom's warnings (two log lines and two UserWarnings, one echoing the file's bytes) came before the one-line
    error (explanations review); `-v` keeps them. In this process (a process start costs ~6 s): every warning shown,
    so that one the command let through is recorded here, and a new handler of the root logger (the command quiets
    the root logger's handlers) keeps the log records it is given."""
    import logging
    import warnings

    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 20)

    class Kept(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    def run(*flags: str) -> tuple[int, list, list]:
        kept, root = Kept(), logging.getLogger()
        root.addHandler(kept)
        try:
            with warnings.catch_warnings(record=True) as shown:
                warnings.simplefilter("always")
                code = main([*flags, "explain", str(bad), "--out", str(tmp_path / "maps")])
        finally:
            root.removeHandler(kept)
        return code, [w for w in shown if "pydicom" in w.filename], [
            r for r in kept.records if r.name.startswith("pydicom") and r.levelno >= logging.WARNING]

    code, shown, logged = run("-v")  # the warnings are there to leave out (-v keeps them)
    assert code == 0 and shown and logged  # refused for what it is (no pixels), as predict refuses it: no failure
    code, shown, logged = run()
    err = capsys.readouterr().err
    assert code == 0 and "no pixel data" in err and "pydicom" not in err and "Warning" not in err, err
    assert not shown and not logged, (shown, logged)


def test_a_lateral_film_is_refused_as_predict_refuses_it_and_fails_nothing(tmp_path: Path, real_paths: list[Path],
                                                                          checkpoint_factory: Callable[..., Path],
                                                                          capsys: pytest.CaptureFixture) -> None:
    """predict refuses a lateral film with its reason and exits 0; explain counted it a failure (exit 1, or exit 2
    "none could be read" alone; a review)."""
    from corpus import dicom_bytes

    lateral = tmp_path / "lateral.dcm"
    lateral.write_bytes(dicom_bytes(np.full((64, 64), 90, np.uint8), ViewPosition="LL"))
    model = str(checkpoint_factory())
    assert main(["explain", str(real_paths[0]), str(lateral), "--model", model, "--out", str(tmp_path / "a")]) == 0
    assert "lateral" in capsys.readouterr().err
    assert main(["explain", str(lateral), "--model", model, "--out", str(tmp_path / "b")]) == 0
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    assert main(["explain", str(lateral), str(broken), "--model", model, "--out", str(tmp_path / "c")]) == 2
    assert "none of the 2 input(s) could be read (1 refused)" in capsys.readouterr().err
