"""Conformance files for a port of the export: inputs and what pneumo makes of them, step by step.

The ONNX graph holds the network only; decoding, the resize, the in-painting of markers and corner text and the checks
run outside it (README, "The export outside pneumo"), and a port that gets one of them slightly wrong gets other
scores (a review: up to 0.25 in P(pneumonia) without the in-painting). `pneumo export --out DIR` therefore writes
``DIR/conformance/``: synthetic films that exercise those steps (burnt-in marker and corner text, 16-bit PNGs, large
JPEGs decoded at a reduced scale, an EXIF rotation, an RGB JPEG, odd sizes, DICOM with and without a window), each
with the uint8 S x S model input pneumo makes of it (``<case>.model-input.png``) and, in ``expected.json``, the
outputs (P(pneumonia), the calibrated probability, the label, the out-of-distribution score, P(upright), whether a
verdict is given). A port checks each step against them without installing pneumo. They are made by the exported
model itself (ONNX Runtime), so they are its outputs.
"""

from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path

import numpy as np

from pneumo import atomic

FOLDER = "conformance"
SEED = 0


def _film(height: int, width: int) -> np.ndarray:
    """A seeded synthetic film: dark borders, a brighter body with two darker lung fields, film grain; float 0..1."""
    rng = np.random.default_rng(SEED)
    y, x = np.mgrid[0:height, 0:width]
    cy, cx = height / 2, width / 2
    body = np.exp(-(((y - cy) / (0.42 * height)) ** 6 + ((x - cx) / (0.40 * width)) ** 6))
    lungs = sum(np.exp(-(((y - 0.45 * height) / (0.22 * height)) ** 2 + ((x - side * width) / (0.11 * width)) ** 2))
                for side in (0.36, 0.64))
    film = 0.08 + 0.62 * body - 0.30 * lungs * body + 0.03 * rng.standard_normal((height, width))
    return np.clip(film, 0.0, 1.0)


