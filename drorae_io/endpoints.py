"""Addresses the user gives (an MLflow tracking URI, a Ray address): parsed, then asked for an answer, briefly.

``endpoint`` parses an address and says in one line what does not parse (a port out of range, a
bracket left open); ``check_endpoint`` then asks the server for an answer and gives up after a
few seconds, all of it (resolving the name, connecting, a TLS handshake, waiting for a reply)
within one deadline: a server that refuses, one that accepts a connection but never answers and
a name that never resolves each get one line, instead of a client library's minutes of retries.
With ``http=True`` the question is an HTTP request (through the proxy the environment names, as
the MLflow client goes), and any HTTP answer, an error status included, counts as an answer;
otherwise an accepted TCP connection does.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import NamedTuple
from urllib.parse import urlsplit

from drorae_io.errors import UserInputError

__all__ = ["Endpoint", "check_endpoint", "endpoint"]

#: How long ``check_endpoint`` waits by default, all of it together.
ANSWER_TIMEOUT_S = 5.0


class Endpoint(NamedTuple):
    scheme: str
    host: str | None
    port: int | None
    path: str


def endpoint(address: str, what: str, default_scheme: str | None = None) -> Endpoint:
    """``address`` split into scheme, host, port and path; UserInputError naming ``what`` when it does not parse.

    ``default_scheme``: given to an address without ``scheme://`` (``host:port``).
    """
    text = str(address).strip()
    if default_scheme and "://" not in text:
        text = f"{default_scheme}://{text}"
    try:
        parts = urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # "Port out of range 0-65535", "Invalid IPv6 URL", a port that is no number
        raise UserInputError(f"{what} {address!r}: not a valid address ({exc})") from None
    if port == 0:
        raise UserInputError(f"{what} {address!r}: not a valid address (port 0)")
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        raise UserInputError(f"{what} {address!r}: not a valid address (a control character)")
    return Endpoint(parts.scheme.lower(), host, port, parts.path)


def _ask(ep: Endpoint, url: str, http: bool, timeout: float) -> None:
    """Wait for one answer from ``ep``; raises what went wrong (OSError, ssl or http errors)."""
    if not http:
        socket.create_connection((ep.host, ep.port), timeout=timeout).close()
        return
    import ssl
    import urllib.error
    import urllib.request

    probe = url.rstrip("/") + "/health"  # an MLflow server's health check; any answer will do
    context = ssl._create_unverified_context() if ep.scheme == "https" else None  # a probe, not the client
    try:
        with urllib.request.urlopen(urllib.request.Request(probe, method="GET"), timeout=timeout,
                                    context=context) as response:
            response.read(1)
    except urllib.error.HTTPError:  # a status line and headers: the server answers
        return


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # urllib's URLError wraps the socket's error
    if isinstance(reason, BaseException):
        exc = reason
    elif isinstance(reason, str) and reason:
        return reason
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError):
        return "no answer"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def check_endpoint(address: str, what: str, hint: str, *, http: bool, timeout: float = ANSWER_TIMEOUT_S,
                   default_scheme: str | None = None, default_port: int | None = None,
                   server: str = "server") -> Endpoint:
    """Parse ``address`` (``endpoint``) and wait at most ``timeout`` seconds in all for its server to answer.

    UserInputError ``WHAT ADDRESS: ...; HINT`` when it does not parse, has no host, refuses, or
    gives no answer in time (``server`` names what should have answered). Returns the parsed address.
    """
    ep = endpoint(address, what, default_scheme)
    if not ep.host:
        raise UserInputError(f"{what} {address!r}: no host in the address; {hint}")
    if ep.port is None and not http:
        if default_port is None:
            raise UserInputError(f"{what} {address!r}: no port in the address; {hint}")
        ep = ep._replace(port=default_port)
    outcome: dict = {}
    url = address if "://" in str(address) else f"{ep.scheme}://{address}"

    def ask():
        try:
            _ask(ep, url, http, timeout)
            outcome["ok"] = True
        except Exception as exc:  # whatever it was, the caller says it in one line
            outcome["error"] = exc

    start = time.monotonic()
    # A thread, so that one deadline bounds all of it, the name's resolution included (getaddrinfo
    # takes no timeout); left behind when it runs over, it ends with the process.
    worker = threading.Thread(target=ask, name=f"probe {ep.host}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive() or ("error" in outcome and _why(outcome["error"]) == "no answer"):
        waited = max(timeout, time.monotonic() - start)
        raise UserInputError(f"{what} {address}: no {server} answers within {waited:.0f} s (nothing accepts the "
                             f"connection, or it is accepted and never answered); {hint}")
    if "error" in outcome:
        raise UserInputError(f"{what} {address}: no {server} answers ({_why(outcome['error'])}); {hint}")
    return ep
