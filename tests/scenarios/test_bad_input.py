"""Bad frames from the backend: counted by kind exactly as injected, users carry on, a line a second at most.

Real `locust` runs against the reference backend started with its frame faults
(``--malformed``, ``--close-mid-frame``; docs/protocol.md), whose injected counts come from
its /metrics. Faults the backend cannot make (a broken WebSocket header, a close reason that
is not UTF-8) come from a server of the test's own writing raw frames, read by a session.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct

import gevent
import gevent.server
import pytest

from loadgen.accounting import Accounting
from loadgen.drivers.base import PROTOCOL_ERROR_KINDS, Malformed
from loadgen.drivers.reference import ReferenceDriver
from loadgen.session import Session
from loadgen.transport import TransportError
from tests.support import Cluster
from tests.transport.peer import server_frame

STABLE = """
messaging:
  rooms: 3
  post_rate: 3
  dm_rate: 0.5
  read_rate: 0.5
  reconnect_rate: 0
"""

SKIPPABLE = ("bad_json", "not_object", "unknown_event", "binary", "bad_utf8")
_PROTOCOL_ERROR_LINE = re.compile(r"WARNING/loadgen: Protocol error from the backend: (\w+):")


def _log_lines(output: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    for match in _PROTOCOL_ERROR_LINE.finditer(output):
        lines[match.group(1)] = lines.get(match.group(1), 0) + 1
    return lines


def test_broken_frames_and_cut_connections_are_counted_by_kind_as_the_backend_injected_them(
    backend, locust_run, write_profile
):
    """Every broken frame and every cut the backend made is in the summary under its kind; users go on."""
    server = backend(
        "--malformed", "0.03", "--malformed-kinds", ",".join(SKIPPABLE), "--close-mid-frame", "0.004", "--seed", "5"
    )  # fmt: skip
    run = locust_run(
        "messaging.py", "-u", "20", "-r", "20", "-t", "6s", "--delivery-timeout", "2", "--metrics-port", "0",
        "--host", server.url, "--profile", write_profile(STABLE),
    )  # fmt: skip
    assert run.summary is not None, run
    injected = {kind: server.injected(f"malformed_{kind}") for kind in SKIPPABLE}
    injected["truncated"] = server.injected("close_mid_frame")
    errors = run.summary["protocol_errors"]
    assert all(injected[kind] > 0 for kind in SKIPPABLE), (injected, run)
    assert injected["truncated"] > 0, (injected, run)
    assert errors["by_kind"] == injected, (errors, injected, run)
    assert errors["total"] == run.summary["malformed_frames"] == sum(injected.values())
    # a skipped frame leaves the connection up; a cut one is mended by reconnecting (the clock
    # probe's connection, cut too now and then, is no user's)
    connections = run.summary["connections"]
    assert 0 < connections["dropped"] <= injected["truncated"] and connections["reconnects"] > 0
    assert run.summary["operations"]["msg.send"]["count"] > 100
    assert "Traceback" not in run.output, run
    # one warning a second per kind at most, however many frames: the run lasts about 6 s
    for kind, lines in _log_lines(run.output).items():
        assert kind in PROTOCOL_ERROR_KINDS and lines <= 10, (kind, lines)
    assert sum(_log_lines(run.output).values()) < errors["total"], run
    assert "frame.malformed" in run.output and "bad_utf8" in run.output


def test_a_distributed_run_counts_the_protocol_errors_of_all_its_workers(backend, tmp_path, write_profile):
    """The master's summary sums every worker's counts by kind: together they equal what the backend injected."""
    server = backend(
        "--malformed", "0.08", "--malformed-kinds", ",".join(SKIPPABLE), "--close-mid-frame", "0.005", "--seed", "9"
    )  # fmt: skip
    cluster = Cluster(tmp_path, "messaging.py", "-u", "20", "-r", "20", "-t", "8s", "--delivery-timeout", "2",
                      "--metrics-port", "0", "--host", server.url, "--profile", write_profile(STABLE),
                      workers=[{}, {}])  # fmt: skip
    summary = cluster.wait()
    injected = {kind: server.injected(f"malformed_{kind}") for kind in SKIPPABLE}
    injected["truncated"] = server.injected("close_mid_frame")
    assert sum(injected.values()) > 20, (injected, summary["messages"])
    assert summary["protocol_errors"]["by_kind"] == {kind: n for kind, n in injected.items() if n}, summary
    assert summary["malformed_frames"] == summary["protocol_errors"]["total"] == sum(injected.values())
    assert summary["generator"]["workers"] == 2
    assert "Traceback" not in cluster.log() + cluster.log("worker0") + cluster.log("worker1")


def test_frames_over_the_clients_limit_end_their_connection_and_are_counted_as_oversized(
    backend, locust_run, write_profile
):
    """An oversized frame fails its connection with 1009, counted once per connection, and its user reconnects."""
    server = backend("--malformed", "0.004", "--malformed-kinds", "oversized", "--seed", "3")
    run = locust_run(
        "messaging.py", "-u", "8", "-r", "8", "-t", "5s", "--delivery-timeout", "2", "--metrics-port", "0",
        "--host", server.url, "--profile", write_profile(STABLE), timeout=180,
    )  # fmt: skip
    assert run.summary is not None, run
    oversized = run.summary["protocol_errors"]["by_kind"].get("oversized", 0)
    # The backend counts every one it writes; frames written after the first on a connection,
    # before the client's close reaches it, are read by no one: the client counts at most as many.
    assert 0 < oversized <= server.injected("malformed_oversized"), (oversized, run)
    assert run.summary["protocol_errors"]["total"] == oversized
    # every user's connection it ended closed with 1009; the clock probe's is no user's
    assert oversized - 1 <= run.summary["connections"]["close_codes"].get("1009", 0) <= oversized
    assert run.summary["connections"]["reconnects"] > 0
    assert "Traceback" not in run.output, run


# -- what only a server of the test's own can send --------------------------------------

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


#: what the server sends after a good frame, and the kind a client must count it as
RAW_FAULTS = {
    "reserved_bits": (server_frame(1, b"{}", first=0xC1), "bad_frame"),
    "unknown_opcode": (server_frame(3, b"x"), "bad_frame"),
    "masked": (b"\x81\x82abcd" + bytes(a ^ b for a, b in zip(b"hi", b"ab", strict=True)), "bad_frame"),
    "close_reason_not_utf8": (server_frame(8, struct.pack("!H", 1000) + b"\xff"), "bad_utf8"),
    "cut_in_the_payload": (server_frame(1, b'{"ev":"msg"}')[:6], "truncated"),
    "cut_in_the_header": (b"\x81\x7e\x01", "truncated"),
    "over_the_limit": (server_frame(1, b"x" * (2**24 + 1)), "oversized"),
}


@pytest.fixture
def raw_server():
    """A server that upgrades, waits for the client's first frame, then writes a good frame and one fault."""

    def serve(sock, _address) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += sock.recv(4096)
        path = request.split(b" ", 2)[1].decode()
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key"))  # fmt: skip
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")  # fmt: skip
        sock.recv(65536)
        fault, kind = RAW_FAULTS[path.strip("/")]
        sock.sendall(server_frame(1, b'{"ev":"receipt","room":"r1","seq":1,"reader":"bob"}') + fault)
        try:
            if kind != "truncated":
                # the client's close frame, then the server's side of the end
                with gevent.Timeout(5, False):
                    sock.recv(65536)
        finally:
            sock.close()

    server = gevent.server.StreamServer(("127.0.0.1", 0), serve)
    server.start()
    yield f"ws://127.0.0.1:{server.server_port}"
    server.stop(timeout=1)


@pytest.mark.parametrize("fault", sorted(RAW_FAULTS))
def test_a_fault_in_the_websocket_layer_ends_the_session_as_a_protocol_error_of_its_kind(raw_server, fault):
    """Broken headers, cut frames, close reasons not UTF-8 and frames over the limit reach on_malformed by kind."""
    seen: list[Malformed] = []
    closed: list[int | None] = []
    session = Session(
        f"{raw_server}/{fault}", ReferenceDriver(), Accounting().receiver(), reporter=lambda *_: None,
        ping_interval=None, on_malformed=seen.append, on_closed=closed.append, request_timeout=10,
    )  # fmt: skip
    session.connect()
    with pytest.raises(TransportError):
        # answered by a receipt (which the session takes) and the fault, never an ack
        session.echo("go", 0.0)
    with gevent.Timeout(10):
        while not closed:
            gevent.sleep(0.01)
    expected = RAW_FAULTS[fault][1]
    assert [event.kind for event in seen] == [expected], seen
    assert closed == [{"bad_frame": 1002, "bad_utf8": 1007, "oversized": 1009, "truncated": 1006}[expected]]
