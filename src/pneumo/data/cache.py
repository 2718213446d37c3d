"""Decode every image once into a uint8 (N, S, S) array on disk, memory-mapped when read.

One cache file per dataset x size x resize policy x intensity step x marker step x crop, named by a hash of the
images' content hashes, the parameters and the versions of the code that makes the pixels: a changed image, parameter,
decoder (`pneumo.data.decode.DECODER_VERSION`) or preprocessing (`CACHE_VERSION`) gives a new key, so a stale cache is
never read.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from pneumo import atomic
from pneumo.config import MAX_INPUT_SIZE, MIN_INPUT_SIZE
from pneumo.data import decode
from pneumo.data.manifest import DatasetSource, default_cache_dir, resolve_root
from pneumo.data.preprocess import prepare
from pneumo.errors import ConfigError, DataError

if TYPE_CHECKING:
    from pneumo.config import RunConfig

log = logging.getLogger(__name__)

# bump when a change to data.preprocess.prepare (resize, crop, markers, intensity) can change a cached image's pixels;
# the decoder's changes come into the key through decode.DECODER_VERSION
CACHE_VERSION = 2  # 2: decoded by data.decode (EXIF, 16-bit/float scaling, alpha onto black)
_CHUNK = 64


@dataclass
class ImageCache:
    """Preprocessed images aligned with the manifest rows they were built from."""

    images: np.ndarray  # (N, S, S) uint8, memory-mapped
    paths: list[str]
    key: str
    file: Path

    def rows_for(self, df: pd.DataFrame) -> np.ndarray:
        """Indices into ``images`` for the manifest rows of ``df`` (any subset/order of the cached manifest)."""
        position = {p: i for i, p in enumerate(self.paths)}
        missing = [p for p in df["path"] if p not in position]
        if missing:
            raise DataError(f"{len(missing)} image(s) are not in the cache, e.g. {missing[0]}; rebuild it")
        return np.fromiter((position[p] for p in df["path"]), dtype=np.int64, count=len(df))


def cache_key(df: pd.DataFrame, *, size: int, policy: str, intensity: str, markers: str = "none",
              crop: str = "none") -> str:
    """The hash of the images, the preprocessing, the versions of the decoder and of the preprocessing code and of the
    libraries that make the pixels (`decode.pixel_libraries`: an upgrade that changes pixels makes new caches); a step
    left at ``none`` is not in it."""
    steps = f"{intensity}" if markers == "none" else f"{intensity}|markers={markers}"
    steps = steps if crop == "none" else f"{steps}|crop={crop}"
    h = hashlib.sha256(f"v{CACHE_VERSION}|decoder={decode.DECODER_VERSION}|{decode.pixel_libraries()}|{size}|{policy}|"
                       f"{steps}".encode())
    for path, digest in zip(df["path"], df["sha256"]):
        h.update(f"|{path}:{digest}".encode("utf-8", "surrogateescape"))  # a file name that is not UTF-8
    return h.hexdigest()[:20]


def _work(args: tuple[DatasetSource, list[str], list[str], int, str, str, str, str]) -> tuple[np.ndarray, list[str]]:
    """Decode and prepare one chunk; a file whose bytes are not the scanned ones (the SHA-256 the cache key is made
    of: the file changed since the scan, or ``--dataset`` names another copy with the same paths) is a failure, so
    no cache holds other images than its key says."""
    source, paths, digests, size, policy, intensity, markers, crop = args
    out = np.zeros((len(paths), size, size), np.uint8)
    failed = []
    for i, (rel, digest) in enumerate(zip(paths, digests, strict=True)):
        try:
            data = source.read(rel)
            if hashlib.sha256(data).hexdigest() != digest:
                raise DataError("its content is not the scanned file's (changed since the scan, or another copy of "
                                "the dataset)")
            out[i] = prepare(decode.load_image(data, target=size), size=size, policy=policy, intensity=intensity,
                             markers=markers, crop=crop)
        except Exception as exc:  # noqa: BLE001 - reported once, below
            failed.append(f"{rel} ({exc})")
    return out, failed


def check_image_size(size: int) -> None:
    """ConfigError unless ``size`` is a model input side the cache can hold."""
    if not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
        raise ConfigError(f"the image size must be within {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} pixels, got {size}")


def build_cache(
    df: pd.DataFrame,
    root: str | os.PathLike | None,
    *,
    size: int = 224,
    policy: str = "squash",
    intensity: str = "none",
    markers: str = "none",
    crop: str = "none",
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ImageCache:
    """Return the cache for these manifest rows, building it if needed (decoding on all cores).

    Raises:
        ConfigError: ``size`` outside ``MIN_INPUT_SIZE``..``MAX_INPUT_SIZE``.
        OSError: the cache cannot be written (a read-only folder; ENOSPC: no room for the array, before decoding).
    """
    check_image_size(size)  # before decoding anything (0 decoded every image to fail)
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(df, size=size, policy=policy, intensity=intensity, markers=markers, crop=crop)
    variant = intensity if markers == "none" else f"{intensity}-{markers}"
    variant = variant if crop == "none" else f"{variant}-{crop.replace(':', '')}"
    file = directory / f"images-{size}-{policy}-{variant}-{key}.npy"
    index_file = file.with_suffix(".json")
    paths, digests = df["path"].tolist(), df["sha256"].tolist()
    if file.is_file() and index_file.is_file():
        try:
            return _open(file, index_file, key, paths, size)
        except (ValueError, OSError, EOFError):
            pass  # a broken cache file is rebuilt below
    directory.mkdir(parents=True, exist_ok=True)
    source = DatasetSource(resolve_root(root))
    starts = range(0, len(paths), _CHUNK)
    failed: list[str] = []
    n_workers = workers or min(len(starts), os.cpu_count() or 1)
    jobs = [(source, paths[i : i + _CHUNK], digests[i : i + _CHUNK], size, policy, intensity, markers, crop)
            for i in starts]
    with atomic.writing(file) as tmp:  # the array appears under its name only when complete
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
        _reserve(tmp, file)
        with tqdm(total=len(paths), desc=f"cache {size}px {policy}", unit="img", disable=not progress) as bar:
            if n_workers > 1:
                with ProcessPoolExecutor(n_workers, initializer=die_with_parent) as pool:
                    _fill(array, pool.map(_work, jobs), bar, failed)
            else:
                _fill(array, map(_work, jobs), bar, failed)
        if failed:
            raise DataError(f"{len(failed)} image(s) could not be decoded, e.g. {failed[0]}; rescan the dataset")
        array.flush()
        del array
        atomic.write_json(index_file, {"key": key, "size": size, "policy": policy, "intensity": intensity,
                                       "markers": markers, "crop": crop, "paths": paths})
    return _open(file, index_file, key, paths, size)


def die_with_parent() -> None:
    """A worker process's initializer: on Linux the kernel sends it SIGKILL when its parent dies (a killed `evaluate`
    or `data cache` left its decode workers waiting forever, each holding ~0.9 GB and the deleted cache file's disk
    space); elsewhere nothing."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _reserve(tmp: Path, file: Path) -> None:
    """Allocate the disk blocks of the sparse file ``tmp`` (the array being built as ``file``) before it is written
    through its memmap: on a full disk the kernel kills a process writing to a page it cannot allocate (SIGBUS, no
    message), where the reservation fails with ENOSPC. A system or file system without it skips the reservation.

    Raises:
        OSError: ENOSPC (or another error) naming ``file`` and the bytes it needs.
    """
    if not hasattr(os, "posix_fallocate"):  # (macOS, Windows)
        return
    needed = tmp.stat().st_size
    fd = os.open(tmp, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, needed)
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP:
            raise OSError(exc.errno, f"{exc.strerror} (the image cache needs {needed / 1e6:.1f} MB)",
                          str(file)) from exc
    finally:
        os.close(fd)


