"""Limits that keep the service answering when clients are slow or many.

Three layers, each in the stack users already run:

* ``HeaderDeadlineH11Protocol`` — uvicorn's own h11 protocol plus one timer: a connection must deliver a request's
  headers within ``header_timeout_s`` of opening (or of its previous response), else it is closed. uvicorn has no
  such timeout (its keep-alive timer is disarmed by every byte received), so 1-byte-per-second clients would
  otherwise hold their connections for ever. Idle connections (open, no request in progress) are also capped, per
  client address (32) and in all (256), by closing the oldest: uvicorn's ``--limit-concurrency`` counts every open
  socket, so without the caps a flood of idle sockets would 503 everything, health probes included.
* ``UploadBudget`` — the bytes of uploads being read or waiting, summed over all requests, stay under a budget;
  beyond it a request gets 503 + ``Retry-After``. Slow clients hold almost nothing, so they cannot starve others.
* ``WorkQueue`` — at most ``max_active`` predictions are decoded and run at once, at most ``max_queue`` wait for a
  slot, each for at most ``queue_timeout_s``; beyond that 503 + ``Retry-After`` (an estimate from recent service
  times) instead of a cliff.

Rejections are counted and logged at a bounded rate by ``ThrottledLog`` (one summary line per interval).
``/healthz`` and ``/readyz`` take no upload budget, queue slot, body deadline or decode worker; the connection-level
header deadline and idle caps apply to every connection, probes included (they are built not to starve one).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

from pneumo.config import UPLOAD_GROWTH_ALLOWANCE

log = logging.getLogger(__name__)
LOG_EVERY_S = 10.0
PROXIES_ENV = "FORWARDED_ALLOW_IPS"  # uvicorn's: the proxies whose X-Forwarded-For it believes
MAX_RETRY_AFTER_S = 60


class Overloaded(Exception):
    """The service cannot take this request now: answer 503 with ``Retry-After: retry_after_s`` and close the
    connection. The client is told to wait at least ``idle_grace_s`` (1 s), after which its idle keep-alive
    connection may be closed under idle pressure (`HeaderDeadlineH11Protocol`), and a POST sent on a connection that
    closes at that moment fails on the client (1 of 2,583 requests at 128 clients, issue 24); the upload budget's 503
    also leaves the body unread. So the client comes back on a fresh connection."""

    status_code = 503  # (audited as such: a proxy audit found overload audited as 500, with no request id)

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.headers: dict[str, str] = {}  # the request's X-Request-ID, added where it is known


class ThrottledLog:
    """Counts events and logs them as one WARNING line per ``every_s`` seconds at most: the first event at once,
    later ones summed into the next line (``message`` gets the count and the interval)."""

    _made: ClassVar[weakref.WeakSet[ThrottledLog]] = weakref.WeakSet()

    def __init__(self, message: str, *, every_s: float = LOG_EVERY_S, logger: logging.Logger = log) -> None:
        self.message = message
        self.every_s = every_s
        self.logger = logger
        self.total = 0
        self._pending = 0
        self._last = -math.inf
        self._lock = threading.Lock()
        type(self)._made.add(self)

    def count(self, n: int = 1) -> None:
        now = time.monotonic()
        with self._lock:
            self.total += n
            self._pending += n
            if now - self._last < self.every_s:
                return
            pending, self._pending, self._last = self._pending, 0, now
        self.logger.warning(self.message, pending, self.every_s)

    def flush(self) -> None:
        """Log what was counted since the last line (at shutdown)."""
        with self._lock:
            pending, self._pending = self._pending, 0
        if pending:
            self.logger.warning(self.message, pending, self.every_s)

    @classmethod
    def flush_all(cls) -> None:
        """`flush` every one in this process (the service's stop: the connection counts were left unsaid once)."""
        for throttled in list(cls._made):
            throttled.flush()


SLOW_HEADERS = ThrottledLog("closed %d connection(s) that sent no complete request headers in time (last %gs)")
IDLE_EVICTED = ThrottledLog("closed %d idle connection(s) beyond the idle caps (last %gs)")


INVALID_REQUESTS = ThrottledLog("dropped %d invalid HTTP request(s) (last %gs)")


class ThrottleInvalidRequests(logging.Filter):
    """uvicorn logs a WARNING for every malformed request ("Invalid HTTP request received."): a client can flood the
    log with them. This filter on ``uvicorn.error`` turns them into `INVALID_REQUESTS` counts (one line per interval)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Invalid HTTP request"):
            INVALID_REQUESTS.count()
            return False
        return True


def throttle_invalid_request_warnings() -> None:
    """Install `ThrottleInvalidRequests` once on uvicorn's error logger (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ThrottleInvalidRequests) for f in logger.filters):
        logger.addFilter(ThrottleInvalidRequests())


class HeaderDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers (set ``header_timeout_s`` with
    :func:`configure_header_timeout`; the body has its own deadline in the app)."""

    header_timeout_s: ClassVar[float] = 10.0
    # Idle connections (open, no request in progress) are bounded apart from uvicorn's --limit-concurrency, which
    # counts every open socket: beyond a cap the OLDEST idle one is closed, so a flood of idle sockets (one client's
    # or everyone's) can never fill that limit and 503 a health probe, whose request arrives right after it connects.
    # Only a connection idle for at least ``idle_grace_s`` is ever closed: a keep-alive connection between two requests
    # (idle for milliseconds) and a new one whose request is on its way are never cut (behind a proxy, or in a load
    # test on loopback, every client has one address), and closing a socket does not make its client reconnect at once.
    # A proxy the operator names in $FORWARDED_ALLOW_IPS (whose X-Forwarded-For uvicorn then believes) is not one
    # client: its pooled connections count to ``max_idle`` only (nginx's keepalive pool of 64 lost POSTs to 502 when
    # they were cut: a proxy audit).
    max_idle_per_client: ClassVar[int] = 32
    max_idle: ClassVar[int] = 256
    idle_grace_s: ClassVar[float] = 1.0
    _idle: ClassVar[dict[HeaderDeadlineH11Protocol, float]] = {}  # when each became idle; insertion-ordered: oldest first

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._peer, self._proxy = "", False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        throttle_invalid_request_warnings()  # after uvicorn configured its logging
        super().connection_made(transport)
        self._peer = str((transport.get_extra_info("peername") or ("?",))[0])
        named = os.environ.get(PROXIES_ENV)  # named by the operator (uvicorn's loopback default is not a proxy: 128
        self._proxy = bool(named) and trusted_proxy(self._peer, named)  # clients on loopback lost 30 % throughput)
        self._arm_header_deadline()
        self._became_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        self._idle.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._idle.pop(self, None)  # a request is in progress

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline()  # the next request's headers get the same time
            self._became_idle()

    def _became_idle(self) -> None:
        idle, now = type(self)._idle, time.monotonic()
        idle.pop(self, None)
        idle[self] = now
        mine = [] if self._proxy else [c for c in idle if c._peer == self._peer]
        oldest = mine[: max(0, len(mine) - self.max_idle_per_client)] + list(idle)[: max(0, len(idle) - self.max_idle)]
        for victim in oldest:
            since = idle.get(victim)
            if victim is not self and since is not None and now - since >= self.idle_grace_s:
                idle.pop(victim, None)
                IDLE_EVICTED.count()
                victim.transport.close()

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served: its headers came in time
        if not self.transport.is_closing():
            SLOW_HEADERS.count()
            self.transport.close()


def trusted_proxy(peer: str, allowed: str | list[str] | None) -> bool:
    """Whether ``peer`` is among uvicorn's ``forwarded_allow_ips`` (addresses or networks, comma-separated; ``*``: any)."""
    items = [item.strip() for item in (allowed.split(",") if isinstance(allowed, str) else allowed or [])]
    if "*" in items:
        return True
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:  # a Unix socket's path
        return peer in items
    for item in items:
        try:
            if address in ipaddress.ip_network(item, strict=False):
                return True
        except ValueError:
            continue
    return False


def configure_header_timeout(seconds: float) -> type[HeaderDeadlineH11Protocol]:
    """Set the header deadline of every ``HeaderDeadlineH11Protocol`` in this process (each uvicorn worker calls it
    while building the app); returns the class to hand to ``uvicorn.run(http=...)``."""
    if seconds <= 0:
        raise ValueError("the header timeout must be positive")
    HeaderDeadlineH11Protocol.header_timeout_s = float(seconds)
    return HeaderDeadlineH11Protocol


class UploadBudget:
    """Bytes held by uploads, summed over all requests, kept under ``max_bytes``: each byte received is charged
    ``UPLOAD_GROWTH_ALLOWANCE`` times, what the buffer it is read into can hold (the file is not copied afterwards)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0
        self.rejected = ThrottledLog("refused %d upload(s): the upload memory budget was full (last %gs)")

    @asynccontextmanager
    async def charge(self, stream: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
        """``stream`` with each chunk charged to the budget; everything is given back when the block ends.

        Raises:
            Overloaded: a chunk would take the total over the budget.
        """
        taken = 0

        async def charged() -> AsyncIterator[bytes]:
            nonlocal taken
            async for chunk in stream:
                cost = math.ceil(len(chunk) * UPLOAD_GROWTH_ALLOWANCE)
                if self.held + cost > self.max_bytes:
                    self.rejected.count()
                    raise Overloaded("the server is receiving too many uploads, try again shortly", 2)
                self.held += cost
                taken += cost
                yield chunk

        try:
            yield charged()
        finally:
            self.held -= taken


class WorkQueue:
    """At most ``max_active`` holders at once, at most ``max_queue`` waiting (each at most ``queue_timeout_s``).

    One instance per event loop (the service's); the semaphore is only touched from that loop.
    """

    def __init__(self, *, max_active: int, max_queue: int, queue_timeout_s: float) -> None:
        if max_active < 1 or max_queue < 0 or queue_timeout_s <= 0:
            raise ValueError("max_active >= 1, max_queue >= 0 and queue_timeout_s > 0 are required")
        self.max_active, self.max_queue, self.queue_timeout_s = max_active, max_queue, queue_timeout_s
        self.active = 0
        self.waiting = 0
        self.service_s = 0.5  # running mean of how long a slot is held (seeds the first Retry-After)
        self._since: list[float] = []  # when each slot held now was taken
        self.rejected = ThrottledLog("refused %d prediction(s) with 503: the work queue was full (last %gs)")
        self._slots = asyncio.Semaphore(max_active)

    def retry_after_s(self) -> int:
        """Seconds until a retry likely finds a slot (1 .. 60): the jobs running now finish (one service time, or as
        long as the oldest of them has run already: a fresh service said 1 s while an 11 s job ran, a red-team
        review), then the waiting ones drain ``max_active`` at a time."""
        running = time.perf_counter() - min(self._since) if self._since else 0.0
        estimate = max(self.service_s, running) * (1 + self.waiting / self.max_active)
        return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(estimate))))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the ``max_active`` slots for the block.

        Raises:
            Overloaded: the queue is full, or no slot freed up within ``queue_timeout_s``.
        """
        if self._slots.locked():
            if self.waiting >= self.max_queue:
                self.rejected.count()
                raise Overloaded("the server is busy, try again shortly", self.retry_after_s())
            self.waiting += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), self.queue_timeout_s)
            except TimeoutError:
                self.rejected.count()
                raise Overloaded("the server is busy (waited too long for a slot), try again shortly",
                                 self.retry_after_s()) from None
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.active += 1
        start = time.perf_counter()
        self._since.append(start)
        try:
            yield
        finally:
            self.active -= 1
            self._since.remove(start)
            self._slots.release()
            self.service_s = 0.8 * self.service_s + 0.2 * (time.perf_counter() - start)
