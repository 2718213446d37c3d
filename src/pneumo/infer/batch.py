"""Find the input files (`find_inputs`) and predict them in batches (`predict_file_results`): each batch decoded,
checked, preprocessed and scored by one worker thread, the workers side by side, bad files reported."""

from __future__ import annotations

import glob
import itertools
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pneumo.data.decode import load_image_file
from pneumo.data.files import entry_reason, find_images, name_reason
from pneumo.data.gate import check_radiograph
from pneumo.errors import ConfigError, InputError, NotAssessed, PneumoError
from pneumo.infer.predictor import Prediction, Predictor


@dataclass
class Inputs:
    """What the command line names: the files to read (order kept, duplicates dropped) and every named input, or
    image-named entry of a named folder, that is not read, with the reason (a dangling link, a symlink loop, a named
    pipe, a folder without images)."""

    files: list[Path]
    skipped: dict[Path, str]
    order: list[Path]  # files and skipped entries as the inputs name them (a folder's in path order): the output's
    ignored: int = 0  # files in the named folders not read by their name or first bytes (DICOMDIR, hidden, a README)


def find_inputs(inputs: list[str]) -> Inputs:
    """Files as given (whatever their name); folders recursively by the one rule of `pneumo.data.files`; globs
    expanded.

    Raises:
        InputError: an input that is neither a file, a folder, a link nor a glob with matches; or nothing at all found.
    """
    files: list[Path] = []
    skipped: dict[Path, str] = {}
    order: list[Path] = []
    ignored: list[Path] = []

    def add_folder(path: Path) -> None:
        found = find_images(path)
        ignored.extend(found.ignored)
        files.extend(found.images)
        skipped.update(found.skipped)
        order.extend(sorted([*found.images, *found.skipped]))
        if not found.images and not found.skipped:
            skipped[path] = "a folder without images" + (f" ({len(found.ignored)} other file(s))"
                                                        if found.ignored else "")
            order.append(path)

    for item in inputs:
        path = Path(item)
        problem = entry_reason(path)
        if problem is None and path.is_dir():
            add_folder(path)
        elif problem is None:
            files.append(path)
            order.append(path)
        elif os.path.lexists(path):  # a dangling link, a symlink loop, a named pipe: named, so it gets a row
            skipped[path] = problem
            order.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise InputError(f"no such file, folder or match: {item}")
            for match in matches:
                reason = entry_reason(match)
                if reason is None and match.is_dir():  # a glob naming folders (`site_*`) reads them as folders
                    add_folder(match)
                elif reason is None and match.is_file():
                    files.append(match)
                    order.append(match)
                elif reason is not None and name_reason(match.name) is None:
                    skipped[match] = reason
                    order.append(match)
    unique = list(dict.fromkeys(files))
    if not unique and not skipped:
        raise InputError("no input images found")
    return Inputs(unique, skipped, list(dict.fromkeys(order)), len(set(ignored)))


def expand_inputs(inputs: list[str]) -> list[Path]:
    """The files of `find_inputs` (what is not read is left out here).

    Raises:
        InputError: as `find_inputs`, or no readable file among the inputs.
    """
    files = find_inputs(inputs).files
    if not files:
        raise InputError("no input images found")
    return files


def load_input(predictor: Predictor, path: Path, full: bool
               ) -> tuple[np.ndarray | None, np.ndarray | None, PneumoError | None]:
    """(decoded gray, model input, None) or (None, None, the error: one line). Large JPEGs are scored from a reduced DCT
    scale, as everywhere else (so a heat map never changes a score); ``full`` also decodes them at full resolution,
    for heat maps on the original pixel grid. Images the input gate refuses (`check_radiograph`) get an error, not a
    label. `pneumo predict` and `pneumo explain` read their inputs here."""
    try:
        gray = load_image_file(path, target=predictor.size)
        check_radiograph(gray)
        prepared = predictor.preprocess(gray)
        if full:
            gray = load_image_file(path)
        return gray, prepared, None
    except PneumoError as exc:
        return None, None, exc


@dataclass
class FileResult:
    """One input's outcome: the prediction or the one-line error, and its heat map (overlay PNG) if one was written."""

    path: Path
    prediction: Prediction | None
    error: str | None
    heatmap: Path | None = None
    refused: bool = False  # the error says what it is, not that it failed: a lateral film, a report (`NotAssessed`)


class HeatmapSink(Protocol):
    """Writes one image's heat map (`pneumo.explain.overlay.HeatmapWriter`, which the command passes in: explanations
    sit above inference) and returns the overlay's path."""

    def write(self, path: Path, gray: np.ndarray, prediction: Prediction, *,
              prepared: np.ndarray | None = None) -> Path | None: ...


def predict_file_results(predictor: Predictor, files: list[Path], *, batch_size: int = 32,
                         heatmaps: HeatmapSink | None = None, workers: int | None = None) -> Iterator[FileResult]:
    """Yield a ``FileResult`` per input, in input order, each as soon as it is done (heat maps one by one, written by
    ``heatmaps`` when given).

    ``workers`` threads (default: one per core) each take a batch of ``batch_size`` files through decoding, the input
    gate, preprocessing and one model call, so every core is busy with whole images (a predictor made with
    ``threads=1`` runs each call on its caller's thread); at most ``workers + 1`` batches are held at once. On 2
    cores this is steadier than decoding on a pool while a 2-thread model runs the batch before it, and a little
    faster (BENCHMARKS.md, "Predict: a batch per core")."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    full = heatmaps is not None

    def run(chunk: list[Path]) -> tuple[list, dict[int, Prediction]]:
        loaded = [load_input(predictor, path, full) for path in chunk]
        ok = [i for i, (_, prepared, _) in enumerate(loaded) if prepared is not None]
        if not ok:
            return loaded, {}
        return loaded, dict(zip(ok, predictor.predict_prepared(np.stack([loaded[i][1] for i in ok]))))

    chunks = iter([files[start : start + batch_size] for start in range(0, len(files), batch_size)])
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        window = deque((chunk, pool.submit(run, chunk)) for chunk in itertools.islice(chunks, workers + 1))
        while window:
            chunk, future = window.popleft()
            loaded, results = future.result()
            window.extend((nxt, pool.submit(run, nxt)) for nxt in itertools.islice(chunks, 1))
            for i, path in enumerate(chunk):
                heatmap = None
                if heatmaps is not None and i in results:
                    heatmap = heatmaps.write(path, loaded[i][0], results[i], prepared=loaded[i][1])
                error = loaded[i][2]
                yield FileResult(path, results.get(i), None if error is None else str(error), heatmap,
                                 isinstance(error, NotAssessed))
