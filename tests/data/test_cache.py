from __future__ import annotations

import errno
import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo import atomic
from pneumo.data.cache import build_cache, cache_key, kept_array
from pneumo.data.decode import load_image
from pneumo.data.manifest import scan_dataset
from pneumo.data.preprocess import letterbox_box, prepare, resize_gray


def test_cache_is_built_once_and_reopened_memory_mapped(data_slice: Path, cache_dir: Path) -> None:
    df = scan_dataset(data_slice)
    first = build_cache(df, data_slice, size=64, cache_dir=cache_dir, progress=False)
    mtime = first.file.stat().st_mtime_ns
    again = build_cache(df, data_slice, size=64, cache_dir=cache_dir, progress=False)
    assert again.file == first.file and again.file.stat().st_mtime_ns == mtime
    assert isinstance(again.images, np.memmap)
    assert again.images.shape == (len(df), 64, 64) and again.images.dtype == np.uint8


def test_cache_matches_decoding_each_image_directly(data_slice: Path, cache_dir: Path) -> None:
    df = scan_dataset(data_slice)
    cache = build_cache(df, data_slice, size=96, policy="letterbox", cache_dir=cache_dir, progress=False, workers=2)
    for i in (0, len(df) // 2, len(df) - 1):
        raw = (data_slice / df["path"].iloc[i]).read_bytes()
        expected = resize_gray(load_image(raw, target=96), size=96, policy="letterbox")
        assert np.array_equal(cache.images[i], expected)


def test_cache_key_changes_with_parameters_and_content(data_slice: Path, cache_dir: Path) -> None:
    df = scan_dataset(data_slice)
    a = build_cache(df, data_slice, size=64, cache_dir=cache_dir, progress=False)
    b = build_cache(df, data_slice, size=64, policy="letterbox", cache_dir=cache_dir, progress=False)
    changed = df.copy()
    changed.loc[0, "sha256"] = "0" * 64
    assert len({a.key, b.key, cache_key(changed, size=64, policy="squash", intensity="none")}) == 3


def test_a_new_decoder_version_builds_a_new_cache_from_the_new_pixels(data_slice: Path, cache_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade whose decoder changes pixels (`DECODER_VERSION` bumped) reused the cache the old decoder made:
    training and evaluation read the old pixels while predict and serve decode with the new code (rev8b item 8)."""
    from pneumo.data import decode

    df = scan_dataset(data_slice).iloc[:4]
    old = build_cache(df, data_slice, size=32, cache_dir=cache_dir, progress=False, workers=1)
    real = decode.load_image
    monkeypatch.setattr(decode, "load_image", lambda data, target=None: 255 - real(data, target=target))
    monkeypatch.setattr(decode, "DECODER_VERSION", decode.DECODER_VERSION + 1)
    new = build_cache(df, data_slice, size=32, cache_dir=cache_dir, progress=False, workers=1)
    assert new.key != old.key and new.file != old.file
    assert new.key == cache_key(df, size=32, policy="squash", intensity="none")
    raw = (data_slice / df["path"].iloc[0]).read_bytes()
    assert np.array_equal(new.images[0], prepare(255 - real(raw, target=32), size=32))


def test_another_version_of_a_pixel_library_makes_another_cache_and_scan_key(data_slice: Path, cache_dir: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's bundled JPEG library, OpenCV's resize and pydicom's plugins change pixels between versions: an
    upgrade reused caches made with the old ones (a review)."""
    import PIL

    from pneumo.data import decode

    df = scan_dataset(data_slice).iloc[:4]
    before = cache_key(df, size=32, policy="squash", intensity="none")
    assert f"PIL={PIL.__version__}|" in decode.pixel_libraries()
    monkeypatch.setattr(PIL, "__version__", PIL.__version__ + ".post1")
    assert cache_key(df, size=32, policy="squash", intensity="none") != before
    from pneumo import provenance  # SciPy makes the lung crop's pixels (a cache review: it was not in the key)

    lungs = cache_key(df, size=32, policy="squash", intensity="none", crop="lungs")
    real = provenance.package_version
    with monkeypatch.context() as patch:
        patch.setattr(provenance, "package_version", lambda name: real(name) + (".post1" if name == "scipy" else ""))
        assert cache_key(df, size=32, policy="squash", intensity="none", crop="lungs") != lungs
    scans = cache_dir / "scans"
    scan_dataset(data_slice, cache_dir=cache_dir)
    kept = {f.name for f in scans.glob("*.json")}
    monkeypatch.undo()
    scan_dataset(data_slice, cache_dir=cache_dir)
    assert {f.name for f in scans.glob("*.json")} != kept  # scanned again: another key


def test_a_file_whose_bytes_are_not_the_scanned_ones_fails_the_build(data_slice: Path, tmp_path: Path) -> None:
    """The key is the scanned SHA-256s: a file changed since the scan (or another copy of the dataset under
    `--dataset` with the same paths) was cached under it, and every later run read those images as the key's."""
    from pneumo.errors import DataError

    root = tmp_path / "data"
    shutil.copytree(data_slice, root)
    df = scan_dataset(root)
    shutil.copyfile(root / df["path"].iloc[1], root / df["path"].iloc[0])  # a valid image, not the scanned one
    cache_dir = tmp_path / "cache"
    with pytest.raises(DataError, match="not the scanned file's") as err:
        build_cache(df, root, size=32, cache_dir=cache_dir, progress=False, workers=1)
    assert df["path"].iloc[0] in str(err.value)
    assert not [p for p in cache_dir.rglob("*") if p.is_file()]


def test_letterbox_keeps_the_aspect_ratio_and_pads_black() -> None:
    img = np.full((100, 200), 255, np.uint8)
    out = resize_gray(img, size=64, policy="letterbox")
    top, _left, h, w = letterbox_box(100, 200, 64)
    assert (h, w) == (32, 64)
    assert out[:top].max() == 0 and out[top + h :].max() == 0
    assert out[top + 1 : top + h - 1].min() == 255


def test_large_jpegs_are_decoded_at_a_reduced_scale() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1600, 2000), dtype=np.uint8)).save(buf, "JPEG")
    small = load_image(buf.getvalue(), target=224)
    assert small.shape == (800, 1000)  # 1/2 scale keeps the short side >= 2 x 224
    assert load_image(buf.getvalue()).shape == (1600, 2000)


