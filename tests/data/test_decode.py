"""`pneumo.data.decode`: every corpus case gives its documented result, and the decoded pixels mean what they should."""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from corpus import (
    CASE_NAMES,
    PATIENT_ID,
    PATIENT_NAME,
    WINDOWED_STORED,
    CorpusCase,
    dicom_bytes,
    gradient,
    jpeg_bytes,
    pil_bytes,
    png_by_hand,
)
from PIL import Image

import pneumo.data.decode as pio
from pneumo.data.decode import load_image, load_image_file
from pneumo.data.gate import check_radiograph
from pneumo.errors import ConfigError, InputError, NotAssessed


def _case(corpus: dict[str, CorpusCase], name: str) -> CorpusCase:
    if name not in corpus:
        pytest.skip(f"{name}: this machine lacks the encoder to build it")
    return corpus[name]


def _decode(corpus: dict[str, CorpusCase], name: str) -> np.ndarray:
    return load_image_file(_case(corpus, name).path)


def _error(data: bytes, **kwargs: object) -> str:
    with pytest.raises(InputError) as info:
        load_image(data, **kwargs)
    return str(info.value)


def _assert_one_line(message: str) -> None:
    assert message and "\n" not in message and "\r" not in message
    assert "Traceback" not in message and len(message) <= 400


# --- the corpus ----------------------------------------------------------------------------------------------------


def test_corpus_holds_at_least_thirty_cases_of_both_kinds(corpus: dict[str, CorpusCase]) -> None:
    assert len(corpus) >= 30
    assert {case.expect for case in corpus.values()} == {"ok", "error", "refused"}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_corpus_case_gives_its_documented_result(corpus: dict[str, CorpusCase], name: str) -> None:
    case = _case(corpus, name)
    if case.expect in ("ok", "refused"):
        gray = load_image_file(case.path)
        assert gray.dtype == np.uint8 and gray.ndim == 2 and gray.flags.c_contiguous
        assert gray.shape == case.shape
        if case.expect == "ok":
            check_radiograph(gray)
        else:
            with pytest.raises(InputError, match="not a chest radiograph") as info:
                check_radiograph(gray)
            _assert_one_line(str(info.value))
    else:
        with pytest.raises(InputError) as info:
            load_image_file(case.path)
        _assert_one_line(str(info.value))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bytes_and_file_entry_points_agree(corpus: dict[str, CorpusCase], name: str) -> None:
    case = _case(corpus, name)
    data = case.path.read_bytes()
    if case.expect != "error":
        assert np.array_equal(load_image(data, name=case.upload_name), load_image_file(case.path))
    else:
        with pytest.raises(InputError):
            load_image(data, name=case.upload_name)


