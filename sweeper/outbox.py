"""The MLflow outbox: a sweep's writes to the tracking server, in order, retried while it is unreachable.

The results table never waits for MLflow; its writes go through an ``Outbox`` that keeps them, in
order, while the server does not answer, and delivers them when it is back. ``server_unreachable``
tells a server that did not answer (retry later) from one that refused a write (drop it) and from a
bug (raise); ``bound_http_retries`` keeps MLflow's own client from stalling Tune for minutes per write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time

log = logging.getLogger(__name__)

#: MLflow's HTTP client retries a failed request 7 times with backoff factor 2 and waits up to
#: 120 s for an answer: about 4 minutes per write to a server that is down, while Tune's event loop
#: (where the tracker runs) stands still. A sweep's process bounds that to seconds (a value already
#: in the environment wins) and leaves the patient retrying to the tracker's ``Outbox``.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",  # one immediate retry (a stale pooled connection)
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def bound_http_retries() -> None:
    """Short MLflow HTTP retries and timeout for this process, unless the environment sets them."""
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)


def server_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the tracking server did not answer or failed (5xx).

    Such a write is worth retrying later; a write the server refused (4xx) or a bug is not.
    """
    import requests
    import urllib3
    from mlflow.exceptions import MlflowException, RestException

    transient = (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                 requests.exceptions.ChunkedEncodingError, urllib3.exceptions.MaxRetryError,
                 urllib3.exceptions.NewConnectionError, urllib3.exceptions.ProtocolError,
                 urllib3.exceptions.TimeoutError, ConnectionError, TimeoutError)
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, transient):
            return True
        response = getattr(exc, "response", None)
        if isinstance(exc, requests.HTTPError) and response is not None and response.status_code >= 500:
            return True  # the artifact proxy's answer
        if isinstance(exc, RestException) and exc.get_http_status_code() >= 500:
            return True
        if isinstance(exc, MlflowException) and re.search(r"failed with error code 5\d\d", exc.message):
            return True  # a 5xx answer that was not JSON (a proxy in front of the server)
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(exc: BaseException) -> str:
    """What went wrong, in one short line: the root cause (e.g. 'Connection refused'), not the wrappers."""
    import urllib3

    seen = set()
    while id(exc) not in seen:  # MlflowException <- requests' ConnectionError <- urllib3's MaxRetryError
        seen.add(id(exc))
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            exc = exc.reason
            break
        cause = exc.__cause__ or exc.__context__
        if cause is None:
            break
        exc = cause
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


class Outbox:
    """MLflow writes, in order; while the tracking server cannot be reached they wait and are retried.

    ``apply(op)`` makes one write (``op`` is a JSON-able dict). A write that fails because the server
    is unreachable (``server_unreachable``) stays at the head of the queue and every later one queues
    behind it, so the order holds. The queue is retried by ``flush`` at most every ``wait`` seconds
    (doubling from ``min_wait`` to ``max_wait``), so that a down server is not asked on every Tune
    event and costs the caller one short attempt at a time. One warning when the server becomes
    unreachable, one when the backlog has been delivered. A write the server refuses is logged as an
    error, dropped and counted in ``rejected``; any other exception is a bug and propagates.
    """

    def __init__(self, apply, name: str, min_wait: float = 2.0, max_wait: float = 30.0):
        self.apply, self.name = apply, name
        self.queue: list[dict] = []
        self.rejected: list[str] = []
        self.tries = 0  # flushes that tried the queue
        self.min_wait, self.max_wait = min_wait, max_wait
        self._wait, self._next_try = min_wait, 0.0
        self._down_since: float | None = None
        self._late = 0  # writes delivered since the server became unreachable

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def submit(self, op: dict) -> None:
        """Write ``op`` now, or queue it behind the writes that wait."""
        self.queue.append(op)
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Deliver the queue in order when a retry is due (always with ``force``); True once it is empty."""
        from mlflow.exceptions import MlflowException

        if not self.queue:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        self.tries += 1
        while self.queue:
            op = self.queue[0]
            try:
                with _quiet("urllib3.connectionpool", self.down):  # its "Retrying ..." once per try
                    self.apply(op)
            except Exception as exc:
                if server_unreachable(exc):
                    self.note_unreachable(exc)
                    return False
                self.queue.pop(0)
                if not isinstance(exc, MlflowException):
                    raise
                log.error("MLflow refused %s: %s", describe(op), _first_line(exc))
                self.rejected.append(f"{describe(op)}: {_first_line(exc)}")
                continue
            self.queue.pop(0)
            if self.down:
                self._late += 1
        if self.down:
            log.warning("MLflow tracking server %s answers again: delivered the %d writes queued during %.0f s",
                        self.name, self._late, time.monotonic() - self._down_since)
            self._down_since, self._late = None, 0
        self._wait, self._next_try = self.min_wait, 0.0
        return True

    def drain(self, timeout: float, poll: float = 5.0) -> bool:
        """Retry the queue until it is empty (True) or ``timeout`` seconds have passed (one try at least)."""
        deadline = time.monotonic() + timeout
        while not self.flush(force=True):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(poll, left))
        return True

    def note_unreachable(self, exc: BaseException) -> None:
        now = time.monotonic()
        if not self.down:
            self._down_since = now
            log.warning("MLflow tracking server %s unreachable (%s): its writes wait, in order, and are retried "
                        "(the results table does not wait for them)", self.name, _first_line(exc))
        self._next_try = now + self._wait
        self._wait = min(2 * self._wait, self.max_wait)


@contextlib.contextmanager
def _quiet(logger: str, quiet: bool):
    """Only errors from ``logger`` meanwhile, when ``quiet``."""
    lg = logging.getLogger(logger)
    level = lg.level
    if quiet:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(level)


def describe(op: dict) -> str:
    """One op in words, for logs: 'metrics of trial h16-k6-s0-t0'."""
    target = f"trial {op['trial']}" if "trial" in op else f"run {op.get('run')}"
    return f"{op['op']} of {target}"
