"""The command's progress lines for logs, with an injected clock (no real time anywhere)."""

from __future__ import annotations

import io as _io
import re
import time

import pytest

from napari_maskalign import _report
from napari_maskalign._report import LogLines, format_duration, heartbeat


class Clock:
    """Simulated seconds, moved by the test."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def stamp_seconds(line: str) -> float:
    return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.4, "59s"), (61, "1m01s"),
                                               (3725, "1h02m"), (3 * 86400 + 7200, "3d02h")])
def test_durations_are_short(seconds, text):
    assert format_duration(seconds) == text


def test_a_line_at_least_every_interval_even_when_a_frame_takes_long():
    """Frames every 3 s, then one frame that takes 47 s: the heartbeat (every 0.5 s)
    keeps the gaps between lines at most the interval."""
    clock, out = Clock(), _io.StringIO()
    lines = LogLines("registering", 40, stream=out, clock=clock, wall=clock, interval=9.0)
    finish = [3.0 * k for k in range(1, 20)] + [104.0 + 3.0 * k for k in range(21)]
    t, done = 0.0, 0
    while done < 40:
        t += 0.5
        clock.now = 1000.0 + t
        while done < 40 and finish[done] <= t:
            done += 1
            lines.update(done)
        lines.tick()
    lines.close()
    text = out.getvalue().splitlines()
    times = [stamp_seconds(ln) for ln in text]
    assert max(b - a for a, b in zip(times, times[1:])) <= 10
    assert text[0].endswith("registering: 0 of 40 frames")
    waiting = [ln for ln in text if "of 40 frames (47.5%)" in ln]
    assert len(waiting) >= 4  # the long frame: the same count, a line every 9 s
    assert all(re.search(r"\(\d+\.\d%\), [\d.]+ frames/s, \S+ left$", ln) for ln in text[1:-1])
    assert text[-1].endswith("registering: 40 of 40 frames, 40 in 2m44s (0.244 frames/s)")


def test_rate_and_time_left_count_only_this_runs_frames():
    clock, out = Clock(), _io.StringIO()
    lines = LogLines("registering", 1000, initial=400, stream=out, clock=clock, wall=clock,
                     interval=10)
    clock.now += 60
    lines.update(520)  # 120 frames in 60 s: 2 frames/s, 480 left: 4 minutes
    first, last = out.getvalue().splitlines()
    assert first.endswith("registering: 400 of 1000 frames (400 done earlier)")
    assert last.endswith("registering: 520 of 1000 frames (52.0%), 2 frames/s, 4m00s left")


def test_before_the_first_frame_the_lines_say_how_long_it_has_been():
    clock, out = Clock(), _io.StringIO()
    lines = LogLines("registering", None, stream=out, clock=clock, wall=clock, interval=10)
    clock.now += 25  # e.g. a mean reference over many frames comes first
    lines.tick()
    clock.now += 5
    lines.update(1, total=10)
    clock.now += 30
    lines.tick()  # one slow frame after the first
    text = [ln[20:] for ln in out.getvalue().splitlines()]
    assert text == ["registering: starting", "registering: starting, 25s since the start",
                    "registering: 1 of 10 frames",
                    "registering: 1 of 10 frames (10.0%), 1m00s since the start, no frame "
                    "finished since"]


def test_heartbeat_ticks_until_stopped():
    class Stop:
        def __init__(self, beats):
            self.beats, self.waits = beats, []

        def wait(self, seconds):
            self.waits.append(seconds)
            return len(self.waits) > self.beats

    ticks = []

    class Lines:
        def tick(self):
            ticks.append(1)

    stop = Stop(3)
    heartbeat(Lines(), stop, 0.5)
    assert len(ticks) == 3 and stop.waits == [0.5] * 4


def test_follow_prints_lines_only_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    from napari_maskalign.workflow import AlignProgress

    ticks = iter(range(0, 10_000, 5))
    monkeypatch.setattr(_report, "CLOCK", lambda: float(next(ticks)))

    def steps():
        for k in range(1, 7):
            yield AlignProgress(k, 6, "writing")
        return "done"

    assert _report.follow(steps(), "writing") == "done"
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("writing: starting") and err[1].endswith("writing: 1 of 6 frames")
    assert err[-1].split(" ", 2)[2].startswith("writing: 6 of 6 frames, 6 in ")
    assert _report.follow(steps(), "writing", quiet=True) == "done"
    assert capsys.readouterr().err == ""