def test_dicom_patient_identity_never_reaches_messages_or_logs(corpus: dict[str, CorpusCase],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    messages = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for case in corpus.values():
            if "dicom" in case.name:
                try:
                    load_image_file(case.path)
                except InputError as exc:
                    messages.append(str(exc))
    said = messages + [record.getMessage() for record in caplog.records] + [str(w.message) for w in caught]
    assert messages and not [text for text in said if PATIENT_NAME in text or PATIENT_ID in text]


# --- sniffing, limits, the file entry point -----------------------------------------------------------------------------


def test_format_comes_from_content_not_from_the_extension(corpus: dict[str, CorpusCase]) -> None:
    assert np.array_equal(_decode(corpus, "dicom_as_png"), _decode(corpus, "dicom_8bit"))
    assert "HTML" in _error(_case(corpus, "html_named_jpg").path.read_bytes())


def test_non_images_are_refused_with_not_an_image(corpus: dict[str, CorpusCase]) -> None:
    for name in ("text", "zip", "pdf", "svg", "random_bytes", "one_byte"):
        assert _error(_case(corpus, name).path.read_bytes()).startswith("not an image:")


def test_dicom_without_preamble_gets_a_hint() -> None:
    assert "preamble" in _error(dicom_bytes(gradient(4, 4))[132:])
    # a file meta group written without its group length starts at (0002,0002) (a PACS export seen in review)
    meta_start = dicom_bytes(gradient(4, 4))[132:]
    at = meta_start.index(b"\x02\x00\x02\x00")
    assert "preamble" in _error(meta_start[at:])
    # "DICM" and the file meta group, but the 128-byte preamble cut off (was "unknown content starting with 44 49 ...")
    assert "preamble" in _error(dicom_bytes(gradient(4, 4))[128:])


def test_declared_size_is_refused_before_any_pixel_is_decoded() -> None:
    forged = png_by_hand(3000, 2000, b"")  # no pixel data at all: decoding would fail as truncated
    assert "image too large: 3000x2000 pixels > limit 1000000" in _error(forged, max_pixels=1_000_000)


def test_dicom_dimensions_are_checked_against_the_pixel_limit() -> None:
    assert "image too large: 32x24 pixels > limit 100" in _error(dicom_bytes(gradient(24, 32)), max_pixels=100)


def test_pillow_decompression_bomb_error_becomes_input_error(corpus: dict[str, CorpusCase]) -> None:
    message = _error(_case(corpus, "png_bomb").path.read_bytes(), max_pixels=10**12)
    assert message.startswith("image too large")


def test_error_messages_show_a_sanitised_name() -> None:
    message = _error(b"junk", name="dir/sub\\evil\n\udcffname.jpg")
    _assert_one_line(message)
    assert message.startswith("evil?") and "name.jpg: not an image" in message


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_messages_quoting_file_content_stay_on_one_line() -> None:
    data = dicom_bytes(gradient(4, 4))
    assert data.count(b"1.2.840.10008.1.2.1\x00") == 1  # the transfer syntax UID in the file meta
    message = _error(data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10\n08.1.2.1\x00"))
    _assert_one_line(message)
    assert "transfer syntax" in message


def test_bytearray_and_memoryview_inputs_are_accepted() -> None:
    data = jpeg_bytes()
    expected = load_image(data)
    assert np.array_equal(load_image(bytearray(data)), expected)
    assert np.array_equal(load_image(memoryview(data)), expected)


def test_target_size_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        load_image(jpeg_bytes(), target=0)


def test_file_larger_than_max_bytes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(jpeg_bytes())
    with pytest.raises(InputError, match="file too large"):
        load_image_file(path, max_bytes=100)


def test_directory_is_refused_as_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a regular file"):
        load_image_file(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        load_image_file(fifo)


def test_missing_file_becomes_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read file"):
        load_image_file(tmp_path / "absent.png")


def test_memory_error_while_decoding_becomes_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(img: Image.Image) -> np.ndarray:
        raise MemoryError

    monkeypatch.setattr(pio, "_to_gray", exhausted)
    assert "not enough memory" in _error(jpeg_bytes())


def test_unexpected_decoder_exception_becomes_one_line_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes, **limits: object) -> np.ndarray:
        raise RuntimeError("deep inside\n  a decoder")

    monkeypatch.setattr(pio, "decode_dicom", broken)
    message = _error(dicom_bytes(gradient(4, 4)))
    _assert_one_line(message)
    assert message == "cannot decode DICOM: deep inside a decoder"


# --- what the pixels mean ------------------------------------------------------------------------------------------------


def test_exif_orientation_is_applied(corpus: dict[str, CorpusCase]) -> None:
    gray = _decode(corpus, "jpeg_exif_rotated")  # stored 128 x 80 with a bright block top-left, orientation 6
    assert gray.shape == (128, 80)
    assert gray[:8, -8:].mean() > 230 and gray[:8, :8].mean() < 200


def test_alpha_is_composited_onto_black(corpus: dict[str, CorpusCase]) -> None:
    for name in ("png_rgba", "png_la"):  # gray 200 (first rows) with alpha rising from 0 (left) to 255 (right)
        gray = _decode(corpus, name).astype(int)
        assert gray[:, 0].max() == 0 and abs(gray[:, -1].mean() - 200) <= 1
        assert np.all(np.diff(gray[0]) >= 0)


def test_sixteen_bit_png_is_scaled_linearly_from_its_own_range() -> None:
    deep = np.tile(np.linspace(1000, 17000, 32).astype(np.uint16), (4, 1))
    gray = load_image(pil_bytes(Image.fromarray(deep), "PNG"))
    expected = np.rint((deep.astype(float) - 1000) * 255 / 16000)
    assert gray.min() == 0 and gray.max() == 255
    assert np.abs(gray - expected).max() <= 1


def test_float_tiff_is_scaled_from_its_own_range(corpus: dict[str, CorpusCase]) -> None:
    gray = _decode(corpus, "tiff_float")
    assert gray.min() == 0 and gray.max() == 255


def test_one_bit_png_becomes_black_and_white(corpus: dict[str, CorpusCase]) -> None:
    assert set(np.unique(_decode(corpus, "png_1bit"))) <= {0, 255}


def test_cmyk_jpeg_looks_like_the_gray_original(corpus: dict[str, CorpusCase]) -> None:
    diff = _decode(corpus, "jpeg_cmyk").astype(int) - gradient(96, 144)
    assert np.abs(diff).mean() < 8


def test_eight_bit_dicom_is_kept_as_stored(corpus: dict[str, CorpusCase]) -> None:
    assert np.array_equal(_decode(corpus, "dicom_8bit"), gradient(72, 96))


def test_one_bit_dicom_is_stretched_to_black_and_white(corpus: dict[str, CorpusCase]) -> None:
    gray = _decode(corpus, "dicom_1bit")
    assert np.array_equal(gray, np.where(gradient(72, 96) > 127, 255, 0))


def test_monochrome1_dicom_is_inverted(corpus: dict[str, CorpusCase]) -> None:
    assert np.array_equal(_decode(corpus, "dicom_monochrome1"), 255 - _decode(corpus, "dicom_8bit"))


def test_window_centre_and_width_map_the_window_to_the_full_range(corpus: dict[str, CorpusCase]) -> None:
    gray = _decode(corpus, "dicom_windowed_16bit")  # modality value = 2 * stored - 1024; window 0..2000
    modality = 2 * WINDOWED_STORED.astype(float) - 1024
    assert np.all(gray[modality <= 0] == 0) and np.all(gray[modality >= 2000] == 255)
    inside = (modality > 100) & (modality < 1900)
    assert np.abs(gray[inside] - modality[inside] * 255 / 2000).max() <= 2
    assert np.all(np.diff(gray[0].astype(int)) >= 0)


def test_window_wider_than_the_data_keeps_its_contrast() -> None:
    stored = np.tile(np.arange(100, 200, dtype=np.uint16), (2, 1))
    gray = load_image(dicom_bytes(stored, bits_stored=12, WindowCenter="150", WindowWidth="1000"))
    assert 105 <= gray.min() and gray.max() <= 150  # 100..200 in a 1000-wide window: a narrow band, not 0..255


def test_signed_dicom_without_window_spans_the_full_range_in_order(corpus: dict[str, CorpusCase]) -> None:
    gray = _decode(corpus, "dicom_signed_16bit")
    assert gray.min() == 0 and gray.max() == 255 and np.all(np.diff(gray[0].astype(int)) >= 0)


def test_rgb_dicom_becomes_the_same_luma_as_pillow() -> None:
    rgb = np.dstack([gradient(8, 8), 255 - gradient(8, 8), np.full((8, 8), 77, np.uint8)])
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=int)
    assert np.abs(load_image(dicom_bytes(rgb, photometric="RGB")).astype(int) - expected).max() <= 1


def test_rle_dicom_decodes_like_its_uncompressed_original(corpus: dict[str, CorpusCase]) -> None:
    original = dicom_bytes(gradient(72, 96).astype(np.uint16) * 16, bits_stored=12)
    assert np.array_equal(_decode(corpus, "dicom_rle"), load_image(original))


def test_lossless_jpeg2000_dicom_decodes_exactly(corpus: dict[str, CorpusCase]) -> None:
    assert np.array_equal(_decode(corpus, "dicom_jpeg2000"), gradient(72, 96))


def test_missing_dicom_decoder_is_named_in_the_error(corpus: dict[str, CorpusCase]) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    message = _error(_case(corpus, "dicom_no_decoder").path.read_bytes())
    assert "JPEG-LS" in message and "no decoder installed" in message
    assert message.endswith("(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)")  # whole, not cut at 200


def test_a_missing_jpeg_lossless_decoder_is_named_with_the_whole_hint() -> None:
    """JPEG Lossless (Process 14, SV1) is the most common lossless syntax of PACS exports; its long name cut the
    install hint off at 200 characters (DICOM review)."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    frame = b"\xff\xd8\xff\xc3" + bytes(range(256)) * 4 + b"\xff\xd9"
    message = _error(dicom_bytes(gradient(72, 96), transfer_syntax=JPEGLosslessSV1, pixel_data=encapsulate([frame])))
    assert "JPEGLosslessSV1" in message and "no decoder installed" in message
    assert message.endswith("(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)")


def test_a_12_bit_jpeg_extended_dicom_without_libjpeg_gets_the_install_hint() -> None:
    """Pillow decodes JPEG Extended at 8 bits only; a 12-bit file got Pillow's message without the hint (DICOM
    review)."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGExtended12Bit

    if set(get_decoder(JPEGExtended12Bit).available_plugins) - {"pillow"}:
        pytest.skip("a 12-bit JPEG decoder is installed here")
    frame = b"\xff\xd8\xff\xc1" + bytes(range(256)) * 4 + b"\xff\xd9"
    message = _error(dicom_bytes(gradient(72, 96).astype(np.uint16) * 16, bits_stored=12,
                                 transfer_syntax=JPEGExtended12Bit, pixel_data=encapsulate([frame])))
    assert "12-bit" in message and message.endswith("(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)")


