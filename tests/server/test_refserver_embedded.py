"""The backend embedded in an asyncio program through its public API."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
import pytest
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect

import loadgen.server
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