def _fill(array: np.ndarray, results, bar, failed: list[str]) -> None:
    start = 0
    for images, bad in results:
        array[start : start + len(images)] = images
        start += len(images)
        failed.extend(bad)
        bar.update(len(images))


def _open(file: Path, index_file: Path, key: str, paths: list[str], size: int) -> ImageCache:
    """The cache of ``paths`` in ``file`` and its index.

    Raises:
        ValueError: the files are not the ones `build_cache` writes for ``key`` and ``paths``: another key, a
            malformed index (``[]``, paths of ``null``), an array of another shape (or an .npz).
        OSError, EOFError: a file cannot be read (an empty array file).
    """
    index = json.loads(index_file.read_text())
    images = np.load(file, mmap_mode="r", allow_pickle=False)
    if (not isinstance(index, dict) or index.get("key") != key or index.get("paths") != paths
            or not isinstance(images, np.ndarray) or images.shape != (len(paths), size, size)):
        raise ValueError("cache does not match its index")
    return ImageCache(images=images, paths=paths, key=key, file=file)


def image_cache(cfg: RunConfig, df: pd.DataFrame) -> ImageCache:
    """The cache of ``df``'s images as the run configuration ``cfg`` preprocesses them."""
    return build_cache(df, cfg.data.root, size=cfg.data.image_size, policy=cfg.data.resize_policy,
                       intensity=cfg.data.intensity, markers=cfg.data.markers, crop=cfg.data.crop,
                       cache_dir=cfg.data.cache_dir)


def kept_array(file: Path, compute: Callable[[], np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """A float32 array derived from cached images (features, logits) kept in ``file`` beside the image cache: loaded
    when it is there with exactly ``shape`` and finite values, else computed and written atomically (a damaged file is
    computed again: a cache review found a 1-D array and one of strings taken as a model's val-fold logits on
    their row count alone). A cache that cannot be written (read-only, full) keeps nothing: one warning, and
    the array just computed is returned."""
    try:
        kept = np.load(file, allow_pickle=False)
        if (isinstance(kept, np.ndarray) and kept.dtype == np.float32 and kept.shape == tuple(shape)
                and np.isfinite(kept).all()):  # (not a 0-d array, an .npz, another width or type)
            return kept
    except (OSError, ValueError, EOFError):  # absent or damaged
        pass
    array = compute()
    if array.dtype != np.float32 or array.shape != tuple(shape):  # would never be read back: computed on every call
        raise ValueError(f"{file.name}: computed {array.dtype} {array.shape}, expected float32 {tuple(shape)}")
    if not np.isfinite(array).all():  # a broken model's: never read back, so not kept (the caller says why)
        return array
    try:
        with atomic.writing(file) as tmp, open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
    except OSError as exc:  # a read-only cache: computed each time, as the dataset scan is
        log.warning("%s is not kept (%s): it is computed again next time", file, exc.strerror or exc)
    return array