def test_multiframe_dicom_is_refused_for_what_it_is_and_asks_for_one_frame(corpus: dict[str, CorpusCase]) -> None:
    """A DICOM audit: a multi-frame object was an error (a failed run) where a lateral or a report is refused."""
    with pytest.raises(NotAssessed, match="single-frame image"):
        load_image(_case(corpus, "dicom_multiframe").path.read_bytes())


@pytest.mark.parametrize(("elements", "refused"), [
    ({"ConversionType": "WSD", "samples": 3}, "a colour screen capture (ConversionType WSD)"),
    ({"samples": 3}, "a colour screen capture (ConversionType not stated)"),
    ({"ConversionType": "SYN"}, "a synthetic image (ConversionType SYN)"),
    ({"ConversionType": "SD"}, "a scanned document (ConversionType SD)"),
    ({"ConversionType": "WSD"}, None), ({"ConversionType": "DF", "samples": 3}, None), ({"ConversionType": "DI"}, None),
    ({"ConversionType": "SYN", "sop": "1.2.840.10008.5.1.4.1.1.1"}, None),  # a CR image: not a secondary capture
])
def test_a_secondary_capture_that_is_no_film_is_refused_for_what_it_is(elements: dict, refused: str | None) -> None:
    """A DICOM audit: a viewer's colour screenshot (patient name burnt in) got a NORMAL verdict. Gray workstation
    captures are often exported films, and digitised film is film: those are read."""
    from corpus import dicom_bytes

    elements = dict(elements)
    gray = np.tile(np.arange(96, dtype=np.uint8), (72, 1))
    pixels = np.stack([gray] * 3, axis=-1) if elements.pop("samples", 1) == 3 else gray
    sop = elements.pop("sop", "1.2.840.10008.5.1.4.1.1.7")
    data = dicom_bytes(pixels, photometric="RGB" if pixels.ndim == 3 else "MONOCHROME2", SOPClassUID=sop,
                       **elements)
    if refused is None:
        assert load_image(data).shape == (72, 96)
    else:
        with pytest.raises(NotAssessed, match=re.escape(refused) + ", not a radiograph"):
            load_image(data)


