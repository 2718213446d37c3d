"""The shipped model's ONNX export under ONNX Runtime (pneumo's backend) and OpenVINO, model only: time and how far
the logits move (issue 24's 4x aim; BENCHMARKS.md, session of 2026-12-06 (fifth)). OpenVINO is not a dependency:

    pip install openvino && python bench/bench_runtime_openvino.py

One thread, a batch of 32 seeded random inputs at the model's size, the best and median of 5 runs after a warm-up.
"""

from __future__ import annotations

import time

import numpy as np


def timed(run, n: int = 5) -> tuple[float, float]:
    run()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times), sorted(times)[n // 2]


def main() -> None:
    import onnxruntime as ort
    import openvino as ov

    from pneumo.infer.export import cached_onnx
    from pneumo.infer.predictor import Predictor, session_options

    predictor = Predictor(None, backend="onnx", threads=1)
    path = str(cached_onnx(predictor.sidecar))
    x = np.random.default_rng(0).random((32, 1, predictor.size, predictor.size), dtype=np.float32)
    session = ort.InferenceSession(path, session_options(1), providers=["CPUExecutionProvider"])
    name, outputs = session.get_inputs()[0].name, [o.name for o in session.get_outputs()]
    reference = session.run(outputs, {name: x})
    print(f"onnxruntime fp32: best / median {timed(lambda: session.run(outputs, {name: x}))} s")
    core = ov.Core()
    for hint in ("f32", "bf16"):
        compiled = core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": hint,
                                                     "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        logits = next(iter(request.infer({0: x}).values()))
        took = timed(lambda r=request: r.infer({0: x}))
        print(f"openvino {hint}: best / median {took} s, max |logit - onnxruntime's| "
              f"{float(np.abs(logits - reference[0]).max()):.2g}")


if __name__ == "__main__":
    main()
