"""One decoder (issue 14): the same radiograph as an 8-bit DICOM, a 16-bit PNG and an EXIF-rotated JPEG gives the same
model input through every entry point: the training cache, `pneumo predict`, the service upload and `pneumo explain`."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from corpus import dicom_bytes, pil_bytes
from fastapi.testclient import TestClient
from PIL import Image

from pneumo.cli import main
from pneumo.config import ServeConfig
from pneumo.data.cache import build_cache
from pneumo.data.decode import load_image
from pneumo.infer.batch import load_input, predict_file_results
from pneumo.infer.predictor import Predictor
from pneumo.serve.app import create_app

SIDE = (96, 120)  # (H, W), short side < 2 x 64: no reduced JPEG decoding at the tiny model's input size


@pytest.fixture(scope="module")
def three_files(full_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A dataset folder holding one real radiograph three ways, and the upright gray they must all decode to."""
    real = load_image((full_data / "test" / "NORMAL" / "IM-0001-0001.jpeg").read_bytes())
    small = np.array(Image.fromarray(real).resize(SIDE[::-1], Image.Resampling.BILINEAR))
    small[:8, :8], small[:8, 8:16] = 0, 255  # flat, block-aligned: the JPEG keeps 0 and 255 exactly
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees counter-clockwise; the viewer turns it back clockwise
    jpeg = pil_bytes(Image.fromarray(np.ascontiguousarray(np.rot90(small, 1))), "JPEG", quality=95,
                     exif=exif.tobytes())
    upright = load_image(jpeg)  # the lossy JPEG's own pixels, which the DICOM and the PNG then carry losslessly
    assert upright.shape == SIDE and np.abs(upright.astype(int) - small).mean() < 3  # EXIF rotation applied
    assert upright.min() == 0 and upright.max() == 255  # so the 16-bit copy scales back exactly
    root = tmp_path_factory.mktemp("one_decoder")
    folder = root / "train" / "NORMAL"
    folder.mkdir(parents=True)
    (folder / "a.dcm").write_bytes(dicom_bytes(upright))
    (folder / "b.png").write_bytes(pil_bytes(Image.fromarray(upright.astype(np.uint16) * 257), "PNG"))
    (folder / "c.jpeg").write_bytes(jpeg)
    return root, upright


def _rel(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "train").rglob("*.*"))


def test_the_three_encodings_decode_to_the_same_upright_pixels(three_files: tuple[Path, np.ndarray]) -> None:
    root, upright = three_files
    for rel in _rel(root):
        assert np.array_equal(load_image((root / rel).read_bytes()), upright), rel
    with Image.open(root / "train" / "NORMAL" / "b.png") as png:
        assert png.mode.startswith("I")  # really 16 bits per sample


def test_every_entry_point_feeds_the_model_the_same_tensor(three_files: tuple[Path, np.ndarray], tiny_model: Path,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, upright = three_files
    rels = _rel(root)
    predictor = Predictor(tiny_model, threads=1)
    expected = predictor.preprocess(upright)

    df = pd.DataFrame({"path": rels, "sha256": [hashlib.sha256((root / r).read_bytes()).hexdigest() for r in rels]})
    cache = build_cache(df, root, size=predictor.size, cache_dir=tmp_path / "cache", workers=1, progress=False)
    for row in cache.rows_for(df):  # training
        assert np.array_equal(cache.images[row], expected)

    for rel in rels:  # pneumo predict (its loader at model scale and at full scale for heat maps; its predictions)
        for full in (False, True):
            gray, prepared, error = load_input(predictor, root / rel, full)
            assert error is None and np.array_equal(gray, upright) and np.array_equal(prepared, expected)
    reference = predictor.predict_prepared(expected[None])[0].p_pneumonia
    for item in predict_file_results(predictor, [root / rel for rel in rels]):
        assert item.error is None and item.prediction.p_pneumonia == reference

    with TestClient(create_app(ServeConfig(), predictor)) as client:  # the service upload path
        for rel in rels:
            response = client.post("/api/v1/predict", params={"preview": "true"},
                                   files={"file": (Path(rel).name, (root / rel).read_bytes())})
            assert response.status_code == 200, response.text
            body = response.json()
            preview = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["preview_png_base64"]))))
            assert np.array_equal(preview, upright) and body["p_pneumonia"] == pytest.approx(reference, abs=1e-6)

    out = tmp_path / "explain"  # pneumo explain: the same probability and the same map for the three files
    assert main(["explain", *(str(root / rel) for rel in rels), "--model", str(tiny_model), "--out", str(out)]) == 0
    printed = [line.split("\t")[2] for line in capsys.readouterr().out.splitlines() if "\t" in line]
    assert printed == [f"P(pneumonia)={reference:.3f}"] * len(rels)
    maps = [np.load(path) for path in sorted(out.glob("*.npy"))]
    assert len(maps) == len(rels) and all(np.array_equal(m, maps[0]) for m in maps)
