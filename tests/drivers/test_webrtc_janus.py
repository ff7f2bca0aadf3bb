"""`loadgen webrtc`: real aiortc peers into a real Janus (Debian's package), each in a network namespace of its own.

Janus gathers no ICE candidates on loopback, so the test puts Janus in one fresh namespace and the
peers in another, joined by a veth pair; both namespaces, and Janus, go away after the module.
Creating namespaces needs root, as CI has: without it these tests fail saying so, never skip.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import own_server
from tests.support import ROOT, SCALE, free_port

#: test hosts on a veth pair whose two ends live in the namespaces the fixture creates (and deletes):
#: no route leads there from the host or out of them; nothing else in the tests uses 10.77.0.0/16
JANUS_ADDRESS = "10.77.1.1"
PEERS_ADDRESS = "10.77.1.2"
#: Janus' WebSocket port inside its own namespace, where nothing else listens
JANUS_PORT = 8188
DELAY = 1.0
RUN = ("--seconds", "3", "--publisher-delay", str(DELAY), "--timeout", "10")


@dataclass(frozen=True)
class Namespaces:
    peers: str
    url: str


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30 * SCALE)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"


@pytest.fixture(scope="module")
def janus_next_door(tmp_path_factory):
    """Janus in one new network namespace, reachable over a veth pair from a second one, where the peers run."""
    if os.geteuid() != 0:
        pytest.fail(
            "these tests create network namespaces (ip netns add), which needs root: run them as root, as CI does"
        )
    if shutil.which("ip") is None:
        pytest.fail("`ip` is missing: run scripts/test-deps (it installs Debian's iproute2)")
    token = secrets.token_hex(3)
    janus_ns, peers_ns = f"loadgen-janus-{token}", f"loadgen-peers-{token}"
    janus_link, peers_link = f"lgj{token}", f"lgp{token}"
    created: list[str] = []
    try:
        for namespace in (janus_ns, peers_ns):
            ip("netns", "add", namespace)
            created.append(namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", janus_ns, "link", "add", janus_link, "type", "veth", "peer", "name", peers_link, "netns", peers_ns)
        ip("-n", janus_ns, "addr", "add", f"{JANUS_ADDRESS}/30", "dev", janus_link)
        ip("-n", peers_ns, "addr", "add", f"{PEERS_ADDRESS}/30", "dev", peers_link)
        ip("-n", janus_ns, "link", "set", janus_link, "up")
        ip("-n", peers_ns, "link", "set", peers_link, "up")
        janus = {
            "JANUS_PORT": str(JANUS_PORT),
            "JANUS_RUN": str(tmp_path_factory.mktemp("janus-netns")),
            "JANUS_IP": JANUS_ADDRESS,
            "JANUS_ICE_INTERFACE": janus_link,
            "JANUS_NETNS": janus_ns,
        }
        with own_server("janus", janus):
            yield Namespaces(peers_ns, f"ws://{JANUS_ADDRESS}:{JANUS_PORT}")
    finally:
        for namespace in created:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30 * SCALE)


def webrtc(tmp_path: Path, *args: str, namespace: str | None = None) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run `loadgen webrtc` (inside ``namespace`` if given); its exit, output and JSON results."""
    results = tmp_path / f"webrtc-{secrets.token_hex(4)}.json"
    command = [sys.executable, "-m", "loadgen.cli", "webrtc", "--json", str(results), *args]
    if namespace is not None:
        command = ["ip", "netns", "exec", namespace, *command]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120 * SCALE)
    return done, json.loads(results.read_text()) if results.exists() else None


def assert_every_listener_heard(done: subprocess.CompletedProcess, result: dict | None, listeners: int) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    assert result is not None and result["passed"] and result["heard"] == listeners
    assert len(result["listeners"]) == listeners
    for row in result["listeners"]:
        assert row["heard"] and row["error"] is None, row
        assert row["first_audio_join_ms"] is not None and row["first_audio_seat_ms"] > 0
        # the listener joined before the publishers were started, at least the delay before
        assert row["first_audio_join_ms"] - row["first_audio_seat_ms"] >= DELAY * 1000 - 1
        received, lost = row["frames"]["received"], row["frames"]["lost"]
        assert received > 0 and row["loss_rate"] == round(lost / (received + lost), 6) and row["jitter_ms"] >= 0
        events = [event for _, event in row["timeline"]]
        assert events.index("join") < events.index("ice completed") < events.index("first audible")
    assert result["first_audio_seat_ms"] == max(row["first_audio_seat_ms"] for row in result["listeners"])
    assert result["frames"]["received"] == sum(row["frames"]["received"] for row in result["listeners"])
    for row in result["publishers"]:
        assert row["error"] is None and row["packets_sent"] > 0, row