def test_rows_for_follows_the_order_of_the_frame_given(data_slice: Path, cache_dir: Path) -> None:
    df = scan_dataset(data_slice)
    cache = build_cache(df, data_slice, size=32, cache_dir=cache_dir, progress=False)
    rows = cache.rows_for(df.iloc[::-1])
    assert rows.tolist() == list(range(len(df)))[::-1]
    assert cache.images[rows[0]].dtype == np.uint8 and cache.images[rows[0]].shape == (32, 32)


def test_rows_for_unknown_images_is_an_error(data_slice: Path, cache_dir: Path) -> None:
    from pneumo.errors import DataError

    df = scan_dataset(data_slice)
    cache = build_cache(df.iloc[:5], data_slice, size=32, cache_dir=cache_dir, progress=False)
    with pytest.raises(DataError, match="not in the cache"):
        cache.rows_for(df.iloc[:6])


def test_an_undecodable_image_fails_the_build_and_leaves_no_partial_cache(data_slice: Path, tmp_path: Path) -> None:
    from pneumo.errors import DataError

    root = tmp_path / "data"
    shutil.copytree(data_slice, root)
    df = scan_dataset(root)
    (root / df["path"].iloc[0]).write_bytes(b"\xff\xd8 not a jpeg")
    cache_dir = tmp_path / "cache"
    with pytest.raises(DataError, match="could not be decoded"):
        build_cache(df, root, size=32, cache_dir=cache_dir, progress=False, workers=1)
    assert not [p for p in cache_dir.rglob("*") if p.is_file()]


def test_decode_workers_die_with_their_parent() -> None:
    """A killed `evaluate` or `data cache` left its decode workers waiting forever (each ~0.9 GB, holding the deleted
    cache file's disk space; the concurrency review): they are asked to die with the process that started them."""
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    script = ("import os, time; from concurrent.futures import ProcessPoolExecutor\n"
              "from pneumo.data.cache import die_with_parent\n"
              "def pid(_): time.sleep(0.2); return os.getpid()\n"
              "if __name__ == '__main__':\n"
              "    pool = ProcessPoolExecutor(2, initializer=die_with_parent)\n"
              "    print(*set(pool.map(pid, range(4))), flush=True)\n"
              "    pool.submit(time.sleep, 60); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    workers = {int(pid) for pid in parent.stdout.readline().split()}
    assert workers and parent.pid not in workers
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in workers):
        time.sleep(0.1)
    alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}")]
    for pid in alive:  # (a failing run must not leave them behind either)
        os.kill(pid, signal.SIGKILL)
    assert not alive


