"""The backend embedded in an asyncio program through its public API."""

from __future__ import annotations

import asyncio
import logging
import struct
import subprocess
import sys

import orjson
import pytest
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import loadgen.server
from loadgen.embedded import BackendStartError, EmbeddedBackend
from loadgen.server import ReferenceServer, ServerConfig


def test_public_api_is_what_all_lists():
    """The package exports exactly the names in __all__."""
    public = {name for name in vars(loadgen.server) if not name.startswith("_")}
    assert set(loadgen.server.__all__) == public


def test_embedded_server_binds_a_free_port_and_counts_into_the_given_registry(tmp_path, timeout):
    """start() returns the bound address and writes the port file; faults reach .injected and the registry."""
    registry = CollectorRegistry()
    port_file = tmp_path / "port"
    server = ReferenceServer(ServerConfig(port=0, port_file=str(port_file), drop=1.0, seed=1), registry=registry)

    async def scenario() -> None:
        host, port = await server.start()
        assert host == "127.0.0.1" and port > 0
        assert port_file.read_text().strip() == str(port)
        async with connect(server.url, proxy=None) as sender, connect(server.url, proxy=None) as receiver:
            for ws, name in ((sender, "s"), (receiver, "r")):
                await ws.send(orjson.dumps({"op": "login", "id": 1, "user": name, "token": "t"}).decode())
                await ws.send(orjson.dumps({"op": "join", "id": 2, "room": "x"}).decode())
                for _ in range(2):
                    assert orjson.loads(await asyncio.wait_for(ws.recv(), timeout))["ev"] == "ack"
            await sender.send(
                orjson.dumps({"op": "send", "id": 3, "room": "x", "cseq": 1, "ts": 0, "body": "b"}).decode()
            )
            assert orjson.loads(await asyncio.wait_for(sender.recv(), timeout))["ev"] == "ack"
        await server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 3 * timeout))
    assert server.injected == {"drop": 1, "duplicate": 0, "reorder": 0, "disconnect": 0}
    assert registry.get_sample_value("refserver_injected_faults_total", {"kind": "drop"}) == 1
    assert registry.get_sample_value("refserver_messages_total", {"kind": "room"}) == 1
    assert not port_file.exists()


@pytest.mark.parametrize(
    "options",
    [{"drop": 2.0}, {"delay_ms": -1.0}, {"port": 70000}, {"history": -1}, {"seed": "x"}],
    ids=["drop", "delay", "port", "history", "seed"],
)
def test_config_rejects_invalid_options_naming_them(options):
    """ServerConfig refuses an invalid option with a ValueError naming it."""
    with pytest.raises(ValueError, match=next(iter(options))):
        ServerConfig(**options)


def test_server_imports_nothing_from_the_client_side(timeout):
    """Importing and running the backend's module loads neither the client side, Locust nor gevent."""
    probe = (
        "import sys, loadgen.server, loadgen.server.__main__\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('locust', 'gevent')\n"
        "             or m.startswith(('loadgen.transport', 'loadgen.drivers', 'loadgen.scenarios')))\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=3 * timeout)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


@pytest.mark.parametrize(
    "options",
    [
        {"bugs": {"seat-teleport": 1.0}},
        {"bugs": {"pk-score-skew": 2.0}},
        {"bugs": "pk-score-skew"},
        {"ring_timeout": 0},
        {"ring_timeout": float("inf")},
    ],
    ids=["bug-kind", "bug-p", "bugs-string", "ring-zero", "ring-inf"],
)
def test_config_rejects_invalid_bugs_and_ring_timeouts_naming_them(options):
    """ServerConfig refuses unknown bug kinds, probabilities outside 0-1 and non-positive ring timeouts."""
    with pytest.raises(ValueError, match=next(iter(options))):
        ServerConfig(**options)


def test_embedded_server_counts_injected_bugs_apart_from_delivery_faults(timeout):
    """A bug fired on an embedded server shows in injected_bugs and the registry, not in injected."""
    registry = CollectorRegistry()
    server = ReferenceServer(ServerConfig(port=0, bugs={"seat-version-regress": 1.0}), registry=registry)

    async def scenario() -> None:
        await server.start()
        async with connect(server.url, proxy=None) as ws:
            for i, frame in enumerate(
                [
                    {"op": "login", "user": "u", "token": "t"},
                    {"op": "join", "room": "r"},
                    {"op": "seat.take", "room": "r", "seat": 0, "ts": 0},
                ]
            ):
                await ws.send(orjson.dumps({"id": i, **frame}).decode())
            replies = [orjson.loads(await asyncio.wait_for(ws.recv(), timeout)) for _ in range(4)]
            assert [(r["ev"], r.get("version")) for r in replies[2:]] == [("seats", -1), ("ack", 1)]
        await server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 3 * timeout))
    assert server.config.bugs == (("seat-version-regress", 1.0),)
    assert server.injected_bugs == {"seat-double-grant": 0, "seat-version-regress": 1, "pk-score-skew": 0}
    assert server.injected == {"drop": 0, "duplicate": 0, "reorder": 0, "disconnect": 0}
    assert registry.get_sample_value("refserver_injected_faults_total", {"kind": "seat-version-regress"}) == 1


