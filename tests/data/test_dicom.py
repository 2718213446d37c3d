"""DICOM numbers that cannot be pixels (issue 12 item 6): a clear `InputError` or a well-defined fallback, never an
overflow warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from corpus import dicom_bytes, gradient

from pneumo.data.decode import load_image
from pneumo.errors import InputError

STORED = (gradient(72, 96).astype(np.uint16) * 16)  # 12-bit stored values 0..4080


def _decode_strictly(data: bytes) -> np.ndarray:
    """Decode with every warning turned into an error (numpy's overflow RuntimeWarning included)."""
    with warnings.catch_warnings(), np.errstate(all="warn"):
        warnings.simplefilter("error")
        return load_image(data)


def _refused(data: bytes) -> str:
    with warnings.catch_warnings(), np.errstate(all="warn"):
        warnings.simplefilter("error")
        with pytest.raises(InputError) as info:
            load_image(data)
    return str(info.value)


@pytest.mark.parametrize("slope", ["1e308", "-1e308", "1e40"])
def test_huge_rescale_slope_is_refused_without_overflow(slope: str) -> None:
    message = _refused(dicom_bytes(STORED, bits_stored=12, RescaleSlope=slope, RescaleIntercept="0"))
    assert "RescaleSlope" in message and "out of range" in message


def test_huge_rescale_intercept_is_refused_without_overflow() -> None:
    message = _refused(dicom_bytes(STORED, bits_stored=12, RescaleSlope="1", RescaleIntercept="-1e300"))
    assert "out of range" in message


@pytest.mark.parametrize(("centre", "width"), [("0", "0"), ("100", "-5"), ("1e308", "1e308"), ("0", "1e308"),
                                               ("500", "0.5")])
def test_unusable_window_falls_back_to_the_data_range_without_warnings(centre: str, width: str) -> None:
    plain = _decode_strictly(dicom_bytes(STORED, bits_stored=12))
    windowed = _decode_strictly(dicom_bytes(STORED, bits_stored=12, WindowCenter=centre, WindowWidth=width))
    assert np.array_equal(windowed, plain) and plain.min() == 0 and plain.max() == 255


def test_window_with_a_huge_rescale_that_still_fits_is_applied() -> None:
    gray = _decode_strictly(dicom_bytes(STORED, bits_stored=12, RescaleSlope="1e20", RescaleIntercept="0",
                                        WindowCenter="2e23", WindowWidth="4e23"))  # modality to 4.08e23
    assert gray.min() < 40 and gray.max() == 255 and len(np.unique(gray)) > 100


def test_sigmoid_window_with_extreme_values_does_not_overflow() -> None:
    gray = _decode_strictly(dicom_bytes(STORED, bits_stored=12, WindowCenter="2000", WindowWidth="1",
                                        VOILUTFunction="SIGMOID"))
    assert gray.dtype == np.uint8 and gray.min() == 0 and gray.max() == 255


def test_float_pixel_data_beyond_the_value_limit_is_refused() -> None:
    values = np.full((72, 96), 3e38, np.float32)
    values[0, 0] = 0
    data = dicom_bytes(None, Rows=72, Columns=96, SamplesPerPixel=1, BitsAllocated=32,
                       PhotometricInterpretation="MONOCHROME2", FloatPixelData=values.tobytes())
    assert "out of range" in _refused(data)


def test_nan_rescale_slope_is_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that NaN is not a valid DS while writing the test file
        data = dicom_bytes(STORED, bits_stored=12, RescaleSlope="NaN", RescaleIntercept="0")
    assert "not a finite number" in _refused(data)


@pytest.mark.parametrize("entries", [256, 4096])
def test_a_voi_lut_with_8_bit_entries_shows_the_image_at_any_length(entries: int) -> None:
    """pydicom indexes an 8-bit-entry VOI LUT in uint8: a 4096-entry LUT (12-bit data) wrapped around and the film
    came out as noise (up to 240 grey levels off, then refused as "rotated"). A linear LUT shows the stored image."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = STORED if entries == 4096 else (STORED // 16)  # 12-bit 0..4080, or 8-bit values in 16-bit words
    item = Dataset()
    item.LUTDescriptor = [entries, 0, 8]
    item.LUTData = [i * 255 // (entries - 1) for i in range(entries)]
    item["LUTData"].VR = "US"
    gray = _decode_strictly(dicom_bytes(stored, bits_stored=12 if entries == 4096 else 8,
                                        VOILUTSequence=Sequence([item])))
    expected = np.round(stored.astype(np.float64) * 255 / (entries - 1))
    assert np.abs(gray.astype(np.float64) - expected).max() <= 1.0


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL", "LEFT LATERAL"])
def test_a_lateral_film_is_refused_in_one_line_and_a_frontal_one_is_read(view: str) -> None:
    message = _refused(dicom_bytes(STORED, bits_stored=12, ViewPosition=view))
    assert f"lateral film (ViewPosition {view})" in message and "\n" not in message
    for frontal in ("PA", "AP", "", "LLD"):
        assert _decode_strictly(dicom_bytes(STORED, bits_stored=12, ViewPosition=frontal)).shape == STORED.shape


def _view_code(meaning: str) -> object:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "R-10232", "SRT", meaning
    return Sequence([item])


@pytest.mark.parametrize(("elements", "says"), [
    ({"ViewCodeSequence": "lateral"}, "View Code Sequence"),
    ({"ViewCodeSequence": "latero-medial"}, "View Code Sequence"),  # CID 4010's other lateral (a review: scored)
    ({"SeriesDescription": "CHEST LAT"}, "SeriesDescription"),
    ({"ProtocolName": "Thorax lateral"}, "ProtocolName"),
])
def test_a_lateral_film_is_refused_when_another_element_says_so(elements: dict, says: str) -> None:
    """DICOM review: ViewPosition may be empty in DX/CR exports; the View Code Sequence (required for DX) or, where the
    image states no view, the series description or protocol says lateral. The message names the element only."""
    values = {k: _view_code(v) if k == "ViewCodeSequence" else v for k, v in elements.items()}
    message = _refused(dicom_bytes(STORED, bits_stored=12, **values))
    assert "lateral film" in message and says in message and "CHEST" not in message and "Thorax" not in message


@pytest.mark.parametrize("elements", [
    {"SeriesDescription": "CHEST PA/LAT"},  # a series with both: this film may be the PA one
    {"ViewPosition": "PA", "SeriesDescription": "CHEST LAT"},  # the image's own view wins
    {"ViewCodeSequence": "postero-anterior"}, {"ViewCodeSequence": "left lateral decubitus"},
])
def test_frontal_films_are_read_whatever_their_series_is_called(elements: dict) -> None:
    values = {k: _view_code(v) if k == "ViewCodeSequence" else v for k, v in elements.items()}
    assert _decode_strictly(dicom_bytes(STORED, bits_stored=12, **values)).shape == STORED.shape


def test_presentation_lut_shape_inverse_is_shown_inverted_once() -> None:
    """DICOM review: a MONOCHROME2 image marked INVERSE was shown as stored (air white); MONOCHROME1 comes with
    INVERSE and is inverted once."""
    plain = _decode_strictly(dicom_bytes(STORED, bits_stored=12))
    inverse = _decode_strictly(dicom_bytes(STORED, bits_stored=12, PresentationLUTShape="INVERSE"))
    assert np.array_equal(inverse, 255 - plain)
    mono1 = _decode_strictly(dicom_bytes(STORED, bits_stored=12, photometric="MONOCHROME1",
                                         PresentationLUTShape="INVERSE"))
    assert np.array_equal(mono1, 255 - plain)


def test_a_for_processing_image_is_refused_in_one_line() -> None:
    message = _refused(dicom_bytes(STORED, bits_stored=12, PresentationIntentType="FOR PROCESSING"))
    assert "FOR PROCESSING" in message and "FOR PRESENTATION" in message and "\n" not in message
    assert _decode_strictly(dicom_bytes(STORED, bits_stored=12, PresentationIntentType="FOR PRESENTATION")).shape \
        == STORED.shape


def test_pixel_padding_is_left_out_of_the_range_an_unwindowed_image_is_stretched_over() -> None:
    """DICOM review: a file without a window is stretched over its own min..max; collimator padding at the
    PixelPaddingValue widened that range and greyed the lungs. Declared padding is left out (and shown black)."""
    stored = (np.arange(72 * 96).reshape(72, 96) % 1600 + 1000).astype(np.uint16)  # 12-bit data in 1000..2599
    padded = stored.copy()
    padded[:, :10] = 0
    plain = _decode_strictly(dicom_bytes(stored, bits_stored=12))
    declared = _decode_strictly(dicom_bytes(padded, bits_stored=12, PixelPaddingValue=0))
    undeclared = _decode_strictly(dicom_bytes(padded, bits_stored=12))
    assert np.array_equal(declared[:, 10:], plain[:, 10:]) and declared[:, :10].max() == 0
    assert not np.array_equal(undeclared[:, 10:], plain[:, 10:])  # what padding did to the image before
    ranged = _decode_strictly(dicom_bytes(padded, bits_stored=12, PixelPaddingValue=0, PixelPaddingRangeLimit=5))
    assert np.array_equal(ranged, declared)


@pytest.mark.parametrize("side", [320, 1200])  # as the dataset's copies, and large enough for a reduced JPEG decode
def test_a_jpeg_inside_a_dicom_decodes_as_the_jpeg_file_does(full_data: Path, side: int) -> None:
    """A DICOM audit: the same JPEG bytes as a `.jpeg` and as a DICOM's JPEG Baseline frame gave P(pneumonia) up to
    0.07 apart (the file decoded at the model's DCT scale, the DICOM in full) and 0.02 where pydicom's pylibjpeg plugin
    decoded it. An 8-bit gray JPEG frame is decoded as a JPEG file is: one image, one array."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate

    with Image.open(min((full_data / "test" / "PNEUMONIA").glob("*.jpeg"))) as image:
        gray = image.convert("L").resize((side, side))
    buffer = io.BytesIO()
    gray.save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    dicom = dicom_bytes(np.asarray(gray), transfer_syntax="1.2.840.10008.1.2.4.50", pixel_data=encapsulate([jpeg]))
    for target in (None, 224):
        assert np.array_equal(load_image(dicom, target=target), load_image(jpeg, target=target))
    assert load_image(dicom, target=224).shape[0] < side or side < 896  # the large one decoded at a reduced scale


def test_a_dicomdir_named_alone_is_refused_as_the_index_it_is() -> None:
    """A DICOM audit: `pneumo predict DICOMDIR` said "no pixel data (a report or presentation state?)"."""
    from pydicom.data import get_testdata_file

    from pneumo.errors import NotAssessed

    path = get_testdata_file("DICOMDIR")
    if path is None:
        pytest.skip("pydicom's test DICOMDIR is not installed here")
    with open(path, "rb") as handle:
        data = handle.read()
    with pytest.raises(NotAssessed, match=r"a DICOM file-set's index \(DICOMDIR\), not an image: give its folder"):
        load_image(data)


def test_an_unknown_transfer_syntax_is_named_once() -> None:
    """A DICOM audit: "DICOM transfer syntax 1.2.840.113619.5.2 (1.2.840.113619.5.2) is not supported"."""
    import io

    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(gradient(8, 8))))
    ds.file_meta.TransferSyntaxUID = "1.2.840.113619.5.2"  # a vendor's private syntax
    ds.PixelData = encapsulate([b"\x00" * 64])
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    message = _refused(buffer.getvalue())
    assert "transfer syntax 1.2.840.113619.5.2 is not supported" in message and message.count("113619") == 1
