"""LocalTransport.run for real through /bin/sh: output handed over while the command runs, both pipes read
(a chatty stderr never blocks the command), a timeout or an absolute deadline ends the command and what it
started. Local streams: one line each way, many asked at once, a silent one reported at the deadline."""
from __future__ import annotations

import threading
import time

import pytest

from metasched.transport import LocalTransport, request_all


def test_output_reaches_the_callback_before_the_command_ends(tmp_path):
    gate = tmp_path / "gate"
    seen: list[str] = []
    first = threading.Event()

    def on_output(text: str) -> None:
        seen.append(text)
        if "first" in "".join(seen):
            first.set()

    t = LocalTransport(30)
    box = {}
    runner = threading.Thread(target=lambda: box.update(res=t.run(
        f'echo first; while [ ! -e {gate} ]; do sleep 0.05; done; echo second; echo oops >&2; exit 4',
        on_output=on_output)))
    runner.start()
    assert first.wait(20), "the first line was not handed over while the command waited"
    assert runner.is_alive() and "second" not in "".join(seen)
    gate.touch()
    runner.join(20)
    res = box["res"]
    assert (res.rc, res.stdout, res.stderr, res.error) == (4, "first\nsecond\n", "oops\n", None)
    assert "".join(seen) == res.stdout


def test_large_stdout_and_stderr_together_do_not_block():
    res = LocalTransport(30).run("i=0; while [ $i -lt 2000 ]; do echo \"err line $i of some length\" >&2; "
                                 "echo \"out line $i of some length\"; i=$((i+1)); done")
    assert res.rc == 0 and res.stdout.count("\n") == 2000 and res.stderr.count("\n") == 2000


def test_multibyte_text_split_across_reads_is_decoded_whole():
    res = LocalTransport(30).run("head -c 65535 /dev/zero | tr '\\0' x; printf 'é%.0s' $(seq 100)")
    assert res.stdout.endswith("é" * 100) and "\ufffd" not in res.stdout


def test_stdin_is_passed():
    assert LocalTransport(30).run("cat", stdin="hello").stdout == "hello"


def test_timeout_ends_the_command_and_its_children(tmp_path):
    pidfile = tmp_path / "pid"
    res = LocalTransport(30).run(f"sleep 60 & echo $! > {pidfile}; wait", timeout=1)
    assert res.rc is None and "timed out" in res.error
    pid = int(pidfile.read_text())

    def alive() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10          # SIGKILL is delivered asynchronously: let it land
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(), "the command's child outlived the timeout"


def test_an_absolute_deadline_ends_the_command_before_its_timeout():
    res = LocalTransport(30).run("sleep 30", timeout=30, deadline=time.monotonic() + 0.5)
    assert res.rc is None and "timed out" in res.error


def test_a_stream_answers_line_by_line_and_a_silent_one_times_out_with_a_reason():
    t = LocalTransport(30)
    echo = t.open_stream("while read line; do echo \"got $line\"; done")
    try:
        assert echo.request("a", timeout=5) == "got a"
        assert echo.request("b", deadline=time.monotonic() + 5) == "got b"
    finally:
        echo.close()
    silent = t.open_stream("cat >/dev/null")
    try:
        with pytest.raises(TimeoutError) as e:
            silent.request("x", timeout=30, deadline=time.monotonic() + 0.3)
        assert str(e.value), "a timeout without a reason"
        with pytest.raises(EOFError):        # a stream that missed its deadline is not used again
            silent.request("y", timeout=1)
    finally:
        silent.close()


def test_many_streams_are_asked_at_once_and_each_result_is_a_value():
    t = LocalTransport(30)
    streams = [t.open_stream("while read line; do echo \"$line back\"; done"),
               t.open_stream("cat >/dev/null"),                                # never answers
               t.open_stream("read line; echo 'cannot serve' >&2; exit 3"),    # the command ends
               t.open_stream("while read line; do sleep 0.2; echo \"$line late\"; done")]
    try:
        res = request_all([(s, f"q{i}") for i, s in enumerate(streams)], time.monotonic() + 3)
    finally:
        for s in streams:
            s.close()
    assert (res[0].rc, res[0].stdout, res[0].error) == (0, "q0 back", None)
    assert res[1].rc is None and "no answer" in res[1].error
    assert (res[2].rc, res[2].stderr, res[2].error) == (3, "cannot serve", None)
    assert (res[3].rc, res[3].stdout) == (0, "q3 late")


def test_a_stream_still_starting_is_kept_and_its_late_answer_is_not_taken_for_the_next():
    """An agent that starts slowly (a loaded node) misses the first deadline: the stream stays open, and
    the answer to that first request is skipped, so the next request gets its own answer. Once it has
    answered, silence ends the stream as before."""
    t = LocalTransport(30)
    slow = t.open_stream("sleep 0.6; while read line; do echo \"$line back\"; done")
    slow.patient_until = slow.opened + 5
    try:
        first = request_all([(slow, "q1")], time.monotonic() + 0.2)[0]
        assert first.rc is None and "no answer" in first.error and "first answer" in first.error
        assert slow.ended is None
        time.sleep(0.6)                   # the answer to q1 arrives meanwhile
        assert request_all([(slow, "q2")], time.monotonic() + 3)[0].stdout == "q2 back"
        assert not slow.patient()
    finally:
        slow.close()
    late = t.open_stream("while read line; do sleep 1.5; echo \"$line back\"; done")
    late.patient_until = late.opened + 0.1      # patience ran out before the deadline
    try:
        res = request_all([(late, "q1")], time.monotonic() + 0.3)[0]
        assert res.rc is None and late.ended is None    # 0.3 s proves nothing (SILENCE): kept
        res = request_all([(late, "q2")], time.monotonic() + 1.1)[0]
        assert res.rc is None and late.ended and "first answer" not in res.error   # silent for 1.1 s: ended
    finally:
        late.close()
