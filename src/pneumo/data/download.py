"""Download the dataset archive: streamed with urllib, resumable (HTTP Range), checksum-verified, atomic.

The archive is written to ``<dest_dir>/<filename>.part`` and renamed to ``<dest_dir>/<filename>`` only once it is
complete and, when a SHA-256 is known, verified. An interrupted download leaves the ``.part`` file behind; the next
call asks the server for the missing bytes only (servers that ignore ``Range`` get a clean restart). The SHA-256 of
every finished file is recorded next to it in ``<filename>.sha256`` (``sha256sum`` format), so a source whose checksum
is not published still gets a reference value on first download.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pneumo import atomic
from pneumo.atomic import sha256_file
from pneumo.errors import ConfigError, DataError

log = logging.getLogger(__name__)

USER_AGENT = "pneumo-downloader/0.1 (+https://doi.org/10.17632/rscbjbr9sj.2)"
MAX_ATTEMPTS = 5  # automatic resumes per call, only while each attempt makes progress
RETRY_DELAY_S = 2.0
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class Source:
    """A known download: where it lives, what it is called locally and how to check it."""

    name: str
    url: str
    filename: str
    sha256: str | None
    size: int | None
    citation: str


SOURCES: dict[str, Source] = {
    # Kermany, Zhang, Goldbaum, Mendeley Data v2 (CC BY 4.0). The URL 302-redirects to the file on S3; the redirect
    # keeps the Range header. Size 1,235,512,464 bytes is stated by three independent public projects. Mendeley
    # publishes no checksum and the only public SHA-256 we found (13efc055...1ce36, one third-party README) is
    # unconfirmed, so the size is checked and the SHA-256 is recorded on first download (<file>.sha256) and verified
    # on every later use instead of risking a 1.2 GB download being discarded on a wrong reference value.
    "mendeley": Source(
        name="mendeley",
        url=(
            "https://data.mendeley.com/public-files/datasets/rscbjbr9sj/files/"
            "f12eaf6d-6023-432f-acc9-80c9d7393433/file_downloaded"
        ),
        filename="ChestXRay2017.zip",
        sha256=None,
        size=1_235_512_464,
        citation="Kermany D, Zhang K, Goldbaum M. Mendeley Data v2, 2018. doi:10.17632/rscbjbr9sj.2 (CC BY 4.0)",
    ),
}


class _Interrupted(Exception):
    """A transfer that started and then broke off; the ``.part`` file holds what arrived."""


def fetch_dataset(cache_dir: str | os.PathLike | None = None, *, source: str = "mendeley") -> Path:
    """Download a known dataset archive into the cache folder (once) and return its path.

    Args:
        cache_dir: target folder; default ``$PNEUMO_CACHE`` or ``~/.cache/pneumo``.
        source: a key of ``SOURCES``.

    Returns:
        The path of the verified archive, usable as ``--dataset``.
    """
    if source not in SOURCES:
        raise ConfigError(f"unknown dataset source {source!r}; known: {', '.join(sorted(SOURCES))}")
    from pneumo.data.cache import default_cache_dir

    spec = SOURCES[source]
    dest_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    final = dest_dir / spec.filename
    if not final.exists() and spec.size:
        _check_free_space(dest_dir, spec.size - _size_of(final.with_name(final.name + ".part")))
    return download(spec.url, dest_dir, sha256=spec.sha256, size=spec.size, filename=spec.filename)


def _check_archive(path: Path, name: str | None = None) -> None:
    """A ``.zip`` must be one (its central directory is there): a file of the right size full of zeros was taken as
    the dataset archive (a cache review).

    Raises:
        DataError: it is not.
    """
    if (name or path.name).lower().endswith(".zip") and not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a zip archive (damaged, or another file under its name): delete it and "
                        "download it again")


def download(
    url: str,
    dest_dir: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    filename: str | None = None,
    progress: bool = True,
    timeout: float = 60,
    chunk: int = 1 << 20,
) -> Path:
    """Stream ``url`` to ``dest_dir/filename``, resuming a previous ``.part`` file.

    Args:
        url: http(s) address (redirects are followed).
        dest_dir: folder to write into (created); nothing is written outside it.
        sha256: expected hex digest; on mismatch the file is removed and ``DataError`` raised. When ``None`` the
            digest is recorded (``<name>.sha256``) and a later call checks the file against that record.
        size: expected size in bytes, checked on the ``.part`` file before it takes the final name (a server that
            ends a response early without a Content-Length leaves a short file that looks complete).
        filename: local file name; default the last segment of the URL path.
        progress: show a tqdm bar.
        timeout: seconds to wait for the connection and for each read.
        chunk: bytes per read.

    Returns:
        The path of the complete file. An existing complete file is returned as is (after checking ``sha256``).
    """
    dest = Path(dest_dir).expanduser()
    name = _safe_filename(filename if filename is not None else _name_from_url(url))
    expected = sha256.lower().strip() if sha256 else None
    final = dest / name
    part = dest / f"{name}.part"
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create download folder {dest}: {exc.strerror or exc}") from None

    record = dest / f"{name}.sha256"
    if final.is_file():
        if size is not None and final.stat().st_size != size:  # a file put there by hand, or cut short earlier
            raise DataError(f"{final} holds {final.stat().st_size} bytes, not the {size} of a complete download: "
                            f"delete it (and {record.name}) and download it again")
        if expected is None and record.is_file():
            if sha256_file(final) != (record.read_text().split() or [""])[0]:
                raise DataError(f"{final} no longer matches the SHA-256 recorded when it was downloaded: it changed or "
                                f"is damaged; delete it and {record.name}, then download it again")
            return final
        if expected is None:  # no record (lost, or a file put there): checked as a zip, then recorded as it is now
            _check_archive(final)
            atomic.write_text(record, f"{sha256_file(final)}  {name}\n")
            log.warning("%s has no SHA-256 record of its download (a download killed before writing it, or a file "
                        "put there): its SHA-256 is recorded now, not verified against the source", final)
            return final
        if sha256_file(final) == expected:
            log.info("already downloaded: %s", final)
            return final
        log.warning("%s does not match the expected checksum; downloading it again", final)
        final.unlink()

    for attempt in range(1, MAX_ATTEMPTS + 1):
        before = _size_of(part)
        try:
            _transfer(url, part, progress=progress, timeout=timeout, chunk=chunk)
            break
        except _Interrupted as exc:
            if _size_of(part) == before or attempt == MAX_ATTEMPTS:
                raise DataError(
                    f"download of {url} interrupted ({exc}) after {_size_of(part):,} bytes; "
                    f"run the same command again to resume from {part}"
                ) from None
            log.warning("download interrupted (%s); resuming (attempt %d of %d)", exc, attempt + 1, MAX_ATTEMPTS)
            time.sleep(RETRY_DELAY_S)

    got = _size_of(part)
    if size is not None and got != size:
        if got > size:
            part.unlink(missing_ok=True)
        raise DataError(f"{name} arrived with {got:,} bytes, expected {size:,}: "
                        + ("run the same command again to resume" if got < size else "the file was removed"))
    digest = sha256_file(part)
    if expected is not None and digest != expected:
        part.unlink(missing_ok=True)
        raise DataError(
            f"checksum mismatch for {name}: expected sha256 {expected}, got {digest}; "
            "the file was removed, run the command again to download it anew"
        )
    _check_archive(part, name)
    atomic.write_text(record, f"{digest}  {name}\n")  # first: a kill between the two leaves a record, not an unrecorded file
    os.replace(part, final)
    log.info(
        "downloaded %s (%d bytes, sha256 %s%s)",
        final,
        final.stat().st_size,
        digest,
        ", verified" if expected else ", recorded",
    )
    return final


def _transfer(url: str, part: Path, *, progress: bool, timeout: float, chunk: int) -> None:
    """One HTTP request appending to (or restarting) ``part``; returns when the body is complete."""
    offset = _size_of(part)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            if _range_not_satisfiable(exc, part):
                return None
            log.info("the partial file %s did not fit the file at %s; starting over", part.name, url)
            return _transfer(url, part, progress=progress, timeout=timeout, chunk=chunk)
        raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DataError(f"cannot download {url}: {_reason(exc.reason)}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DataError(f"cannot download {url}: {_reason(exc)}") from None

    with response:
        mode, start, total = _resume_plan(response, offset)
        length = response.headers.get("Content-Length")
        remaining = int(length) if length and length.isdigit() else None
        total = total or (start + remaining if remaining is not None else None)
        if mode == "wb" and offset:
            log.info("the server does not support resuming; restarting the download of %s", part.name)
        received = _stream(response, part, mode, chunk=chunk, total=total, start=start, progress=progress)
    if remaining is not None and received < remaining:
        raise _Interrupted(f"got {received:,} of {remaining:,} bytes")


def _stream(
    response: http.client.HTTPResponse,
    part: Path,
    mode: str,
    *,
    chunk: int,
    total: int | None,
    start: int,
    progress: bool,
) -> int:
    """Copy the response body into ``part``; returns the number of bytes received."""
    bar = tqdm(
        total=total,
        initial=start,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=part.name.removesuffix(".part"),
        disable=not progress,
        leave=False,
    )
    received = 0
    try:
        out = open(part, mode)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DataError(f"cannot write {part}: {exc.strerror or exc}") from None
    with out, bar:
        while True:
            try:
                data = response.read(chunk)
            except (OSError, http.client.HTTPException) as exc:
                raise _Interrupted(_reason(exc)) from None
            if not data:
                return received
            try:
                out.write(data)
            except OSError as exc:
                raise DataError(f"cannot write {part}: {exc.strerror or exc}") from None
            received += len(data)
            bar.update(len(data))


def _resume_plan(response: http.client.HTTPResponse, offset: int) -> tuple[str, int, int | None]:
    """(file mode, first byte of this body, total size if known) from the response status and Content-Range."""
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            total = match.group(3)
            return "ab", offset, int(total) if total.isdigit() else None
        raise DataError(
            f"the server sent an unexpected byte range ({response.headers.get('Content-Range')!r}); "
            "delete the .part file and download again"
        )
    return "wb", 0, None


def _range_not_satisfiable(exc: urllib.error.HTTPError, part: Path) -> bool:
    """HTTP 416 on resume: True when ``part`` already holds the whole file; otherwise it is discarded."""
    match = re.search(r"/(\d+)", (exc.headers.get("Content-Range") or "") if exc.headers else "")
    if match and int(match.group(1)) == _size_of(part):
        return True
    part.unlink(missing_ok=True)
    return False


def _check_free_space(dest_dir: Path, needed: int) -> None:
    probe = dest_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise DataError(f"not enough disk space in {dest_dir}: need {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free")


def _name_from_url(url: str) -> str:
    return urllib.parse.unquote(Path(urllib.parse.urlsplit(url).path).name)


def _safe_filename(name: str) -> str:
    """A plain file name: no folders, no ``..``, so the download stays inside ``dest_dir``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise DataError(f"cannot use {name!r} as a download file name; pass filename='...'")
    return name


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _reason(exc: object) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
