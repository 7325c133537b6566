"""The sweep's tracking URI, checked before anything is written: it parses, and its server answers in time.

Real sockets on 127.0.0.1: a port where nothing listens, and a server that accepts every connection
and never replies (helpers.SilentServer), as a hung or overloaded tracking server does.
"""

import time

import pytest

from drorae_io import UserInputError
from helpers import SilentServer, closed_port
from sweeper.experiment import TRACKING_CHECK_S, check_tracking


def test_a_tracking_server_that_accepts_and_never_answers_fails_the_check_within_10_s(monkeypatch):
    with SilentServer() as server:
        uri = f"http://127.0.0.1:{server.port}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        start = time.monotonic()
        with pytest.raises(UserInputError) as err:
            check_tracking(uri)
        seconds = time.monotonic() - start
        assert server.accepted >= 1  # reached, and accepted: only the answer never came
    assert seconds < 10, seconds  # before this check waited for a connection only, and passed
    assert TRACKING_CHECK_S - 0.5 < seconds  # it did wait for the answer, as long as it says
    assert str(err.value) == (f"MLFLOW_TRACKING_URI {uri}: no server answers within {TRACKING_CHECK_S:.0f} s "
                              "(nothing accepts the connection, or it is accepted and never answered); start one "
                              "(make mlflow-server) or unset MLFLOW_TRACKING_URI")


def test_a_refused_tracking_server_names_where_the_uri_came_from(monkeypatch):
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(UserInputError, match=f"^MLFLOW_TRACKING_URI {uri}: no server answers \\(Connection refused\\); "
                                             "start one \\(make mlflow-server\\) or unset MLFLOW_TRACKING_URI$"):
        check_tracking(uri)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the spec's tracking.uri
    with pytest.raises(UserInputError, match=f"^tracking.uri {uri}: no server answers .*change the spec's "
                                             "tracking.uri$"):
        check_tracking(uri)


@pytest.mark.parametrize("uri, why", [("http://127.0.0.1:99999", "Port out of range 0-65535"),
                                      ("http://[::1", "Invalid IPv6 URL"),
                                      ("https://mlflow:port", "Port could not be cast to integer value as 'port'")])
def test_a_tracking_uri_that_does_not_parse_is_one_line_naming_which(monkeypatch, uri, why):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(UserInputError) as err:
        check_tracking(uri)
    assert str(err.value) == f"MLFLOW_TRACKING_URI {uri!r}: not a valid address ({why})"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(UserInputError) as err:
        check_tracking(uri)
    assert str(err.value) == f"tracking.uri {uri!r}: not a valid address ({why})"


def test_a_sqlite_store_where_no_file_can_be_written_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "table.csv").write_text("x\n")
    with pytest.raises(UserInputError, match="/proc is on a proc file system"):
        check_tracking("sqlite:////proc/drorae/mlflow.db")
    with pytest.raises(UserInputError, match=f"{tmp_path / 'table.csv'} is a regular file, not a directory"):
        check_tracking(f"sqlite:///{tmp_path}/table.csv/mlflow.db")
    check_tracking(f"sqlite:///{tmp_path}/results/mlflow.db")  # to be made: fine, and nothing made yet
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
