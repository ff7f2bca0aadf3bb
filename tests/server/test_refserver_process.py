"""The backend as a process: flags, start-up line, port file, /metrics, and clean stops on signals."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

import pytest
from websockets.exceptions import ConnectionClosed

from loadgen.server import add_serve_arguments


def test_sigterm_exits_zero_and_logs_the_injected_counts(spawn, connect_to):
    """SIGTERM stops the backend with exit code 0, removes the port file and logs the injected counts."""
    server = spawn("--drop", "0.5", "--seed", "1")
    sender, receiver = connect_to(server.url), connect_to(server.url)
    for name, c in (("s", sender), ("r", receiver)):
        c.login(name)
        c.ok("join", room="r")
    for i in range(40):
        sender.post("r", cseq=i + 1)
    dropped = 40 - len(receiver.fence())
    assert dropped > 0
    assert server.stop(signal.SIGTERM) == 0
    assert f"injected faults: drop={dropped} duplicate=0 reorder=0 disconnect=0" in server.log()
    assert not server.port_file.exists()


def test_sigint_exits_zero_closing_connections_with_1001(spawn, connect_to, timeout):
    """SIGINT stops the backend with exit code 0, closing open connections with code 1001."""
    server = spawn()
    c = connect_to(server.url)
    c.login("u")
    assert server.stop(signal.SIGINT) == 0
    with pytest.raises(ConnectionClosed) as closed:
        c.frame(timeout)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert "injected faults: drop=0 duplicate=0 reorder=0 disconnect=0" in server.log()


def test_start_line_names_the_urls_and_the_faults(spawn):
    """The start-up line gives the WebSocket and metrics URLs and which faults are on."""
    server = spawn("--drop", "0.25", "--delay-ms", "5", "--seed", "9")
    line = next(line for line in server.log().splitlines() if "listening on" in line)
    assert f"reference backend listening on {server.url.rstrip('/')} (metrics on {server.metrics_url})" in line
    assert "drop=0.25" in line and "delay=5±0ms" in line and "seed=9" in line


def test_metrics_endpoint_serves_refserver_metrics(server, client, unique):
    """/metrics serves the refserver_ families, with every fault kind present and requests counted by op."""
    before = server.metrics()
    c = client()
    c.login(unique("u"))
    c.ok("join", room=unique("r"))
    c.request("dance")
    after = server.metrics()
    for kind in ("drop", "duplicate", "reorder", "disconnect"):
        assert after[("refserver_injected_faults_total", (("kind", kind),))] == 0
    for name in (
        "refserver_connections",
        "refserver_rooms",
        "refserver_logged_in_users",
        "refserver_outbox_frames",
    ):
        assert (name, ()) in after
    assert after[("refserver_connections", ())] >= 1
    assert after[("refserver_rooms", ())] >= 1

    def grew(name, label, value):
        key = (name, ((label, value),))
        return after[key] - before[key]

    assert grew("refserver_requests_total", "op", "login") == 1
    assert grew("refserver_requests_total", "op", "invalid") == 1
    assert grew("refserver_errors_total", "code", "unknown_op") == 1
    assert all(name.startswith("refserver_") for name, _ in after)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve")
    add_serve_arguments(parser)
    return parser


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--drop", "1.5"),
        ("--duplicate", "-0.1"),
        ("--reorder", "nan"),
        ("--delay-ms", "-1"),
        ("--jitter-ms", "often"),
        ("--disconnect-rate", "-2"),
        ("--port", "70000"),
        ("--metrics-port", "-1"),
        ("--max-body", "-5"),
        ("--history", "1.5"),
        ("--max-frame", "0"),
        ("--rate-limit", "-1"),
        ("--rate-limit", "fast"),
        ("--rate-burst", "0"),
        ("--malformed", "1.5"),
        ("--malformed-kinds", "bad_json,garbled"),
        ("--malformed-kinds", ","),
        ("--close-mid-frame", "-0.1"),
    ],
)
def test_bad_flag_values_are_usage_errors_naming_the_flag(capsys, flag, value):
    """An out-of-range or malformed option value exits with code 2 and a message naming the flag."""
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args([flag, value])
    assert exited.value.code == 2
    assert flag in capsys.readouterr().err


def test_flags_default_to_the_documented_values():
    """Without flags the backend listens on 127.0.0.1:8765, metrics off, 64 KiB bodies, 1000 messages kept."""
    args = _parser().parse_args([])
    assert (args.host, args.port, args.metrics_port, args.max_body, args.history) == (
        "127.0.0.1",
        8765,
        None,
        65536,
        1000,
    )
    assert (args.drop, args.duplicate, args.reorder, args.delay_ms, args.disconnect_rate) == (0, 0, 0, 0, 0)


def test_module_entry_point_rejects_bad_flags(timeout):
    """``python -m loadgen.server`` with a bad flag exits 2 without starting."""
    done = subprocess.run(
        [sys.executable, "-m", "loadgen.server", "--drop", "2"],
        capture_output=True,
        timeout=3 * timeout,
        check=False,
    )
    assert done.returncode == 2
    assert b"--drop" in done.stderr


@pytest.mark.parametrize(
    "values",
    [
        ["--bug", "seat-teleport", "1"],
        ["--bug", "pk-score-skew", "1.5"],
        ["--bug", "pk-score-skew", "often"],
        ["--bug", "pk-score-skew"],
        ["--ring-timeout", "0"],
        ["--ring-timeout", "-1"],
        ["--ring-timeout", "soon"],
    ],
    ids=["bug-kind", "bug-p-range", "bug-p-word", "bug-no-p", "ring-zero", "ring-negative", "ring-word"],
)
def test_bad_bug_and_ring_timeout_values_are_usage_errors_naming_the_flag(capsys, values):
    """An unknown bug kind, a probability outside 0-1 or a non-positive ring timeout exits 2 naming the flag."""
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(values)
    assert exited.value.code == 2
    assert values[0] in capsys.readouterr().err


def test_bug_flags_repeat_and_ring_timeout_defaults_to_15_seconds():
    """--bug may be given once per kind (the last P of a kind wins) and --ring-timeout defaults to 15."""
    from loadgen.server._cli import config_from_args

    args = _parser().parse_args([])
    assert (args.bug, args.ring_timeout) == ([], 15.0)
    args = _parser().parse_args(
        ["--bug", "pk-score-skew", "0.5", "--bug", "seat-double-grant", "1", "--bug", "pk-score-skew", "0.25"]
    )
    config = config_from_args(args)
    assert config.bugs == (("seat-double-grant", 1.0), ("pk-score-skew", 0.25))
    assert (config.bug("pk-score-skew"), config.bug("seat-version-regress")) == (0.25, 0.0)


def test_start_and_exit_lines_name_the_bugs_and_the_ring_timeout(spawn, connect_to):
    """The start-up line lists the bugs on and the ring timeout; the exit line counts every bug kind."""
    server = spawn("--bug", "seat-double-grant", "1", "--ring-timeout", "2.5", "--seed", "3")
    line = next(line for line in server.log().splitlines() if "listening on" in line)
    assert "bug seat-double-grant=1" in line and "seed=3" in line and "ring timeout 2.5s" in line
    sitter, grabber = connect_to(server.url), connect_to(server.url)
    for name, c in (("s", sitter), ("g", grabber)):
        c.login(name)
        c.ok("join", room="r")
    sitter.ok("seat.take", room="r", seat=0, ts=0)
    grabber.ok("seat.take", room="r", seat=0, ts=0)
    sitter.fence()
    assert server.stop(signal.SIGTERM) == 0
    assert (
        "injected faults: drop=0 duplicate=0 reorder=0 disconnect=0 "
        "seat-double-grant=1 seat-version-regress=0 pk-score-skew=0" in server.log()
    )


def test_voice_room_and_call_metrics_count_changes_gifts_and_call_outcomes(spawn, connect_to):
    """Seat changes, gifts and call outcomes are counted, and seats, streams, PKs and calls are gauged."""
    server = spawn()
    before = server.metrics()
    for kind in ("seat-double-grant", "seat-version-regress", "pk-score-skew"):
        assert before[("refserver_injected_faults_total", (("kind", kind),))] == 0
    for outcome in ("connected", "rejected", "timeout", "cancelled", "busy"):
        assert before[("refserver_calls_total", (("outcome", outcome),))] == 0
    for kind in ("take", "leave", "lock", "unlock", "mute", "unmute", "kick", "accept", "cohost"):
        assert before[("refserver_seat_changes_total", (("kind", kind),))] == 0
    clients = [connect_to(server.url) for _ in range(4)]
    red_host, blue_host, alice, bob = clients
    for c, name, room in ((red_host, "rh", "red"), (blue_host, "bh", "blue"), (alice, "a", "red"), (bob, "b", "red")):
        c.login(name)
        c.ok("join", room=room, as_host=c in (red_host, blue_host))
    for host, room in ((red_host, "red"), (blue_host, "blue")):
        host.ok("stream.start", room=room, ts=0)
    alice.ok("seat.take", room="red", seat=0, ts=0)
    bob.ok("seat.take", room="red", seat=1, ts=0)
    red_host.ok("seat.kick", room="red", seat=1, ts=0)
    alice.ok("gift", room="red", gift="rose", count=1, value=1, ts=0)
    pk = red_host.ok("pk.invite", room="red", target="blue", ts=0)["pk"]
    blue_host.ok("pk.accept", room="blue", pk=pk, ts=0)
    alice.ok("gift", room="red", gift="rose", count=1, value=1, ts=0)
    call = bob.ok("call.invite", to="bh", ts=0)["call"]
    blue_host.ok("call.accept", call=call, ts=0)
    assert red_host.error("call.invite", to="b", ts=0) == "busy"
    rejected = red_host.ok("call.invite", to="a", ts=0)["call"]
    alice.ok("call.reject", call=rejected, ts=0)
    cancelled = red_host.ok("call.invite", to="a", ts=0)["call"]
    red_host.ok("call.hangup", call=cancelled, ts=0)
    after = server.metrics()
    assert after[("refserver_seat_changes_total", (("kind", "take"),))] == 2
    assert after[("refserver_seat_changes_total", (("kind", "kick"),))] == 1
    assert after[("refserver_gifts_total", ())] == 2
    for outcome, count in (("connected", 1), ("rejected", 1), ("timeout", 0), ("cancelled", 1), ("busy", 1)):
        assert after[("refserver_calls_total", (("outcome", outcome),))] == count, outcome
    gauges = {
        name: after[(f"refserver_{name}", ())] for name in ("seated_users", "live_streams", "pks", "calls_in_progress")
    }
    assert gauges == {"seated_users": 1, "live_streams": 2, "pks": 1, "calls_in_progress": 1}
    assert after[("refserver_requests_total", (("op", "seat.take"),))] == 2
    assert after[("refserver_errors_total", (("code", "busy"),))] == 1
    for c in clients:
        c.fence()