@pytest.mark.parametrize("hard", [True, False], ids=["SIGKILL", "SIGTERM"])
def test_embedded_backend_restart_keeps_its_port_and_its_history(connect_to, caplog, timeout, hard):
    """EmbeddedBackend.restart comes back on its port with every acknowledged message and logs how long it was away."""
    backend = EmbeddedBackend()
    try:
        url = backend.start()
        port, pid = backend.port, backend.process.pid
        c = connect_to(url).enter("s", "r")
        for i in range(1, 11):
            c.post("r", body=f"m{i}", cseq=i)
        with caplog.at_level(logging.INFO, logger="loadgen.embedded"):
            backend.restart(hard=hard)
        assert (backend.url, backend.port) == (url, port) and backend.process.pid != pid
        with pytest.raises(ConnectionClosed) as closed:
            c.frame(timeout)
        # Killed, it sends no close frame; stopped, it says it is restarting.
        assert (closed.value.rcvd is None) if hard else (closed.value.rcvd.code == 1012)
        again = connect_to(url).enter("m", "r")
        reply = again.ok("history", room="r", since=0)
        assert (reply["head"], [m["body"] for m in reply["messages"]]) == (10, [f"m{i}" for i in range(1, 11)])
        assert again.post("r", cseq=11)["seq"] == 11
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Restarted the reference backend")]
        assert len(lines) == 1
        signal_name = "SIGKILL" if hard else "SIGTERM"
        assert lines[0].startswith(f"Restarted the reference backend ({signal_name}) on port {port}: away ")
    finally:
        backend.close()


def test_embedded_backend_restart_that_cannot_start_raises_with_the_log_tail(connect_to):
    """A restart whose backend refuses its store raises BackendStartError carrying the backend's own error."""
    backend = EmbeddedBackend()
    try:
        connect_to(backend.start()).enter("s", "r").post("r")
        path = backend.store / "history.store"
        magic = path.read_bytes().split(b"\n", 1)[0] + b"\n"
        damaged = path.with_suffix(".damaged")
        # A record failing its checksum with bytes after it; renamed in, so the running backend keeps its own file.
        damaged.write_bytes(magic + struct.pack("<II", 4, 0) + b"abcd" + b"more")
        damaged.replace(path)
        with pytest.raises(BackendStartError, match="damaged record at byte"):
            backend.restart(hard=True)
    finally:
        backend.close()


def test_embedded_backend_restart_lets_other_greenlets_run(timeout):
    """Under gevent's monkey-patching a restart in one greenlet leaves the others running while it waits."""
    probe = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import gevent, time\n"
        "from loadgen.embedded import EmbeddedBackend\n"
        "backend = EmbeddedBackend(); backend.start()\n"
        "ticks = []\n"
        "def tick():\n"
        "    while True:\n"
        "        ticks.append(1); time.sleep(0.01)\n"
        "ticker = gevent.spawn(tick); gevent.sleep(0)\n"
        "before = len(ticks)\n"
        "gevent.spawn(backend.restart, True).get()\n"
        "during = len(ticks) - before\n"
        "ticker.kill(); backend.close()\n"
        "print(during)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=12 * timeout)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) > 1
