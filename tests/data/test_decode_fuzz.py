"""Property tests: whatever the bytes, `load_image` returns a uint8 gray array or raises `InputError`, nothing else.

The default budget is small (150 examples per property, a few seconds in all). For a longer run:

    PNEUMO_FUZZ_EXAMPLES=20000 pytest tests/infer/test_fuzz.py -q

Seeds are small valid images of every accepted format plus, when the dataset is present, a real radiograph.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
from corpus import dicom_bytes, gradient, jpeg_bytes, pil_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pneumo.data.decode import load_image
from pneumo.errors import InputError

EXAMPLES = int(os.environ.get("PNEUMO_FUZZ_EXAMPLES", "150"))
MAX_PIXELS = 4_000_000  # keeps a mutated size field from making one example slow
REAL_DATA = Path(os.environ.get("PNEUMO_TEST_DATA", Path(__file__).resolve().parents[3] / "shared/data/chest_xray"))
MAGICS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBP",
          bytes(128) + b"DICM"]

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom and Pillow warn about the malformed data on purpose
fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@functools.cache
def seeds() -> dict[str, bytes]:
    img = Image.fromarray(gradient(24, 32))
    out = {
        "jpeg": jpeg_bytes(24, 32),
        "png": pil_bytes(img, "PNG"),
        "png16": pil_bytes(Image.fromarray(gradient(24, 32).astype(np.uint16) * 200), "PNG"),
        "gif": pil_bytes(img.convert("P"), "GIF"),
        "tiff": pil_bytes(img, "TIFF", compression="tiff_lzw"),
        "bmp": pil_bytes(img, "BMP"),
        "webp": pil_bytes(img, "WEBP", lossless=True),
        "dicom": dicom_bytes(gradient(24, 32)),
        "dicom16": dicom_bytes(gradient(24, 32).astype(np.uint16) * 16, bits_stored=12, RescaleSlope="2",
                               RescaleIntercept="-100", WindowCenter="2000", WindowWidth="3000"),
        "dicom_mono1": dicom_bytes(gradient(24, 32).astype(np.int16), photometric="MONOCHROME1"),
    }
    real = sorted((REAL_DATA / "test" / "NORMAL").glob("*.jpeg"))[:1]
    if real:
        out["real_jpeg"] = real[0].read_bytes()
    return out


def check(data: bytes, target: int | None = None) -> None:
    """The property: a valid uint8 2-D array within the pixel limit, or a one-line InputError."""
    try:
        gray = load_image(data, target=target, max_pixels=MAX_PIXELS)
    except InputError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) <= 400
        return
    assert isinstance(gray, np.ndarray) and gray.dtype == np.uint8 and gray.ndim == 2
    assert gray.flags.c_contiguous and 0 < gray.size <= MAX_PIXELS


seed_names = st.sampled_from(sorted(seeds()))
targets = st.sampled_from([None, 32])


def test_every_seed_decodes() -> None:
    for name, data in seeds().items():
        assert load_image(data).ndim == 2, name


@fuzz
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise_anything_but_input_error(data: bytes) -> None:
    check(data)


@fuzz
@given(st.sampled_from(MAGICS), st.binary(max_size=4096), targets)
def test_random_bytes_behind_a_valid_magic_never_raise_anything_but_input_error(magic: bytes, tail: bytes,
                                                                                target: int | None) -> None:
    check(magic + tail, target)


@fuzz
@given(seed_names, st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=8),
       targets)
def test_bit_flipped_images_never_raise_anything_but_input_error(name: str, flips: list[tuple[float, int]],
                                                                 target: int | None) -> None:
    data = bytearray(seeds()[name])
    for where, bit in flips:
        data[int(where * len(data))] ^= 1 << bit
    check(bytes(data), target)


@fuzz
@given(seed_names, st.floats(0, 1), st.binary(max_size=64))
def test_truncated_or_padded_images_never_raise_anything_but_input_error(name: str, keep: float, tail: bytes) -> None:
    data = seeds()[name]
    check(data[: int(keep * len(data))] + tail)


@fuzz
@given(seed_names, st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=16))
def test_overwritten_fields_never_raise_anything_but_input_error(name: str, where: float, patch: bytes) -> None:
    """Overwrites a run of bytes: hits size fields, lengths, tags and markers more often than single flips."""
    data = bytearray(seeds()[name])
    at = int(where * len(data))
    data[at : at + len(patch)] = patch
    check(bytes(data))


@fuzz
@given(seed_names, seed_names, st.floats(0, 1), st.floats(0, 1))
def test_spliced_images_never_raise_anything_but_input_error(first: str, second: str, cut_a: float,
                                                             cut_b: float) -> None:
    head, tail = seeds()[first], seeds()[second]
    check(head[: int(cut_a * len(head))] + tail[int(cut_b * len(tail)) :])


_DS = st.sampled_from(["", "0", "1", "-1", "0.5", "2", "-1024", "4095", "65535", "1e9", "-1e9", "1e-9"])
_PHOTOMETRIC = st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "X"])


@fuzz
@given(rows=st.integers(0, 40), columns=st.integers(0, 40), samples=st.sampled_from([0, 1, 3, 4]),
       bits_allocated=st.sampled_from([0, 1, 8, 12, 16, 32, 64]), bits_stored=st.integers(0, 40),
       signed=st.integers(0, 2), photometric=_PHOTOMETRIC, frames=st.sampled_from(["", "0", "1", "2"]),
       slope=_DS, intercept=_DS, center=_DS, width=_DS, voi_function=st.sampled_from(["LINEAR", "SIGMOID", "X"]),
       pixel_bytes=st.integers(0, 40 * 40 * 8), fill=st.integers(0, 255))
def test_dicom_with_inconsistent_pixel_module_never_raises_anything_but_input_error(
        rows: int, columns: int, samples: int, bits_allocated: int, bits_stored: int, signed: int, photometric: str,
        frames: str, slope: str, intercept: str, center: str, width: str, voi_function: str, pixel_bytes: int,
        fill: int) -> None:
    """Structure-aware: a well-formed file whose pixel-module values disagree with each other and with the data."""
    pixels = np.full(pixel_bytes + (pixel_bytes % 2), fill, np.uint8)
    elements = {"RescaleSlope": slope, "RescaleIntercept": intercept, "WindowCenter": center, "WindowWidth": width,
                "VOILUTFunction": voi_function, "NumberOfFrames": frames}
    data = dicom_bytes(gradient(2, 2), pixel_data=pixels.tobytes(), Rows=rows, Columns=columns,
                       SamplesPerPixel=samples, BitsAllocated=bits_allocated, BitsStored=bits_stored,
                       HighBit=max(0, bits_stored - 1), PixelRepresentation=signed, PhotometricInterpretation=photometric,
                       **{key: value for key, value in elements.items() if value})
    check(data)