def _burn_in(img: np.ndarray) -> np.ndarray:
    """A laterality marker "R" on the dark border and a line of corner text, burnt in near white (uint8)."""
    import cv2

    out = img.copy()
    h, w = out.shape
    cv2.putText(out, "R", (int(0.02 * w), int(0.16 * h)), cv2.FONT_HERSHEY_SIMPLEX, h / 300, 250, max(2, h // 150))
    cv2.putText(out, "KV59 17:54:36", (int(0.62 * w), int(0.05 * h)), cv2.FONT_HERSHEY_PLAIN, h / 500, 235, 1)
    return out


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_rotated(array: np.ndarray) -> bytes:
    """A JPEG of ``array`` turned 90 degrees clockwise, with the EXIF orientation (6) that turns it back."""
    from PIL import Image

    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(array, k=-1).copy()).save(buffer, format="JPEG", quality=92, exif=exif)
    return buffer.getvalue()


def _jpeg_rgb(array: np.ndarray) -> bytes:
    """An RGB JPEG of the gray ``array`` with a warm tint (a scanner's colour export): its gray is libjpeg's own."""
    from PIL import Image

    rgb = np.stack([array, (array * 0.75).astype(np.uint8), (array * 0.5).astype(np.uint8)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _dicom(name: str, pixels: np.ndarray, photometric: str, **elements: object) -> bytes:
    """A 12-bit DICOM Part 10 file (CR) of ``pixels`` (uint16), its UIDs made from ``name`` (the same in every export,
    its own per case: a DICOM store keeps both), patient fields empty."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["pneumo conformance", name])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["pneumo conformance study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["pneumo conformance series", name])
    ds.PatientName, ds.PatientID = "", ""
    ds.Modality, ds.ViewPosition, ds.PhotometricInterpretation = "CR", "PA", photometric
    ds.Rows, ds.Columns, ds.SamplesPerPixel = *pixels.shape, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@functools.cache  # the same bytes every time (seeded): made once a process (~1.7 s on 2 cores)
def cases() -> dict[str, bytes]:
    """The inputs' bytes, by file name: small and large, odd sizes (a resize that reduces 3x or more, a reduced JPEG
    decode of odd size), 16-bit, RGB and DICOM films (an export audit: four small gray films let ports with another
    antialiasing, JPEG draft size or DICOM window mapping pass, 2e-3 off in P on real films)."""
    base = _film(560, 480)
    film = (base * 255).round().astype(np.uint8)
    large = np.kron(_film(705, 684), np.ones((2, 2)))[:1409, :1367]  # reduced 6x (2x2 blocks: a PNG of 1 MB)
    dicom = (200 + _film(781, 677) * 3500).round().astype(np.uint16)
    padded = dicom.copy()
    padded[:, :40] = 0  # the padding value's pixels, left out of the stretch
    return {"film-8bit.png": _png(film), "film-markers-text.png": _png(_burn_in(film)),
            "film-16bit.png": _png((1000 + base * 9000).round().astype(np.uint16)),
            "film-large-exif-rotated.jpg": _jpeg_rotated(_burn_in((_film(1200, 1040) * 255).round().astype(np.uint8))),
            "film-16bit-large-odd.png": _png((1000 + large * 40000).round().astype(np.uint16)),
            "film-rgb-odd.jpg": _jpeg_rgb((_film(1281, 2093) * 255).round().astype(np.uint8)),
            "film-monochrome1-window.dcm": _dicom("mono1", 4095 - dicom, "MONOCHROME1", WindowCenter=2000,
                                                  WindowWidth=3000),
            "film-no-window-padding.dcm": _dicom("padding", padded, "MONOCHROME2", PixelPaddingValue=0)}


def write_conformance(sidecar: Path, warning: str | None = None) -> Path:
    """Write ``conformance/`` beside the exported model ``sidecar`` (its ``.onnx`` next to it), with ``warning``, what
    the model's records say against deploying it (a port reads expected.json, not the card); returns the folder."""
    from pneumo.data.decode import load_image
    from pneumo.infer.predictor import Predictor, gate

    predictor = Predictor(sidecar, backend="onnx", threads=1)
    folder = sidecar.parent / FOLDER
    expected: dict[str, dict] = {}
    for name, data in cases().items():
        atomic.write_bytes(folder / name, data)
        gray = load_image(data, target=predictor.size)
        model_input = predictor.preprocess(gray)
        atomic.write_bytes(folder / f"{name}.model-input.png", _png(model_input))
        logits, features = predictor.outputs(model_input[None])
        result = predictor.predictions(logits, features)[0]
        gate([gray], [result])  # the input gate, as `Predictor.predict` applies it
        upright = None
        if predictor.orientation is not None and features is not None:
            probs = predictor.orientation.probabilities(features)[0]
            upright = float(probs[predictor.orientation.classes.index("upright")])
        expected[name] = {"decoded_shape": list(gray.shape),
                          "decoded_sha256": hashlib.sha256(np.ascontiguousarray(gray).tobytes()).hexdigest(),
                          "model_input_sha256": hashlib.sha256(model_input.tobytes()).hexdigest(),
                          "logits": [float(v) for v in logits[0]], "p_pneumonia": result.p_pneumonia,
                          "p_calibrated": result.p_calibrated, "label": result.label, "assessed": result.assessed,
                          "reason": result.reason, "ood_score": result.ood_score, "p_upright": upright}
    atomic.write_json(folder / "expected.json", {
        "model_id": predictor.model_id, "warning": warning, "input_size": predictor.size,
        "preprocessing": predictor.preprocessing,
        "how": ("decode the case to uint8 gray (decoded_sha256: the H x W uint8 bytes, row by row), preprocess it to "
                "the S x S model input (<case>.model-input.png; model_input_sha256), divide by 255 and run the .onnx; "
                "then P(pneumonia), the calibrated probability, the label at the sidecar's threshold and the checks "
                "as README 'The export outside pneumo' says; a faithful port agrees to ~1e-6"),
        "cases": expected})
    return folder
