"""Room and inbox history kept on disk (``--store``) across graceful and hard restarts of the backend process."""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from loadgen.server import ServerConfig

STORE_FILE = "history.store"


def _port(server) -> str:
    return server.url.rstrip("/").rsplit(":", 1)[1]


def _restart(spawn, server, store: Path, signum: int, *flags: str):
    """Stop ``server`` with ``signum`` and start a backend on the same port and store; the new one."""
    server.stop(signum)
    return spawn("--port", _port(server), "--store", str(store), *flags)


def _history(c, **where) -> tuple[int, list[dict]]:
    reply = c.ok("history", since=0, **where)
    return reply["head"], reply["messages"]


def _closed_with(c, timeout) -> int:
    """Read ``c`` until the server closes it; the close code it sent."""
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(10_000):
            c.next_push(timeout)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


@pytest.mark.parametrize("flags", [(), ("--store-fsync",)], ids=["buffered", "fsync"])
def test_messages_acknowledged_before_a_kill_are_in_history_after_restart(spawn, connect_to, tmp_path, flags):
    """After SIGKILL and a restart on its store, history returns every acknowledged message as pushed; seq goes on."""
    store = tmp_path / "store"
    server = spawn("--store", str(store), *flags)
    sender, receiver = connect_to(server.url), connect_to(server.url)
    sender.enter("s", "r", seats=12)
    receiver.enter("m", "r")
    receiver.ok("seat.take", room="r", seat=3, ts=1.0)
    acked = [sender.post("r", body=f"m{i}", cseq=i)["seq"] for i in range(1, 31)]
    pushed = [p for p in receiver.fence() if p["ev"] == "msg"]
    assert acked == list(range(1, 31)) and [p["seq"] for p in pushed] == acked

    server = _restart(spawn, server, store, signal.SIGKILL, *flags)
    again = connect_to(server.url).enter("m")
    join = again.ok("join", room="r")
    assert join["head"] == 30
    assert [seat["user"] for seat in join["state"]["seats"]] == [None] * 12
    assert _history(again, room="r") == (30, pushed)
    assert again.post("r", body="after", cseq=31)["seq"] == 31
    assert "torn last record" not in server.log()


def test_a_graceful_restart_writes_queued_pushes_closes_with_1012_and_keeps_history(
    spawn, connect_to, tmp_path, timeout
):
    """SIGTERM with --store writes every queued delivery, closes with 1012, exits 0, and the restart keeps history."""
    store = tmp_path / "store"
    # Deliveries wait 300 ms, so they are still queued when the signal arrives.
    flags = ("--delay-ms", "300")
    server = spawn("--store", str(store), *flags)
    sender, receiver = connect_to(server.url), connect_to(server.url)
    sender.enter("s", "r")
    receiver.enter("m", "r")
    for i in range(1, 21):
        sender.post("r", body=f"m{i}", cseq=i)
    assert server.stop(signal.SIGTERM) == 0
    pushed = []
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(100):
            pushed.append(receiver.next_push(timeout))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert [p["seq"] for p in pushed if p["ev"] == "msg"] == list(range(1, 21))
    assert _closed_with(sender, timeout) == 1012

    server = spawn("--port", _port(server), "--store", str(store), *flags)
    again = connect_to(server.url).enter("m", "r")
    assert _history(again, room="r") == (20, [p for p in pushed if p["ev"] == "msg"])
    assert again.post("r", cseq=21)["seq"] == 21


def test_inbox_history_survives_a_kill_for_offline_and_online_recipients(spawn, connect_to, tmp_path):
    """Direct messages to an offline and an online user are in inbox history after SIGKILL; inbox seq goes on."""
    store = tmp_path / "store"
    server = spawn("--store", str(store))
    sender, online = connect_to(server.url).enter("s"), connect_to(server.url).enter("on")
    for i in range(1, 6):
        assert sender.ok("dm", to="off", cseq=i, ts=1.0, body=f"d{i}")["seq"] == i
        assert sender.ok("dm", to="on", cseq=i, ts=1.0, body=f"e{i}")["seq"] == i
    pushed = [p for p in online.fence() if p["ev"] == "dm"]
    assert len(pushed) == 5

    server = _restart(spawn, server, store, signal.SIGKILL)
    offline = connect_to(server.url)
    assert offline.login("off")["inbox_head"] == 5
    head, messages = _history(offline, inbox=True)
    assert head == 5
    assert [(m["ev"], m["seq"], m["from"], m["body"]) for m in messages] == [
        ("dm", i, "s", f"d{i}") for i in range(1, 6)
    ]
    back = connect_to(server.url).enter("on")
    assert _history(back, inbox=True) == (5, pushed)
    assert connect_to(server.url).enter("s2").ok("dm", to="off", cseq=1, ts=1.0, body="d6")["seq"] == 6


