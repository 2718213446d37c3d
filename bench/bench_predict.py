"""`pneumo predict` throughput vs a naive pipeline, single-image latency, ONNX Runtime vs PyTorch eager.

    python bench/bench_predict.py --data ../shared/data/chest_xray [--model RUN] [--limit 624]

naive = PIL open + torchvision transforms (Grayscale, Resize, ToTensor) + eager PyTorch, batch 1.
pneumo = the path `pneumo predict` uses with its default backend (`auto`: ONNX Runtime on an export made once into
the cache; batches of 32, one per core, each decoded at a reduced JPEG scale, checked, preprocessed and scored on one
thread), and the same path with `--backend torch` (the fast path: frozen eval-mode PyTorch, no tracing; the
`*_traced` keys keep their old name). Latency and model-only rows: the model as
the service loads it (the runtime's own threads). Model loading (incl. the one-time export) is timed separately.
All measured in one run, on the same images, same machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import torch
from common import record
from PIL import Image
from torchvision import transforms

from pneumo.data.decode import load_image_file
from pneumo.infer.batch import predict_file_results
from pneumo.infer.predictor import Predictor, resolve_model


def naive(predictor: Predictor, files: list[Path]) -> float:
    model = predictor.torch_model
    tf = transforms.Compose([transforms.Grayscale(), transforms.Resize((predictor.size, predictor.size)),
                             transforms.ToTensor()])
    start = time.perf_counter()
    with torch.no_grad():
        for f in files:
            with Image.open(f) as img:
                model(tf(img)[None])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--limit", type=int, default=624)
    parser.add_argument("--latency-n", type=int, default=50)
    args = parser.parse_args()
    files = sorted(Path(args.data, "test").rglob("*.jpeg"))[: args.limit]
    torch_threads = torch.get_num_threads()  # the naive pipeline's: the predictors below set one thread
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PNEUMO_CACHE"] = cache  # a cold cache: the first load exports the model to ONNX
        start = time.perf_counter()
        default = Predictor(args.model, backend="auto", threads=1)  # as `pneumo predict` makes it
        cold_load_s = time.perf_counter() - start
        start = time.perf_counter()
        Predictor(args.model, backend="auto", threads=1)
        warm_load_s = time.perf_counter() - start
        throughput = {}
        for name, p in (("auto", default), ("torch", Predictor(args.model, backend="torch", threads=1))):
            list(predict_file_results(p, files[:32]))  # warm-up
            start = time.perf_counter()
            n_ok = sum(r.prediction is not None for r in predict_file_results(p, files, batch_size=32))
            throughput[name] = time.perf_counter() - start
        onnx = Predictor(args.model, backend="auto")  # as the service makes it: ORT's own threads, for the rows below
    torch.set_num_threads(torch_threads)
    predictor = Predictor(args.model, backend="torch")
    naive_s = naive(predictor, files)
    pneumo_s = throughput["auto"]
    grays = [load_image_file(f, target=predictor.size) for f in files[: args.latency_n]]
    predictor.predict(grays[:2])
    latencies = []
    for g in grays:
        t = time.perf_counter()
        predictor.predict([g])
        latencies.append((time.perf_counter() - t) * 1000)
    batch = np.stack([predictor.preprocess(g) for g in grays[:32]])
    eager = predictor.torch_model

    def eager_logits(prepared: np.ndarray) -> None:
        with torch.no_grad():
            eager(torch.from_numpy(prepared.astype(np.float32) / 255.0)[:, None])

    timings = {}
    for name, fn in (("torch", predictor.logits), ("eager", eager_logits), ("onnx", onnx.logits)):
        fn(batch)
        t = time.perf_counter()
        for _ in range(3):
            fn(batch)
        timings[name] = (time.perf_counter() - t) / 3
    onnx_lat = []
    for g in grays:
        t = time.perf_counter()
        onnx.predict([g])
        onnx_lat.append((time.perf_counter() - t) * 1000)
    record("predict", {
        "images": len(files), "ok": n_ok, "model": str(resolve_model(args.model).name),
        "default_backend": default.backend, "load_s_cold_with_export": round(cold_load_s, 2),
        "load_s_warm": round(warm_load_s, 2),
        "pneumo_images_per_s": round(len(files) / pneumo_s, 1), "naive_images_per_s": round(len(files) / naive_s, 1),
        "speedup_vs_naive": round(naive_s / pneumo_s, 2),
        "pneumo_torch_backend_images_per_s": round(len(files) / throughput["torch"], 1),
        "speedup_vs_naive_torch_backend": round(naive_s / throughput["torch"], 2),
        "latency_ms_p50_torch": round(statistics.median(latencies), 1),
        "latency_ms_p95_torch": round(float(np.percentile(latencies, 95)), 1),
        "latency_ms_p50_onnx": round(statistics.median(onnx_lat), 1),
        "batch32_s_torch_eager": round(timings["eager"], 3), "batch32_s_torch_traced": round(timings["torch"], 3),
        "batch32_s_onnx": round(timings["onnx"], 3),
        "onnx_speedup_vs_torch_eager": round(timings["eager"] / timings["onnx"], 2),
        "onnx_speedup_vs_torch_traced": round(timings["torch"] / timings["onnx"], 2),
    })


if __name__ == "__main__":
    main()
