"""Progress of long loops as log lines (where no terminal shows a bar): how often, and what they say."""

import logging
from types import SimpleNamespace

import pytest

from model import progress
from model.progress import Progress

log = logging.getLogger("test.progress")


@pytest.fixture
def clock(monkeypatch):
    """A fake clock for model.progress (seconds in now[0]), and no terminal: the log-line branch."""
    now = [1000.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    return now


def _run(clock, p: Progress, seconds: int, per_second: int = 1):
    for _ in range(seconds):
        clock[0] += 1.0
        p.update(per_second)


def test_a_long_loop_logs_done_total_rate_and_eta_once_every_10_seconds(clock, caplog):
    caplog.set_level(logging.INFO, logger=log.name)
    with Progress(100, "pretrain encoder", log) as p:
        _run(clock, p, 35)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["pretrain encoder: 10/100 steps (10%), 1 steps/s, ETA 1m30s",
                     "pretrain encoder: 20/100 steps (20%), 1 steps/s, ETA 1m20s",
                     "pretrain encoder: 30/100 steps (30%), 1 steps/s, ETA 1m10s"]


def test_a_loop_shorter_than_10_seconds_says_nothing(clock, caplog):
    caplog.set_level(logging.INFO, logger=log.name)
    with Progress(1000, "encode features", log, unit="images") as p:
        _run(clock, p, 9, per_second=100)
    assert caplog.records == []


def test_a_resumed_loop_counts_its_rate_from_where_it_resumed_and_shows_its_note(clock, caplog):
    caplog.set_level(logging.INFO, logger=log.name)
    p = Progress(1000, "phase 1 (decoder)", log, initial=400)
    p.note = "loss 0.0712"
    _run(clock, p, 10, per_second=30)
    assert [r.getMessage() for r in caplog.records] == [
        "phase 1 (decoder): 700/1000 steps (70%), 30 steps/s, ETA 10s, loss 0.0712"]


@pytest.mark.parametrize("level, bar", [(logging.INFO, True), (logging.WARNING, False)])
def test_a_terminal_gets_a_bar_instead_of_lines_and_a_quiet_logger_neither(clock, caplog, monkeypatch, level, bar):
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    caplog.set_level(level, logger=log.name)
    with Progress(100, "on a terminal", log) as p:
        assert (p.bar is not None) == bar
        _run(clock, p, 60)
    assert caplog.records == [] and p.done == 60