@pytest.mark.parametrize(
    "torn",
    [struct.pack("<II", 500, 0) + b"\x02" * 40, struct.pack("<II", 30, 12345) + b"\x02" * 30],
    ids=["cut-short", "bad-checksum"],
)
def test_a_torn_last_record_is_skipped_with_one_warning(spawn, connect_to, tmp_path, torn):
    """A last record cut short or failing its checksum is skipped with one warning; everything before it is back."""
    store = tmp_path / "store"
    server = spawn("--store", str(store))
    c = connect_to(server.url).enter("s", "r")
    for i in range(1, 11):
        c.post("r", body=f"m{i}", cseq=i)
    server.stop(signal.SIGKILL)
    with open(store / STORE_FILE, "ab") as file:
        file.write(torn)

    server = spawn("--port", _port(server), "--store", str(store))
    assert server.log().count("torn last record") == 1
    again = connect_to(server.url).enter("m", "r")
    head, messages = _history(again, room="r")
    assert (head, [m["body"] for m in messages]) == (10, [f"m{i}" for i in range(1, 11)])
    assert again.post("r", cseq=11)["seq"] == 11

    server = _restart(spawn, server, store, signal.SIGKILL)
    assert "torn last record" not in server.log()
    assert _history(connect_to(server.url).enter("m", "r"), room="r")[0] == 11


def test_damage_before_the_last_record_refuses_to_start_naming_the_file(spawn, connect_to, tmp_path, timeout):
    """A damaged record with records after it stops the start with exit 1 and a message naming the file and byte."""
    store = tmp_path / "store"
    server = spawn("--store", str(store))
    c = connect_to(server.url).enter("s", "r")
    for i in range(1, 4):
        c.post("r", body=f"m{i}", cseq=i)
    server.stop(signal.SIGKILL)
    path = store / STORE_FILE
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    # One more record after the damaged one: the damage is not at the end of the file.
    path.write_bytes(bytes(data) + data[len(data) // 2 :])

    done = _refused_start(store, timeout)
    assert done.returncode == 1
    assert f"{path}: damaged record at byte" in done.stderr


def _refused_start(store, timeout: float) -> subprocess.CompletedProcess:
    """A backend started on ``store`` that is expected to refuse it and exit."""
    command = [sys.executable, "-m", "loadgen.server", "--port", "0", "--store", str(store)]
    return subprocess.run(command, capture_output=True, text=True, timeout=6 * timeout)


def test_compaction_keeps_the_file_bounded_and_the_last_history_entries(spawn, connect_to, tmp_path):
    """Past a multiple of what it must keep the store is rewritten; after a kill the last --history entries are back."""
    store = tmp_path / "store"
    server = spawn("--store", str(store), "--history", "5")
    # Several senders, so none of them sends more requests at once than a connection may.
    senders = [connect_to(server.url).enter(f"s{n}", "r") for n in range(3)]
    body = "x" * 100
    frames = 1500
    for i in range(1, frames + 1):
        senders[i % 3].post("r", body=body, cseq=i)
    senders[0].ok("dm", to="d", cseq=1, ts=1.0, body="kept")
    smallest = len(f'{{"ev":"msg","room":"r","seq":1,"from":"s","cseq":1,"body":"{body}"}}')
    assert (store / STORE_FILE).stat().st_size < frames * smallest

    server = _restart(spawn, server, store, signal.SIGKILL, "--history", "5")
    again = connect_to(server.url).enter("d", "r")
    head, messages = _history(again, room="r")
    assert (head, [m["seq"] for m in messages]) == (frames, list(range(frames - 4, frames + 1)))
    assert [m["body"] for m in _history(again, inbox=True)[1]] == ["kept"]
    assert again.post("r", cseq=1)["seq"] == frames + 1


def test_a_store_in_use_by_another_backend_is_refused(spawn, tmp_path, timeout):
    """A second backend on the same --store directory exits 1 naming the directory."""
    store = tmp_path / "store"
    spawn("--store", str(store))
    done = _refused_start(store, timeout)
    assert done.returncode == 1
    assert f"{store} is in use by another reference backend" in done.stderr


def test_without_a_store_a_stop_closes_with_1001_and_history_is_gone(spawn, connect_to, timeout):
    """Without --store a graceful stop still closes with 1001 and a restart on the same port starts empty."""
    server = spawn()
    c = connect_to(server.url).enter("s", "r")
    c.post("r")
    assert server.stop(signal.SIGTERM) == 0
    assert _closed_with(c, timeout) == 1001
    server = spawn("--port", _port(server))
    assert _history(connect_to(server.url).enter("s", "r"), room="r") == (0, [])


def test_store_fsync_needs_a_store():
    """ServerConfig refuses store_fsync without store, naming it."""
    with pytest.raises(ValueError, match="store_fsync"):
        ServerConfig(store_fsync=True)
