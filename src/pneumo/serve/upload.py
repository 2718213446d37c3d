"""Read an uploaded image from the request stream into memory, enforcing the size limit while reading.

Never touches the disk (Starlette's ``UploadFile`` spools anything above 1 MB to a temporary file) and never trusts
``Content-Length`` alone: the bytes are counted as they arrive. Accepted bodies: ``multipart/form-data`` with the
image in the field ``file`` (what browsers and ``curl -F file=@x.jpg`` send), or the raw image bytes with
``Content-Type: application/octet-stream``, ``image/*`` or ``application/dicom`` (``curl --data-binary``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

FIELD = "file"
FORM_OVERHEAD = 64 * 1024  # part headers, boundaries and small extra fields around the file in a multipart body
RAW_TYPES = ("application/octet-stream", "application/dicom")
MAX_PART_HEADER = 4096 + 128  # bytes of one part header line, e.g. Content-Disposition with the file name


class UploadError(Exception):
    """A request body that cannot be accepted: ``status`` and a one-line ``detail`` for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def read_upload(headers: dict[str, str], stream: AsyncIterator[bytes], *, max_bytes: int) -> bytearray:
    """The uploaded file's bytes (the buffer they were read into, not a copy).

    Args:
        headers: the request headers (lower-case names).
        stream: the request body chunks.
        max_bytes: the largest accepted file.

    Raises:
        UploadError: 413 too large, 415 unsupported content type, 400 malformed body, 422 no or several files.
    """
    content_type = headers.get("content-type", "")
    kind, params = parse_options_header(content_type)
    kind_text = kind.decode("latin-1").lower()
    if kind_text == "multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise UploadError(400, "multipart body without a boundary")
        limit = max_bytes + FORM_OVERHEAD
        _check_declared_length(headers, limit, max_bytes)
        return await _read_multipart(stream, boundary, max_bytes=max_bytes, limit=limit)
    if kind_text in RAW_TYPES or kind_text.startswith("image/"):
        _check_declared_length(headers, max_bytes, max_bytes)
        body = bytearray()
        async for chunk in stream:
            body += chunk
            if len(body) > max_bytes:
                raise UploadError(413, too_large(max_bytes))
        return body  # no copy: the file is held once (plus the buffer's growth allowance, see UploadBudget)
    raise UploadError(415, f"unsupported content type {kind_text or '(none)'!r}: send multipart/form-data with the "
                           f"image in the field {FIELD!r}, or the raw bytes as application/octet-stream")


def too_large(max_bytes: int) -> str:
    return f"upload too large: the limit is {max_bytes / 1e6:g} MB"


def _check_declared_length(headers: dict[str, str], limit: int, max_bytes: int) -> None:
    """Refuse early when the client announces more than we accept (the stream is still counted afterwards)."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadError(413, too_large(max_bytes))


class _FileCollector:
    """python-multipart callbacks that keep the ``file`` field's bytes in memory, bounded."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.files: list[bytearray] = []
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._current: bytearray | None = None
        self.ended = False  # the closing boundary (--boundary--) was seen

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_end": self.on_end}

    def on_end(self) -> None:
        self.ended = True

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._current = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") == FIELD.encode():
            if self.files:
                raise UploadError(422, f"send one image per request (several {FIELD!r} fields)")
            self._current = bytearray()
            self.files.append(self._current)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current is None:
            return  # other fields are counted against the body limit only, never kept
        self._current += data[start:end]
        if len(self._current) > self.max_bytes:
            raise UploadError(413, too_large(self.max_bytes))


async def _read_multipart(stream: AsyncIterator[bytes], boundary: bytes, *, max_bytes: int, limit: int) -> bytearray:
    collector = _FileCollector(max_bytes)
    parser = MultipartParser(boundary, collector.callbacks(), max_header_size=MAX_PART_HEADER)
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > limit:
                raise UploadError(413, too_large(max_bytes))
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        if "header size" in str(exc):  # python-multipart's own message for a part header over max_header_size
            raise UploadError(400, f"the file name is too long: a multipart part header may have at most "
                                   f"{MAX_PART_HEADER} bytes; rename the file") from None
        raise UploadError(400, "malformed multipart body") from None
    except FormParserError:
        raise UploadError(400, "malformed multipart body") from None
    if not collector.ended:  # a truncated upload: its file part may be cut short too
        raise UploadError(400, "malformed multipart body: the closing boundary is missing (truncated upload?)")
    if not collector.files:
        raise UploadError(422, f"no file uploaded: send the image in the multipart field {FIELD!r}")
    return collector.files[0]  # no copy: the file is held once (plus the buffer's growth allowance)
