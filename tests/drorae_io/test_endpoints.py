"""drorae_io.endpoints: an address that does not parse, a server that refuses and one that never answers.

Real sockets on 127.0.0.1: a port where nothing listens, a server that accepts and never replies
(helpers.SilentServer), and a real HTTP server (http.server) that answers every request with 404.
"""

import http.server
import threading
import time

import pytest

from drorae_io import UserInputError, check_endpoint, endpoint
from helpers import SilentServer, closed_port


@pytest.mark.parametrize("address, why", [
    ("http://127.0.0.1:99999", "Port out of range 0-65535"),
    ("http://[::1", "Invalid IPv6 URL"),
    ("http://127.0.0.1:http", "Port could not be cast to integer value as 'http'"),
    ("http://127.0.0.1:0", "port 0"),
    ("http://127.0.0.1:5000/\x1b[2J", "a control character"),
])
def test_an_address_that_does_not_parse_is_one_line_naming_where_it_came_from(address, why):
    with pytest.raises(UserInputError) as err:
        endpoint(address, "MLFLOW_TRACKING_URI")
    assert str(err.value) == f"MLFLOW_TRACKING_URI {address!r}: not a valid address ({why})"


def test_a_ray_style_address_gets_its_default_scheme():
    assert endpoint("head:6379", "--address", default_scheme="ray") == ("ray", "head", 6379, "")
    assert endpoint("[::1]:10001", "--address", default_scheme="ray")[1:3] == ("::1", 10001)
    with pytest.raises(UserInputError, match="--address '127.0.0.1:99999': not a valid address"):
        endpoint("127.0.0.1:99999", "--address", default_scheme="ray")


def test_a_refused_connection_is_one_line_at_once():
    port = closed_port()
    start = time.monotonic()
    for over_http in (True, False):
        with pytest.raises(UserInputError) as err:
            check_endpoint(f"http://127.0.0.1:{port}", "URI", "start it", http=over_http, timeout=5)
        assert str(err.value) == f"URI http://127.0.0.1:{port}: no server answers (Connection refused); start it"
    assert time.monotonic() - start < 4


def test_a_server_that_accepts_and_never_answers_fails_within_the_timeout():
    with SilentServer() as server:
        start = time.monotonic()
        with pytest.raises(UserInputError) as err:
            check_endpoint(f"http://127.0.0.1:{server.port}", "URI", "start it", http=True, timeout=2)
        waited = time.monotonic() - start
        assert server.accepted >= 1  # it was reached and accepted the connection: not a refusal
    assert 1.9 < waited < 4, waited
    assert str(err.value) == (f"URI http://127.0.0.1:{server.port}: no server answers within 2 s (nothing accepts "
                              "the connection, or it is accepted and never answered); start it")
    with SilentServer() as server:  # without http, an accepted connection is the answer
        check_endpoint(f"127.0.0.1:{server.port}", "--address", "start it", http=False, timeout=2,
                       default_scheme="ray")


def test_any_http_answer_counts_even_an_error_status():
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ep = check_endpoint(f"http://127.0.0.1:{server.server_port}/prefix", "URI", "start it", http=True, timeout=5)
        assert (ep.host, ep.port, ep.path) == ("127.0.0.1", server.server_port, "/prefix")
    finally:
        server.shutdown()
        server.server_close()


def test_an_address_without_a_host_or_port_says_so():
    with pytest.raises(UserInputError, match="'http:///x': no host in the address; start it"):
        check_endpoint("http:///x", "URI", "start it", http=True)
    with pytest.raises(UserInputError, match="'ray://head': no port in the address; start it"):
        check_endpoint("ray://head", "--address", "start it", http=False)