def test_audiobridge_listeners_hear_the_publisher(janus_next_door, tmp_path):
    """Every AudioBridge listener hears the publisher's tone over real WebRTC, and loses nothing on the veth."""
    done, result = webrtc(tmp_path, "--url", janus_next_door.url, "--plugin", "audiobridge", "--listeners", "2", *RUN,
                          namespace=janus_next_door.peers)  # fmt: skip
    assert_every_listener_heard(done, result, 2)
    assert result["frames"]["lost"] == 0 and result["loss_rate"] == 0
    assert "2 of 2 listeners heard audio" in done.stdout


def test_videoroom_subscribers_hear_every_publisher(janus_next_door, tmp_path):
    """VideoRoom listeners subscribe to both publishers as they appear and get no more packets than were sent."""
    done, result = webrtc(tmp_path, "--url", janus_next_door.url, "--plugin", "videoroom", "--publishers", "2",
                          "--listeners", "2", *RUN, namespace=janus_next_door.peers)  # fmt: skip
    assert_every_listener_heard(done, result, 2)
    sent = sum(row["packets_sent"] for row in result["publishers"])
    for row in result["listeners"]:
        assert row["frames"]["lost"] == 0
        # VideoRoom relays packets one for one: a subscriber cannot receive more than the publishers sent
        assert 0 < row["frames"]["received"] <= sent
        assert any(event == "publishers seen: 2" for _, event in row["timeline"])


def test_dropped_packets_are_exactly_the_loss(janus_next_door, tmp_path):
    """With every 20th packet dropped on receipt, each listener loses exactly the dropped ones, in talk spurts too."""
    done, result = webrtc(tmp_path, "--url", janus_next_door.url, "--plugin", "audiobridge", "--listeners", "2",
                          "--drop-every", "20", "--talk", "0.4,0.2", *RUN, namespace=janus_next_door.peers)  # fmt: skip
    assert_every_listener_heard(done, result, 2)
    for row in result["listeners"]:
        frames = row["frames"]
        arrived = frames["received"] + frames["lost"]
        assert frames["lost"] == frames["dropped"] == arrived // 20 > 0
        assert row["loss_rate"] == round(frames["lost"] / arrived, 6)
    assert result["frames"]["lost"] == result["frames"]["dropped"] > 0


def test_help_explains_the_command_without_loading_aiortc():
    """`loadgen webrtc --help` describes the check and its namespaces without importing aiortc."""
    code = (
        "import sys\nfrom loadgen.cli import main\n"
        "try:\n    main(['webrtc', '--help'])\nexcept SystemExit:\n    pass\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('aiortc', 'aioice', 'av')]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60 * SCALE)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "network namespaces" in text and "--drop-every" in text and "pip install -e '.[webrtc]'" in text


def test_missing_aiortc_names_the_install_command():
    """Without aiortc the command exits 2 and says how to install the extra."""
    code = (
        "import sys\n"
        "class NoAiortc:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'aiortc':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoAiortc())\n"
        "from loadgen.cli import main\n"
        f"sys.exit(main(['webrtc', '--url', 'ws://127.0.0.1:{free_port()}']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60 * SCALE)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "pip install -e '.[webrtc]'" in done.stderr


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("--listeners", "0"), "--listeners"),
        (("--publishers", "9"), "--publishers"),
        (("--talk", "1"), "--talk"),
        (("--drop-every", "1"), "--drop-every"),
        (("--ice-server", "http://stun.example"), "--ice-server"),
        (("--url", "http://127.0.0.1:8188"), "--url"),
        (("--ice-credential-env", "LOADGEN_TEST_UNSET_TURN_SECRET"), "--ice-credential-env"),
    ],
)
def test_a_bad_option_exits_2_naming_it(tmp_path, args, option):
    """A bad option value exits 2 with a message naming the option, before anything connects."""
    done, result = webrtc(tmp_path, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert option in done.stderr and result is None


def test_nothing_listening_exits_3(tmp_path):
    """A Janus URL where nothing listens exits 3 naming the URL, and writes no results."""
    url = f"ws://127.0.0.1:{free_port()}"
    done, result = webrtc(tmp_path, "--url", url, "--timeout", "2")
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"cannot reach Janus at {url}" in done.stderr and result is None
