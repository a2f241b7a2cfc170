"""SshTransport against real sshds (four farm nodes, each its own network and PID namespace): known_hosts read
once and again when it changes, no busy polling on an idle connection, every wait bounded by the deadline
(also after a command closed its output), every error with a reason, many nodes connected and asked at once
with the dark ones reported as values."""
from __future__ import annotations

import threading
import time

import pytest

from metasched.transport import KnownHosts, SshTransport, connect_all, open_streams, reason, request_all
from tests.lab.fixtures import running_farm

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def farm():
    with running_farm(4) as f:
        yield f


def transport(farm, i: int, **kw) -> SshTransport:
    kw.setdefault("connect_timeout", 5)
    kw.setdefault("command_timeout", 30)
    return SshTransport(farm.nodes[i].address, 22, user=farm.ssh_user, key_file=str(farm.key_file),
                        known_hosts=str(farm.known_hosts), **kw)


def in_thread(fn, limit: float = 60):
    """fn() in a thread; fail (instead of hanging the suite) if it has not returned after ``limit`` s."""
    box = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as exc:    # re-raised in the test's thread
            box["error"] = exc
    th = threading.Thread(target=call, daemon=True)
    th.start()
    th.join(limit)
    assert not th.is_alive(), f"still blocked after {limit} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def wakeups(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])


def test_every_node_of_the_farm_is_a_machine_of_its_own(farm):
    t = transport(farm, 0)
    try:
        res = t.run("cat /proc/1/comm; ls /proc | grep -c '^[0-9]'; id -un")
        assert res.ok, res
        comm, count, user = res.stdout.split()
        # pid 1 is the node's sshd and the node sees only its own few processes, not the host's
        assert (comm, user) == ("sshd", farm.ssh_user) and int(count) < 20, res.stdout
    finally:
        t.close()


def test_a_command_that_closes_its_output_but_keeps_running_times_out(farm):
    """Before: recv_exit_status() had no timeout, so the caller waited for the command to end."""
    t = transport(farm, 0)
    try:
        res = in_thread(lambda: t.run("exec >/dev/null 2>&1; sleep 120", timeout=1))
        assert res.rc is None and "timed out" in res.error and "did not exit" in res.error, res
        assert t.run("echo still usable").stdout == "still usable\n"     # the connection is kept
    finally:
        t.close()


def test_a_silent_stream_times_out_with_a_reason_and_an_absolute_deadline(farm):
    """Before: the stream raised socket.timeout() whose text is empty ('node agent on X: ' in the node's
    last error), and took no deadline."""
    t = transport(farm, 1)
    try:
        stream = t.open_stream("cat >/dev/null")
        with pytest.raises(TimeoutError) as e:
            in_thread(lambda: stream.request("hello", timeout=30, deadline=time.monotonic() + 0.5))
        assert str(e.value) and farm.nodes[1].address in str(e.value), repr(e.value)
        assert not t.connected          # silence on a channel that always answers: the connection is dropped
        assert t.run("echo back").stdout == "back\n"       # and the next call reconnects
    finally:
        t.close()


def test_reasons_are_never_empty():
    assert reason(TimeoutError()) == "TimeoutError" and reason(EOFError("gone")) == "gone"


def test_known_hosts_is_read_once_and_again_when_it_changes(farm):
    """Before: every connect parsed known_hosts again (quadratic in its lines)."""
    known = KnownHosts.shared(str(farm.known_hosts))
    ts = [transport(farm, i) for i in range(4)]
    original = farm.known_hosts.read_text()
    try:
        before = known.loads
        assert connect_all(ts, 4) == [None] * 4
        assert known.loads - before <= 1
        loads = known.loads
        for t in ts:
            t.close()
        assert connect_all(ts, 4) == [None] * 4
        assert known.loads == loads, "known_hosts parsed again although it did not change"
        for t in ts:
            t.close()
        # an admin replaces node 0's key: the next connect reads the file again and refuses the node
        lines = original.splitlines(keepends=True)
        other_key = lines[1].split(" ", 1)[1]
        farm.known_hosts.write_text(f"{farm.nodes[0].address} {other_key}" + "".join(lines[1:]))
        errors = connect_all(ts, 4)
        assert known.loads == loads + 1
        assert errors[0] and "mismatch" in errors[0] and farm.nodes[0].address in errors[0], errors
        assert errors[1:] == [None] * 3
        farm.known_hosts.write_text(original)
        assert connect_all(ts, 4) == [None] * 4
    finally:
        farm.known_hosts.write_text(original)
        for t in ts:
            t.close()


