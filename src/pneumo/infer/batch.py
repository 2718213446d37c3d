"""Find the input files (`expand_inputs`) and predict them in batches (`predict_file_results`): decoding on a thread pool
(the next batch while the model runs the current one), one model call per batch, bad files reported."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumo.data.decode import check_radiograph, load_image_file
from pneumo.errors import ConfigError, InputError, PneumoError
from pneumo.infer.predictor import Prediction, Predictor

SUFFIXES = {".jpg", ".jpeg", ".png", ".dcm", ".dicom", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; folders recursively (image suffixes and DICOM); globs expanded; order kept, duplicates dropped."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and
                                (p.suffix.lower() in SUFFIXES or p.suffix == "")))
        elif path.exists():
            found.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise InputError(f"no such file, folder or match: {item}")
            found.extend(m for m in matches if m.is_file())
    unique = list(dict.fromkeys(found))
    if not unique:
        raise InputError("no input images found")
    return unique


def _load(predictor: Predictor, path: Path, full: bool) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(decoded gray, model input, None) or (None, None, one-line error). ``full`` decodes at full resolution (for
    heat maps on the original pixel grid); otherwise large JPEGs decode at a reduced DCT scale. Images the input gate
    refuses (`check_radiograph`) get an error, not a label."""
    try:
        gray = load_image_file(path, target=None if full else predictor.size)
        check_radiograph(gray)
        return gray, predictor.preprocess(gray), None
    except PneumoError as exc:
        return None, None, str(exc)


@dataclass
class FileResult:
    """One input's outcome: the prediction or the one-line error, and its heat map (overlay PNG) if one was written."""

    path: Path
    prediction: Prediction | None
    error: str | None
    heatmap: Path | None = None


def heatmap_name(path: Path) -> str:
    """A unique, deterministic heat-map name: the file stem plus 8 hex digits of the absolute path's SHA-1 (the same
    input always gets the same name, two inputs with one stem never collide)."""
    from pneumo.explain.overlay import safe_stem

    digest = hashlib.sha1(str(Path(path).absolute()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{safe_stem(path)[:80]}-{digest}"


def predict_file_results(predictor: Predictor, files: list[Path], *, batch_size: int = 32,
                         heatmap_dir: str | None = None, workers: int | None = None) -> Iterator[FileResult]:
    """Yield a ``FileResult`` per input, in input order, each as soon as it is done (heat maps one by one)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    explainer = None
    if heatmap_dir:
        from pneumo.explain.overlay import HeatmapWriter

        explainer = HeatmapWriter(predictor, Path(heatmap_dir))
    full = explainer is not None
    chunks = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
        def submit(chunk: list[Path]) -> list[Future]:
            return [pool.submit(_load, predictor, path, full) for path in chunk]

        pending = submit(chunks[0]) if chunks else []
        for k, chunk in enumerate(chunks):
            loaded = [future.result() for future in pending]
            pending = submit(chunks[k + 1]) if k + 1 < len(chunks) else []  # decode the next batch meanwhile
            ok = [i for i, (_, prepared, _) in enumerate(loaded) if prepared is not None]
            results: dict[int, Prediction] = {}
            if ok:
                batch = np.stack([loaded[i][1] for i in ok])
                results = dict(zip(ok, predictor.predict_prepared(batch)))
            for i, path in enumerate(chunk):
                heatmap = None
                if explainer is not None and i in results:
                    heatmap = explainer.write(path, loaded[i][0], results[i], name=heatmap_name(path))
                yield FileResult(path, results.get(i), loaded[i][2], heatmap)