def _no_space(fd: int, offset: int, length: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_fails_the_build_with_enospc_and_leaves_no_temp_file(
        data_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The array was written through a memmap of a sparse file: on a full disk the kernel killed the process with
    SIGBUS (no message, the temp file left behind; rev8b item 5). Its blocks are reserved first, so a full disk is
    an ENOSPC error naming the cache before any image is decoded."""
    df = scan_dataset(data_slice).iloc[:4]
    monkeypatch.setattr(os, "posix_fallocate", _no_space, raising=False)
    cache_dir = tmp_path / "cache"
    with pytest.raises(OSError, match="needs") as err:
        build_cache(df, data_slice, size=32, cache_dir=cache_dir, progress=False, workers=1)
    assert err.value.errno == errno.ENOSPC and "images-32-" in str(err.value)
    assert not [p for p in cache_dir.rglob("*") if p.is_file()]


def test_a_full_disk_is_one_line_and_exit_2_from_the_cli(data_slice: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    from pneumo.cli import main

    monkeypatch.setattr(os, "posix_fallocate", _no_space, raising=False)
    cache_dir = tmp_path / "c"
    assert main(["data", "cache", "--dataset", str(data_slice), "--size", "32", "--cache-dir", str(cache_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "No space left on device" in err and "Traceback" not in err
    assert not list(cache_dir.glob("*images-32-*"))


def test_a_derived_array_a_read_only_cache_cannot_keep_is_returned_with_one_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """`kept_array` wrote after computing without a way out: on a read-only cache `evaluate` failed after scoring
    (rev8b item 9). As the dataset scan does, the array is used and computed again next time."""
    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root writes through the mode bits: fail the write as a read-only mount does

        def read_only(path: Path, **kwargs: object) -> None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        monkeypatch.setattr(atomic, "writing", read_only)
    computed = []

    def logits() -> np.ndarray:
        computed.append(1)
        return np.arange(6, dtype=np.float32).reshape(3, 2)

    file = folder / "val-logits-x.npy"
    with caplog.at_level(logging.WARNING, logger="pneumo.data.cache"):
        assert np.array_equal(kept_array(file, logits, (3, 2)), np.arange(6).reshape(3, 2))
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and str(file) in warned[0] and "not kept" in warned[0]
        kept_array(file, logits, (3, 2))
    assert len(computed) == 2 and not list(folder.iterdir())  # nothing kept: computed on each call


@pytest.mark.parametrize("index", ["[]", '{"key": "KEY", "paths": null}', '"index"', None])
def test_a_malformed_cache_file_is_rebuilt(data_slice: Path, cache_dir: Path, index: str | None) -> None:
    """An index of ``[]`` or with paths of ``null`` (a TypeError), or an empty array file (an EOFError), gave a
    traceback instead of a rebuild (rev8b item 10). ``None``: the array file is the broken one."""
    df = scan_dataset(data_slice).iloc[:4]
    first = build_cache(df, data_slice, size=32, cache_dir=cache_dir, progress=False, workers=1)
    pixels = np.array(first.images)
    if index is None:
        first.file.write_bytes(b"")
    else:
        first.file.with_suffix(".json").write_text(index.replace("KEY", first.key))
    again = build_cache(df, data_slice, size=32, cache_dir=cache_dir, progress=False, workers=1)
    assert again.file == first.file and again.paths == df["path"].tolist()
    assert np.array_equal(again.images, pixels)
    assert build_cache(df, data_slice, size=32, cache_dir=cache_dir, progress=False).file == first.file


def test_a_kept_array_with_no_rows_is_computed_again(tmp_path: Path) -> None:
    """`kept_array` read ``kept.shape[0]`` outside its try: a 0-d array in the file was an IndexError traceback
    (rev8b item 10) instead of a damaged file computed again."""
    file = tmp_path / "val-logits-x.npy"
    np.save(file, np.float32(1))
    logits = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert np.array_equal(kept_array(file, lambda: logits, (3, 2)), logits)
    assert np.array_equal(np.load(file), logits)  # kept in its place


@pytest.mark.parametrize("planted", [np.zeros(3, np.float32), np.full((3, 2), "1"), np.zeros((3, 3), np.float32),
                                     np.zeros((3, 2)), np.full((3, 2), np.inf, np.float32)],
                         ids=["1-D", "strings", "another width", "float64", "not finite"])
def test_a_kept_array_of_another_shape_type_or_with_non_finite_values_is_computed_again(planted: np.ndarray,
                                                                                        tmp_path: Path) -> None:
    """Only the row count was checked: a 1-D array of zeros or one of strings became a model's val-fold logits and a
    new model folder was written from them (a cache review)."""
    file = tmp_path / "val-logits-x.npy"
    np.save(file, planted)
    logits = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert np.array_equal(kept_array(file, lambda: logits, (3, 2)), logits)
    assert np.array_equal(np.load(file), logits) and np.load(file).dtype == np.float32


def test_a_computed_array_that_could_never_be_read_back_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected float32"):
        kept_array(tmp_path / "f.npy", lambda: np.zeros((3, 2)), (3, 2))


def test_a_computed_array_with_non_finite_values_is_returned_not_kept(tmp_path: Path) -> None:
    """A broken model's logits were written and never read back (not finite): rewritten at every evaluation."""
    broken = np.full((3, 2), np.nan, np.float32)
    file = tmp_path / "val-logits-x.npy"
    assert np.isnan(kept_array(file, lambda: broken, (3, 2))).all() and not file.exists()
