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
