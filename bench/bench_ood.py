"""Out-of-distribution flags of a model on the official test X-rays and on folders of non-X-ray images.

    python bench/bench_ood.py --data ../shared/data/chest_xray [--model RUN] [--backend auto]

Three folders go through the path `pneumo predict` uses (`infer.batch.predict_file_results`: decode, preprocess, model,
OOD score): the 624 official test X-rays; scikit-image's sample images that are photographs, micrographs, scans of
text or drawings (every `skimage.data` image that loads without a download; `cat` is the same picture as `chelsea`
and is left out), saved as PNG or JPEG into a temporary folder; and generated images (noise, gradients, stripes,
a checkerboard, a 1x1 and a 4000x1 strip). An image counts as caught when it is flagged OOD or refused by the
decoder / input gate (a 422 in the service). Target: >= 95 % of the photo folder caught, few test X-rays flagged.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from common import record
from PIL import Image

from pneumo.infer.batch import predict_file_results
from pneumo.infer.predictor import Predictor, resolve_model

PHOTOS = ("astronaut", "brick", "camera", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins", "colorwheel",
          "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon",
          "page", "retina", "rocket", "text")
JPEG = {"astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry"}


def write_photos(folder: Path) -> list[Path]:
    from skimage import data
    from skimage.util import img_as_ubyte

    paths = []
    for name in PHOTOS:
        image = img_as_ubyte(getattr(data, name)())
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[..., :3]
        path = folder / f"{name}.{'jpeg' if name in JPEG else 'png'}"
        Image.fromarray(image).save(path, **({"quality": 90} if path.suffix == ".jpeg" else {}))
        paths.append(path)
    return paths


def as_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(values * 255, 0, 255).astype(np.uint8)


def generated() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:512, 0:512] / 511.0
    radial = np.hypot(x - 0.5, y - 0.5) / np.sqrt(0.5)
    return {
        "uniform_noise": rng.integers(0, 256, (512, 512), dtype=np.uint8),
        "gaussian_noise": as_u8(rng.normal(0.5, 0.15, (512, 512))),
        "color_noise": rng.integers(0, 256, (384, 512, 3), dtype=np.uint8),
        "gradient_horizontal": as_u8(x), "gradient_vertical": as_u8(y), "gradient_radial": as_u8(radial),
        "stripes": as_u8(0.5 + 0.5 * np.sin(2 * np.pi * 12 * x)),
        "checkerboard_32": as_u8(((x * 16).astype(int) + (y * 16).astype(int)) % 2),
        "gray_with_noise": as_u8(0.5 + rng.normal(0, 0.02, (512, 512))),
        "one_pixel": np.full((1, 1), 128, np.uint8), "strip_4000x1": as_u8(np.linspace(0, 1, 4000)[None]),
    }


def score_folder(predictor: Predictor, files: list[Path]) -> dict:
    rows = []
    for item in predict_file_results(predictor, files, batch_size=32):
        path, result, error = item.path, item.prediction, item.error
        rows.append({"file": path.name, "ood_score": None if result is None else result.ood_score,
                     "ood": None if result is None else result.ood, "label": None if result is None else result.label,
                     "refused": error})
    n = len(rows)
    flagged = sum(bool(r["ood"]) for r in rows)
    refused = sum(r["refused"] is not None for r in rows)
    scores = [r["ood_score"] for r in rows if r["ood_score"] is not None]
    return {"n": n, "flagged": flagged, "refused": refused, "caught": flagged + refused,
            "share_caught": round((flagged + refused) / n, 4), "share_flagged": round(flagged / n, 4),
            "median_score": round(float(np.median(scores)), 2) if scores else None, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=os.environ.get("PNEUMO_DATA"))
    parser.add_argument("--model", default=None)
    parser.add_argument("--backend", default="auto", choices=["auto", "onnx", "torch"])
    args = parser.parse_args()
    if not args.data:
        parser.error("--data or $PNEUMO_DATA is needed")
    predictor = Predictor(args.model, backend=args.backend)
    if predictor.ood is None:
        sys.exit(f"{resolve_model(args.model)} has no OOD statistics: run `pneumo ood fit` first")
    with tempfile.TemporaryDirectory() as tmp:
        photos_dir, gen_dir = Path(tmp, "photos"), Path(tmp, "generated")
        photos_dir.mkdir()
        gen_dir.mkdir()
        photos = write_photos(photos_dir)
        made = []
        for name, image in generated().items():
            Image.fromarray(image).save(gen_dir / f"{name}.png")
            made.append(gen_dir / f"{name}.png")
        xrays = sorted(Path(args.data, "test").rglob("*.jpeg"))
        results = {"test_xrays": score_folder(predictor, xrays), "photos": score_folder(predictor, photos),
                   "generated": score_folder(predictor, made)}
    for name, res in results.items():
        print(f"{name}: {res['caught']}/{res['n']} caught ({100 * res['share_caught']:.1f} %: {res['flagged']} flagged "
              f"OOD, {res['refused']} refused), median score {res['median_score']}")
    for row in results["photos"]["rows"] + results["generated"]["rows"]:
        print(f"  {row['file']:28s} score {row['ood_score']!s:>22s}  ood {row['ood']!s:5s}  {row['refused'] or ''}")
    results["test_xrays"]["rows"] = [r for r in results["test_xrays"]["rows"] if r["ood"] or r["refused"]]
    record("ood", {"model": str(resolve_model(args.model)), "backend": predictor.backend,
                   "threshold": predictor.ood.threshold, "percentile": predictor.ood.percentile,
                   "method": predictor.ood.method, **results})


if __name__ == "__main__":
    main()
