"""Accuracy change of the int8 ONNX export (dynamic quantization) vs the fp32 ONNX export on the official test split,
at the checkpoint's own (validation-chosen) threshold.

    python bench/bench_int8.py --data ../shared/data/chest_xray [--model RUN]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from common import record
from sklearn.metrics import roc_auc_score

from pneumo.data.decode import load_image_file
from pneumo.infer.export import export_onnx
from pneumo.infer.predictor import Predictor, resolve_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    files = sorted(Path(args.data, "test").rglob("*.jpeg"))
    y = np.array([f.parent.name == "PNEUMONIA" for f in files], dtype=int)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(resolve_model(args.model), Path(tmp) / "fp32" / "model.onnx", quantize=True)
        int8_dir = Path(tmp) / "int8"
        int8_dir.mkdir()
        shutil.copyfile(fp32.with_name("model.int8.onnx"), int8_dir / "model.onnx")
        shutil.copyfile(fp32.with_suffix(".json"), int8_dir / "model.json")
        out = {}
        for name, path in (("fp32", fp32), ("int8", int8_dir / "model.onnx")):
            predictor = Predictor(path, backend="onnx")
            grays = [load_image_file(f, target=predictor.size) for f in files]
            start = time.perf_counter()
            preds = predictor.predict(grays)
            seconds = time.perf_counter() - start
            p = np.array([r.p_pneumonia for r in preds])
            called = p >= predictor.threshold
            out[name] = {"accuracy": float((called == y).mean()), "sensitivity": float(called[y == 1].mean()),
                         "specificity": float(1 - called[y == 0].mean()), "roc_auc": float(roc_auc_score(y, p)),
                         "images_per_s": round(len(files) / seconds, 1), "mb": round(path.stat().st_size / 1e6, 2),
                         "p": p}
        delta = float(np.abs(out["fp32"].pop("p") - out["int8"].pop("p")).max())
    record("int8", {"images": len(files), "threshold": predictor.threshold, **out, "max_abs_p_change": delta,
                    "accuracy_change": out["int8"]["accuracy"] - out["fp32"]["accuracy"]})


if __name__ == "__main__":
    main()
