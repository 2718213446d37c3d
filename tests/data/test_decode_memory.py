"""The decoder's memory budget: checked from the header before any pixel is decoded, and peak memory within the stated
formula (pixels x (bytes per decoded pixel + 1) + ~40 MB of strip buffers per decode, at most `decode_slots` at once).

Peak memory is measured in a fresh Python process (the kernel's high-water mark, reset just before decoding)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from corpus import dicom_bytes, gradient, png_by_hand

from pneumo.data import decode
from pneumo.data.decode import decode_slots, load_image
from pneumo.errors import ConfigError, InputError

SRC = Path(decode.__file__).resolve().parents[2]
SIDE = 7000
STRIP_SLACK = 48_000_000  # strip buffers and allocator slack on top of the formula


def _png16(side: int) -> bytes:
    """A side x side 16-bit gray PNG (a ramp in every row), compressed on the fly: ~100 kB."""
    row = b"\x00" + np.linspace(0, 60000, side).astype(">u2").tobytes()
    packer = zlib.compressobj(6)
    parts = [packer.compress(row) for _ in range(side)] + [packer.flush()]
    return png_by_hand(side, side, b"".join(parts), bit_depth=16)


def _peak_growth(script: str, tmp_path: Path) -> dict[str, float]:
    """Run ``script`` (which defines ``inputs`` and ``work()``) in a fresh process; bytes of peak RSS growth during
    ``work()`` and how long it took."""
    program = textwrap.dedent('''
        import json, sys, time
        def status(key):
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
    ''') + textwrap.dedent(script) + textwrap.dedent('''
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current resident size
        base, start = status("VmHWM"), time.perf_counter()
        work()
        print(json.dumps({"growth": status("VmHWM") - base, "seconds": time.perf_counter() - start}))
    ''')
    path = tmp_path / "measure.py"
    path.write_text(program)
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          check=False, env={"PYTHONPATH": f"{SRC}:{Path(__file__).resolve().parents[1] / 'infer'}",
                               "PATH": "/usr/bin:/bin"})
    if "clear_refs" in done.stderr:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    return json.loads(done.stdout.strip().splitlines()[-1])


def test_budget_is_checked_from_the_header_before_any_pixel_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(img: object) -> np.ndarray:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(decode, "_to_gray", never)
    data = _png16(SIDE)
    with pytest.raises(InputError, match=r"too large to decode: 49000000 pixels x 3 bytes = 147 MB > limit 100 MB"):
        load_image(data, max_decode_bytes=100_000_000)


def test_dicom_budget_counts_rows_columns_bits_and_samples() -> None:
    stored = np.zeros((4, 4), np.uint16)
    data = dicom_bytes(stored, bits_stored=12, Rows=4000, Columns=4000)  # header only: the pixels are never read
    # the samples twice (the parsed file keeps the pixel bytes while pixel_array copies them: DICOM review measured
    # 273 MB at peak for a 7000^2 16-bit file the old count put at 147 + 40 MB) + the uint8 result
    with pytest.raises(InputError, match=r"16000000 pixels x 5 bytes = 80 MB > limit 60 MB"):
        load_image(data, max_decode_bytes=60_000_000)
    rgb = dicom_bytes(np.zeros((4, 4, 3), np.uint8), photometric="RGB", Rows=4000, Columns=4000)
    with pytest.raises(InputError, match=r"16000000 pixels x 7 bytes"):
        load_image(rgb, max_decode_bytes=60_000_000)


def test_reduced_jpeg_decoding_is_what_the_budget_counts() -> None:
    from corpus import pil_bytes
    from PIL import Image

    big = pil_bytes(Image.fromarray(np.tile(gradient(64, 64), (40, 40))), "JPEG", quality=80)  # 2560 x 2560
    with pytest.raises(InputError, match="too large to decode"):
        load_image(big, max_decode_bytes=10_000_000)  # full scale: 6.5 M pixels x 2 bytes
    assert load_image(big, target=224, max_decode_bytes=10_000_000).shape == (640, 640)  # 1/4 scale fits


def test_decoding_a_7000_square_16_bit_png_stays_within_the_formula(tmp_path: Path) -> None:
    result = _peak_growth(f'''
        from test_input import data
        from pneumo.data.decode import load_image
        def work():
            assert load_image(data).shape == ({SIDE}, {SIDE})
    ''', _input_module(tmp_path, _png16(SIDE)))
    formula = SIDE * SIDE * (2 + 1)  # I;16 samples + the uint8 result
    assert result["growth"] <= formula + STRIP_SLACK, f"{result['growth'] / 1e6:.0f} MB > {formula / 1e6:.0f} MB"


def test_decoding_a_7000_square_float_tiff_stays_within_the_formula(tmp_path: Path) -> None:
    result = _peak_growth(f'''
        import io
        import numpy as np
        from PIL import Image
        rows = np.tile(np.linspace(-1.0, 1.0, {SIDE}, dtype=np.float32), ({SIDE}, 1))
        buffer = io.BytesIO()
        Image.fromarray(rows, "F").save(buffer, "TIFF", compression="tiff_deflate")
        data = buffer.getvalue()
        del rows, buffer
        from pneumo.data.decode import load_image
        def work():
            assert load_image(data).shape == ({SIDE}, {SIDE})
    ''', tmp_path)
    formula = SIDE * SIDE * (4 + 1)  # float32 samples + the uint8 result
    assert result["growth"] <= formula + STRIP_SLACK, f"{result['growth'] / 1e6:.0f} MB > {formula / 1e6:.0f} MB"


def test_four_concurrent_decodes_hold_at_most_two_decodes_at_a_time(tmp_path: Path) -> None:
    result = _peak_growth(f'''
        from concurrent.futures import ThreadPoolExecutor
        from test_input import data
        from pneumo.data.decode import decode_slots, load_image
        assert decode_slots() == 2
        def work():
            with ThreadPoolExecutor(4) as pool:
                shapes = [gray.shape for gray in pool.map(lambda _: load_image(data), range(4))]
            assert shapes == [({SIDE}, {SIDE})] * 4
    ''', _input_module(tmp_path, _png16(SIDE)))
    pixels = SIDE * SIDE
    formula = 2 * (pixels * (2 + 1) + STRIP_SLACK) + 2 * pixels  # two decodes + the results kept by the other two
    assert result["growth"] <= formula, f"{result['growth'] / 1e6:.0f} MB > {formula / 1e6:.0f} MB"


def _input_module(tmp_path: Path, data: bytes) -> Path:
    (tmp_path / "input.bin").write_bytes(data)
    (tmp_path / "test_input.py").write_text(f"data = open({str(tmp_path / 'input.bin')!r}, 'rb').read()\n")
    return tmp_path


def test_decode_slots_bound_concurrent_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    running, seen, lock = [0], [0], threading.Lock()
    real = decode._decode_pillow

    def counting(*args: object, **kwargs: object) -> np.ndarray:
        with lock:
            running[0] += 1
            seen[0] = max(seen[0], running[0])
        time.sleep(0.05)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(decode, "_decode_pillow", counting)
    from corpus import jpeg_bytes

    data = jpeg_bytes()
    previous = decode_slots()
    try:
        for slots in (1, 3):
            decode_slots(slots)
            seen[0] = 0
            threads = [threading.Thread(target=load_image, args=(data,)) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert seen[0] == slots
    finally:
        decode_slots(previous)
    with pytest.raises(ConfigError):
        decode_slots(0)


def _webp(side: int) -> bytes:
    """A side x side lossless WebP of one colour, 38 bytes whatever the side (the red-team file: 2.5 KB at 7000): a
    64 x 64 one made by Pillow, with the side written into its VP8L header (a single-colour image costs no bits per
    pixel, so the stream stays valid; Pillow decodes it). Encoding 7000 x 7000 pixels would take 12 s."""
    from corpus import pil_bytes
    from PIL import Image

    data = bytearray(pil_bytes(Image.new("L", (64, 64), 128), "WEBP", lossless=True, method=0, quality=0))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    header = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)  # alpha and version bits kept
    data[21:25] = (header | (side - 1) | (side - 1) << 14).to_bytes(4, "little")
    return bytes(data)


def test_a_7000_square_webp_is_refused_before_any_pixel_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    data = _webp(SIDE)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("the WebP was decoded"))
    per_pixel = decode.WEBP_BYTES_PER_PIXEL + 1
    with pytest.raises(InputError, match=rf"too large to decode: 49000000 pixels x {per_pixel} bytes"):
        load_image(data, target=224)


def test_decoding_a_webp_stays_within_the_formula(tmp_path: Path) -> None:
    side = 3000  # 9 M pixels: within the default budget at WEBP_BYTES_PER_PIXEL
    result = _peak_growth(f'''
        from test_input import data
        from pneumo.data.decode import load_image
        def work():
            assert load_image(data).shape == ({side}, {side})
    ''', _input_module(tmp_path, _webp(side)))
    formula = side * side * (decode.WEBP_BYTES_PER_PIXEL + 1)  # (measured 16.3-16.5 B/px: Pillow 13)
    assert result["growth"] <= formula + STRIP_SLACK, f"{result['growth'] / 1e6:.0f} MB > {formula / 1e6:.0f} MB"
    assert side * side * (4 + 1) + STRIP_SLACK < result["growth"]  # what an RGB image alone would be counted


def test_a_progressive_jpeg_counts_its_coefficients_at_full_size_under_draft() -> None:
    from corpus import pil_bytes
    from PIL import Image

    image = Image.fromarray(np.tile(gradient(64, 64), (40, 40)))  # 2560 x 2560
    baseline, progressive = (pil_bytes(image, "JPEG", quality=80, progressive=p) for p in (False, True))
    assert load_image(baseline, target=224, max_decode_bytes=10_000_000).shape == (640, 640)
    with pytest.raises(InputError, match=r"409600 pixels x 2 bytes \+ 13 MB of buffered coefficients"):
        load_image(progressive, target=224, max_decode_bytes=10_000_000)  # 2560^2 int16 coefficients: 13 MB
    assert load_image(progressive, target=224, max_decode_bytes=15_000_000).shape == (640, 640)


def test_decoding_a_reduced_7000_square_progressive_jpeg_stays_within_the_formula(tmp_path: Path) -> None:
    from corpus import pil_bytes
    from PIL import Image

    tile = np.tile(gradient(70, 70), (100, 100))  # 7000 x 7000 gray
    data = pil_bytes(Image.fromarray(tile), "JPEG", quality=80, progressive=True)
    del tile
    result = _peak_growth('''
        from test_input import data
        from pneumo.data.decode import load_image
        def work():
            assert load_image(data, target=224).shape == (875, 875)
    ''', _input_module(tmp_path, data))
    formula = 875 * 875 * (1 + 1) + SIDE * SIDE * 2  # the 1/8-scale samples + the result + full-size coefficients
    assert result["growth"] <= formula + STRIP_SLACK, f"{result['growth'] / 1e6:.0f} MB > {formula / 1e6:.0f} MB"
    assert 875 * 875 * (1 + 1) + STRIP_SLACK < result["growth"]  # what the draft size alone would be counted