def test_an_idle_connection_does_not_wake_and_close_ends_its_thread(farm):
    """Before: paramiko's reader thread woke every 0.1 s (Transport._active_check_timeout) on every connection."""
    t = transport(farm, 2)
    try:
        assert t.run("true").ok
        reader = t._transport          # paramiko's Transport is the connection's reader thread
        n0 = wakeups(reader.native_id)
        time.sleep(2)
        assert wakeups(reader.native_id) - n0 <= 3, "the idle connection's reader thread keeps waking up"
        assert t.run("echo after idle").stdout == "after idle\n"
    finally:
        t.close()
    reader.join(5)
    assert not reader.is_alive(), "close() left the reader thread asleep in recv"


def test_dark_nodes_are_values_connected_at_once_and_asked_at_once(farm):
    ts = [transport(farm, i, connect_timeout=30) for i in range(4)]
    farm.blackhole(2)
    farm.kill_sshd(3)
    try:
        errors = in_thread(lambda: connect_all(ts, max_parallel=2, deadline=time.monotonic() + 2))
        assert errors[:2] == [None, None], errors
        assert "timed out" in errors[2] and farm.nodes[2].address in errors[2], errors
        assert "refused" in errors[3] and farm.nodes[3].address in errors[3], errors
        farm.restore(2)
        farm.start_sshd(3)
        assert connect_all(ts, 4) == [None] * 4
        streams = open_streams(ts, "cat", max_parallel=2)
        assert not [s for s in streams if isinstance(s, str)], streams
        farm.blackhole(1)          # node 1 goes dark while its stream is open
        results = in_thread(lambda: request_all([(s, f"ping {i}") for i, s in enumerate(streams)],
                                                time.monotonic() + 2))
        assert [r.stdout for r in results] == ["ping 0", "", "ping 2", "ping 3"], results
        assert results[1].error and "no answer" in results[1].error and farm.nodes[1].address in results[1].error
        res = in_thread(lambda: ts[1].run("true", deadline=time.monotonic() + 1))
        assert res.error and farm.nodes[1].address in res.error, res
        farm.restore(1)
        assert in_thread(lambda: ts[1].run("echo back")).stdout == "back\n"
    finally:
        farm.restore(1)
        farm.restore(2)
        farm.start_sshd(3)
        for t in ts:
            t.close()


def test_connects_in_flight_are_bounded_by_the_window_and_dark_nodes_share_one_timeout(farm):
    """Two dark nodes fill a window of two: the others start when their connects time out, together (one
    connect timeout in all, not one each), and are then connected."""
    ts = [transport(farm, i, connect_timeout=1) for i in (0, 1, 2, 3)]
    farm.blackhole(0)
    farm.blackhole(1)
    try:
        t0 = time.monotonic()
        errors = in_thread(lambda: connect_all(ts, max_parallel=1, window=2))
        took = time.monotonic() - t0
        assert all("timed out" in e for e in errors[:2]) and errors[2:] == [None, None], errors
        assert 1.0 <= took < 1.9, took     # the window held the others back; the two timeouts ran together
    finally:
        farm.restore(0)
        farm.restore(1)
        for t in ts:
            t.close()


def test_on_connect_runs_as_each_node_is_connected_and_not_for_the_dark_ones(farm):
    ts = [transport(farm, i, connect_timeout=1) for i in range(4)]
    seen = []
    farm.blackhole(3)
    try:
        errors = in_thread(lambda: connect_all(ts, max_parallel=2,
                                               on_connect=lambda i: seen.append((i, ts[i].connected))))
        assert sorted(seen) == [(0, True), (1, True), (2, True)] and errors[3], (seen, errors)
    finally:
        farm.restore(3)
        for t in ts:
            t.close()
