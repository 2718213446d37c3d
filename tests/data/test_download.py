"""The downloader against a local HTTP server: Range resume, servers that ignore Range, dropped connections."""

from __future__ import annotations

import hashlib
import io
import random
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pneumo.data import download as dl
from pneumo.errors import ConfigError, DataError


def _make_zip() -> bytes:
    rng = random.Random(7)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for i in range(4):
            archive.writestr(f"chest_xray/train/NORMAL/IM-{i:04d}-0001.jpeg", rng.randbytes(60_000))
    return buffer.getvalue()


PAYLOAD = _make_zip()
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
CHUNK = 4096


@dataclass
class ServerState:
    ranges: list[str | None] = field(default_factory=list)
    bytes_sent: int = 0
    drops_left: int = 0  # /drop/ paths cut the body in half this many times


class _Handler(BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self.state.ranges.append(self.headers.get("Range"))
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/redirect"))
            self.end_headers()
            return
        if not self.path.endswith("/file.zip"):
            self.send_error(404)
            return
        start = 0
        honour_range = not self.path.startswith("/norange/")
        if honour_range and self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").removesuffix("-"))
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        if self.path.startswith("/nolength/"):  # ends early, with no Content-Length to tell
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/drop/") and self.state.drops_left > 0:
            self.state.drops_left -= 1
            body = body[: len(body) // 2]
        self.state.bytes_sent += len(body)  # counted before writing: the client may finish before write returns
        self.wfile.write(body)


@pytest.fixture()
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "RETRY_DELAY_S", 0.0)


def _get(url: str, dest: Path, **kwargs: object) -> Path:
    return dl.download(url, dest, progress=False, chunk=CHUNK, timeout=5, **kwargs)


def test_full_download_is_byte_identical_and_verified(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, _ = server
    path = _get(f"{base}/file.zip", tmp_path, sha256=DIGEST)
    assert path == tmp_path / "file.zip"
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "file.zip.part").exists()


def test_checksum_is_recorded_next_to_the_file_when_not_given(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, _ = server
    _get(f"{base}/file.zip", tmp_path, filename="archive.zip")
    assert (tmp_path / "archive.zip.sha256").read_text() == f"{DIGEST}  archive.zip\n"


def test_checksum_mismatch_raises_and_removes_the_file(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(DataError, match="checksum mismatch"):
        _get(f"{base}/file.zip", tmp_path, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_partial_file_is_resumed_with_a_range_request(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    have = len(PAYLOAD) * 2 // 5
    (tmp_path / "file.zip.part").write_bytes(PAYLOAD[:have])
    path = _get(f"{base}/file.zip", tmp_path, sha256=DIGEST)
    assert state.ranges == [f"bytes={have}-"]
    assert state.bytes_sent == len(PAYLOAD) - have
    assert path.read_bytes() == PAYLOAD


def test_server_that_ignores_range_gets_a_clean_restart(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    (tmp_path / "file.zip.part").write_bytes(PAYLOAD[:1000])
    path = _get(f"{base}/norange/file.zip", tmp_path, sha256=DIGEST)
    assert state.ranges == ["bytes=1000-"]
    assert path.read_bytes() == PAYLOAD


def test_complete_part_file_answered_with_416_is_finished(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    (tmp_path / "file.zip.part").write_bytes(PAYLOAD)
    path = _get(f"{base}/file.zip", tmp_path, sha256=DIGEST)
    assert state.bytes_sent == 0
    assert path.read_bytes() == PAYLOAD


def test_dropped_connection_is_resumed_within_the_same_call(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.drops_left = 1
    path = _get(f"{base}/drop/file.zip", tmp_path, sha256=DIGEST)
    assert state.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert path.read_bytes() == PAYLOAD


def test_connection_that_keeps_dropping_keeps_the_part_file_for_later(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    state.drops_left = 1000
    with pytest.raises(DataError, match="run the same command again to resume"):
        _get(f"{base}/drop/file.zip", tmp_path, sha256=DIGEST)
    part = tmp_path / "file.zip.part"
    assert len(state.ranges) == dl.MAX_ATTEMPTS
    assert 0 < part.stat().st_size < len(PAYLOAD)
    assert part.read_bytes() == PAYLOAD[: part.stat().st_size]
    assert not (tmp_path / "file.zip").exists()


def test_redirect_is_followed_and_keeps_the_range_header(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    (tmp_path / "file.zip.part").write_bytes(PAYLOAD[:5000])
    path = _get(f"{base}/redirect/file.zip", tmp_path, sha256=DIGEST, filename="file.zip")
    assert state.ranges == ["bytes=5000-", "bytes=5000-"]
    assert path.read_bytes() == PAYLOAD


def test_existing_verified_file_is_not_downloaded_again(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    (tmp_path / "file.zip").write_bytes(PAYLOAD)
    _get(f"{base}/file.zip", tmp_path, sha256=DIGEST)
    assert state.ranges == []


def test_connection_refused_is_a_one_line_data_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError, match="cannot download") as info:
        _get(f"http://127.0.0.1:{port}/file.zip", tmp_path)
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_http_error_status_is_a_data_error(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(DataError, match="HTTP 404"):
        _get(f"{base}/missing.zip", tmp_path)
    assert not (tmp_path / "missing.zip").exists()


@pytest.mark.parametrize("name", ["../escape.zip", "sub/file.zip", ".."])
def test_file_names_that_leave_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match="file name"):
        _get("http://127.0.0.1:9/file.zip", tmp_path / "dest", filename=name)
    assert not (tmp_path / "escape.zip").exists()


def test_fetch_dataset_downloads_a_registered_source_into_the_cache(
    server: tuple[str, ServerState], cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = server
    source = dl.Source("local", f"{base}/file.zip", "Local.zip", DIGEST, len(PAYLOAD), "test")
    monkeypatch.setitem(dl.SOURCES, "local", source)
    path = dl.fetch_dataset(source="local")
    assert path == cache_dir / "Local.zip"
    assert zipfile.ZipFile(path).namelist()[0].startswith("chest_xray/train/NORMAL/")


def test_fetch_dataset_rejects_an_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mendeley"):
        dl.fetch_dataset(tmp_path, source="nowhere")


def test_a_short_response_without_a_length_is_not_taken_for_the_file(server: tuple[str, ServerState],
                                                                      tmp_path: Path) -> None:
    """Mendeley gives no checksum, only the size: it was checked after the file had its final name and a recorded
    SHA-256, so every later use trusted a truncated archive."""
    base, _ = server
    with pytest.raises(DataError, match=f"arrived with {len(PAYLOAD) // 2:,} bytes, expected {len(PAYLOAD):,}"):
        _get(f"{base}/nolength/file.zip", tmp_path, size=len(PAYLOAD))
    assert not (tmp_path / "file.zip").exists() and (tmp_path / "file.zip.part").is_file()
    assert _get(f"{base}/file.zip", tmp_path, size=len(PAYLOAD)).read_bytes() == PAYLOAD  # resumed


def test_a_later_use_checks_the_file_against_its_recorded_checksum(server: tuple[str, ServerState],
                                                                   tmp_path: Path) -> None:
    base, state = server
    path = _get(f"{base}/file.zip", tmp_path)
    assert _get(f"{base}/file.zip", tmp_path) == path and len(state.ranges) == 1  # verified, not fetched again
    damaged = bytearray(path.read_bytes())
    damaged[100] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match="no longer matches the SHA-256 recorded"):
        _get(f"{base}/file.zip", tmp_path)


def test_an_archive_already_there_but_short_is_refused_not_used(server: tuple[str, ServerState],
                                                                tmp_path: Path) -> None:
    """An archive put in place by hand (or cut short before records existed) without a .sha256 record was returned
    as complete whatever its size: the size the source states is checked first."""
    base, state = server
    (tmp_path / "file.zip").write_bytes(PAYLOAD[: len(PAYLOAD) // 3])
    with pytest.raises(DataError, match=f"holds {len(PAYLOAD) // 3} bytes, not the {len(PAYLOAD)} of a complete"):
        _get(f"{base}/file.zip", tmp_path, size=len(PAYLOAD))
    assert state.ranges == []


def test_data_download_on_the_command_line(server: tuple[str, ServerState], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`pneumo data download`: the archive into --cache-dir and the line to use it; a second call does not fetch it
    again; an unknown source or a server that refuses: one line, exit 2, no traceback."""
    from pneumo.cli import main

    base, state = server
    monkeypatch.setitem(dl.SOURCES, "local", dl.Source("local", f"{base}/file.zip", "Local.zip", DIGEST,
                                                       len(PAYLOAD), "test"))
    assert main(["data", "download", "--source", "local", "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    archive = tmp_path / "c" / "Local.zip"
    assert archive.read_bytes() == PAYLOAD and f"--dataset {archive}" in out
    requests = len(state.ranges)
    assert main(["data", "download", "--source", "local", "--cache-dir", str(tmp_path / "c")]) == 0
    assert len(state.ranges) == requests  # verified against its checksum, not fetched again
    capsys.readouterr()
    monkeypatch.setitem(dl.SOURCES, "gone", dl.Source("gone", "http://127.0.0.1:9/file.zip", "Gone.zip", None, None,
                                                      "test"))
    for source, words in (("nowhere", "unknown dataset source 'nowhere'"), ("gone", "127.0.0.1:9")):
        assert main(["data", "download", "--source", source, "--cache-dir", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("pneumo data download: error:") and words in err[0], err
    assert not (tmp_path / "c" / "Gone.zip").exists()


def test_an_archive_there_without_its_record_is_checked_as_a_zip_and_recorded(server: tuple[str, ServerState],
                                                                              tmp_path: Path) -> None:
    """A file of the right size full of zeros, without a record, was reported as the dataset archive and never got a
    record (a cache review)."""
    base, state = server
    (tmp_path / "file.zip").write_bytes(bytes(len(PAYLOAD)))
    with pytest.raises(DataError, match="file.zip is not a zip archive"):
        _get(f"{base}/file.zip", tmp_path, size=len(PAYLOAD))
    assert not (tmp_path / "file.zip.sha256").exists()
    (tmp_path / "file.zip").write_bytes(PAYLOAD)  # the archive, put there by hand: recorded as it is now
    assert _get(f"{base}/file.zip", tmp_path, size=len(PAYLOAD)) == tmp_path / "file.zip"
    assert (tmp_path / "file.zip.sha256").read_text() == f"{DIGEST}  file.zip\n" and state.ranges == []
    damaged = bytearray(PAYLOAD)
    damaged[100] ^= 0xFF
    (tmp_path / "file.zip").write_bytes(bytes(damaged))  # from now on checked against that record
    with pytest.raises(DataError, match="no longer matches the SHA-256 recorded"):
        _get(f"{base}/file.zip", tmp_path, size=len(PAYLOAD))