# --- real radiographs ----------------------------------------------------------------------------------------------------


def test_real_jpegs_decode_exactly_like_pillow_convert_l(full_data: Path) -> None:
    for path in sorted((full_data / "test" / "NORMAL").glob("*.jpeg"))[:3]:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            expected = np.asarray(img.convert("L"))
        assert np.array_equal(load_image(data), expected)


def test_draft_decoding_keeps_aspect_and_enough_resolution(largest_test_jpeg: Path) -> None:
    data = largest_test_jpeg.read_bytes()
    full = load_image(data)
    small = load_image(data, target=64)
    assert min(small.shape) >= 2 * 64 and small.size < full.size
    assert small.shape[1] / small.shape[0] == pytest.approx(full.shape[1] / full.shape[0], rel=0.01)


def test_voi_lut_sequence_is_applied_when_there_is_no_window() -> None:
    from pydicom.dataset import Dataset

    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 12]
    lut.add_new("LUTData", "OW", np.arange(4095, -1, -1, dtype="<u2").tobytes())  # an inverting LUT
    stored = np.tile(np.linspace(0, 4095, 32).astype(np.uint16), (2, 1))
    gray = load_image(dicom_bytes(stored, bits_stored=12, VOILUTSequence=[lut])).astype(int)
    assert gray[0, 0] == 255 and gray[0, -1] == 0 and np.all(np.diff(gray[0]) <= 0)
