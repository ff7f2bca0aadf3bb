"""The reference backend's media relay: media.open, UDP binds, forwarding, top-K and injected loss, end to end.

Every test runs a real backend process on loopback and speaks to it with real WebSocket
clients and real UDP sockets. Packets are built here from the layout in docs/protocol.md,
not with the toolkit's own media code, so a mistake on one side cannot hide one on the other.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import pytest

from loadgen.server import ReferenceServer, ServerConfig, add_serve_arguments
from loadgen.server._cli import config_from_args
from tests.support import SCALE

TIMEOUT = 5.0 * SCALE
HEADER = struct.Struct("!BBBxIIIQQ")
AUDIO, BIND, BIND_ACK = 1, 2, 3
FRAME_US = 20_000
# Capture times and stream starts on a made-up clock: the relay forwards them without reading them.
START_US = 1_764_133_200_000_000
OUTCOMES = ("received", "forwarded", "not_seated", "not_selected", "malformed", "injected_loss")


def audio(ssrc: int, seq: int, level: int = 30, start: int = START_US, payload: bytes | None = None) -> bytes:
    """Frame ``seq`` of a stream: captured 20 ms after the one before, its payload naming it."""
    flags = 0x80 | (0x01 if seq == 0 else 0)
    body = payload if payload is not None else seq.to_bytes(4, "big") * 20
    return HEADER.pack(flags, AUDIO, level, ssrc, seq, (seq * 960) & 0xFFFFFFFF, start + seq * FRAME_US, start) + body


def parse(packet: bytes) -> tuple[int, int, int, int, bytes]:
    """(ssrc, sequence, capture time, level, payload) of a forwarded frame."""
    flags, kind, level, ssrc, seq, _, capture, _ = HEADER.unpack_from(packet)
    assert (flags & 0xC0, kind) == (0x80, AUDIO), packet[:2]
    return ssrc, seq, capture, level, packet[HEADER.size :]


@dataclass
class Member:
    """A logged-in member of a room with a media session (and, for transport udp, a bound UDP socket)."""

    client: Any
    ssrc: int
    token: str
    udp: socket.socket | None
    target: tuple[str, int] | None

    def publish(self, packet: bytes) -> None:
        if self.udp is not None:
            self.udp.sendto(packet, self.target)
        else:
            self.client.ws.send(packet)

    def hear(self) -> bytes:
        """The next media packet for this member, skipping the JSON pushes a WebSocket carries meanwhile."""
        if self.udp is not None:
            return self.udp.recv(2048)
        deadline = time.monotonic() + TIMEOUT
        while True:
            message = self.client.ws.recv(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(message, bytes):
                return message

    def heard_nothing_more(self) -> bool:
        assert self.udp is not None
        return not waiting(self.udp)


def waiting(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock`` right now, without blocking."""
    received = []
    sock.setblocking(False)
    try:
        while True:
            received.append(sock.recv(2048))
    except BlockingIOError:
        return received
    finally:
        sock.settimeout(TIMEOUT)


@pytest.fixture
def udp_sockets() -> Any:
    """Open loopback UDP sockets; all are closed after the test."""
    opened: list[socket.socket] = []

    def open_socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        opened.append(sock)
        # Room for every datagram a test sends before reading: the kernel would drop the rest.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(TIMEOUT)
        return sock

    yield open_socket
    for sock in opened:
        sock.close()


@pytest.fixture
def join_media(connect_to: Any, udp_sockets: Any) -> Any:
    """Log a user in, join a room (as host or onto a seat if asked), open a media session and bind it."""

    def join(
        server: Any, user: str, room: str, transport: str = "udp", seat: int | None = None, host: bool = False
    ) -> Member:
        client = connect_to(server.url).enter(user, room, as_host=host)
        if seat is not None:
            client.ok("seat.take", room=room, seat=seat, ts=0)
        opened = client.ok("media.open", room=room, transport=transport)
        if transport == "websocket":
            return Member(client, opened["ssrc"], opened["token"], None, None)
        sock = udp_sockets()
        target = ("127.0.0.1", opened["udp_port"])
        bind = bind_packet(opened["ssrc"], bytes.fromhex(opened["token"]))
        sock.sendto(bind, target)
        assert sock.recv(2048) == bind_ack(opened["ssrc"])
        return Member(client, opened["ssrc"], opened["token"], sock, target)

    return join


def bind_packet(ssrc: int, token: bytes) -> bytes:
    return HEADER.pack(0x80, BIND, 0, ssrc, 0, 0, 0, 0) + token


def bind_ack(ssrc: int) -> bytes:
    return HEADER.pack(0x80, BIND_ACK, 0, ssrc, 0, 0, 0, 0)


def frames(server: Any) -> dict[str, int]:
    metrics = server.metrics()
    return {outcome: int(metrics[("refserver_media_frames_total", (("outcome", outcome),))]) for outcome in OUTCOMES}


def settled(server: Any, until: Any = None, **expected: int) -> dict[str, int]:
    """The media frame counts once they reach ``expected`` and meet ``until``: datagrams are handled after sending."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        counts = frames(server)
        reached = all(counts[k] >= v for k, v in expected.items()) and (until is None or until(counts))
        if reached or time.monotonic() > deadline:
            return counts
        time.sleep(0.01)


def sessions(server: Any) -> int:
    return int(server.sample("refserver_media_sessions"))


def sessions_settle_at(server: Any, expected: int) -> int:
    """The open media sessions once they reach ``expected`` (a disconnect is noticed after the close)."""
    deadline = time.monotonic() + TIMEOUT
    while (count := sessions(server)) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


def test_media_open_acks_with_ssrc_token_and_udp_port(spawn, connect_to):
    """media.open acks room, ssrc, a 32-hex token and the UDP port the start-up line names; a second one replaces it."""
    server = spawn()
    assert frames(server) == dict.fromkeys(OUTCOMES, 0) and sessions(server) == 0
    alice = connect_to(server.url).enter("alice", "r")
    bob = connect_to(server.url).enter("bob", "r")
    opened = alice.ok("media.open", room="r", transport="udp")
    assert set(opened) == {"ev", "re", "room", "ssrc", "token", "udp_port"}
    assert opened["room"] == "r" and 0 < opened["ssrc"] < 2**32 and re.fullmatch("[0-9a-f]{32}", opened["token"])
    assert f"media on udp 127.0.0.1:{opened['udp_port']}," in server.log()
    over_websocket = bob.ok("media.open", room="r", transport="websocket")
    assert set(over_websocket) == {"ev", "re", "room", "ssrc", "token"}
    again = alice.ok("media.open", room="r", transport="udp")
    assert again["ssrc"] != opened["ssrc"] and again["token"] != opened["token"]
    assert sessions(server) == 2
    assert alice.error("media.open", room="elsewhere", transport="udp") == "not_member"
    assert alice.error("media.open", room="r", transport="sctp") == "bad_request"
    assert alice.error("media.open", room="r") == "bad_request"
    closed = alice.ok("media.close", room="r")
    assert set(closed) == {"ev", "re", "room"} and closed["room"] == "r"
    assert alice.error("media.close", room="elsewhere") == "not_member"
    assert sessions(server) == 1
    metrics = server.metrics()
    assert metrics[("refserver_requests_total", (("op", "media.open"),))] == 6
    assert metrics[("refserver_requests_total", (("op", "media.close"),))] == 2


def test_bind_is_acked_to_its_address_and_a_wrong_token_is_counted_malformed(spawn, connect_to, udp_sockets):
    """A bind with the session's token gets the header back as kind 3; a wrong or replaced token gets nothing."""
    server = spawn()
    client = connect_to(server.url).enter("u", "r")
    first = client.ok("media.open", room="r", transport="udp")
    second = client.ok("media.open", room="r", transport="udp")
    sock = udp_sockets()
    target = ("127.0.0.1", second["udp_port"])
    sock.sendto(bind_packet(second["ssrc"], b"\0" * 16), target)
    sock.sendto(bind_packet(first["ssrc"], bytes.fromhex(first["token"])), target)
    sock.sendto(bind_packet(second["ssrc"], bytes.fromhex(second["token"])), target)
    reply = sock.recv(2048)
    assert reply == bind_ack(second["ssrc"]) and len(reply) == 32
    assert settled(server, malformed=2)["malformed"] == 2


def test_a_seated_speakers_frames_reach_every_other_member_byte_for_byte(spawn, join_media):
    """Frames of a seated speaker, of the host and of a websocket speaker reach every other member, unchanged."""
    server = spawn()
    speaker = join_media(server, "speaker", "r", seat=0)
    host = join_media(server, "host", "r", host=True)
    listener = join_media(server, "listener", "r")
    web = join_media(server, "web", "r", transport="websocket")
    sent = [audio(speaker.ssrc, seq, level=seq % 128) for seq in range(20)]
    for packet in sent:
        speaker.publish(packet)
    for member in (host, listener, web):
        assert [member.hear() for _ in sent] == sent
    assert speaker.heard_nothing_more()
    from_host = [audio(host.ssrc, seq) for seq in range(5)]
    for packet in from_host:
        host.publish(packet)
    for member in (speaker, listener, web):
        assert [member.hear() for _ in from_host] == from_host
    web.client.ok("seat.take", room="r", seat=1, ts=0)
    from_web = [audio(web.ssrc, seq, payload=b"") for seq in range(5)]
    for packet in from_web:
        web.publish(packet)
    for member in (speaker, host, listener):
        assert [member.hear() for _ in from_web] == from_web
    counts = settled(server, received=30, forwarded=90)
    assert (counts["received"], counts["forwarded"], counts["not_seated"]) == (30, 90, 0)


def test_frames_of_a_user_off_the_seats_are_dropped_and_counted_not_seated(spawn, join_media):
    """A member that neither holds a seat nor hosts is not forwarded, over UDP or its websocket, and gets no error."""
    server = spawn()
    listener = join_media(server, "listener", "r")
    idle = join_media(server, "idle", "r")
    web = join_media(server, "web", "r", transport="websocket")
    speaker = join_media(server, "speaker", "r", seat=0)
    for seq in range(10):
        idle.publish(audio(idle.ssrc, seq))
    for seq in range(3):
        web.publish(audio(web.ssrc, seq))
    web.client.ok("time", t0=0)
    assert settled(server, not_seated=13)["not_seated"] == 13
    fence = audio(speaker.ssrc, 0)
    speaker.publish(fence)
    assert listener.hear() == fence
    counts = settled(server, forwarded=3)
    assert (counts["received"], counts["not_seated"], counts["forwarded"]) == (14, 13, 3)


def test_a_kicked_or_departed_speaker_is_no_longer_forwarded(spawn, connect_to, join_media):
    """Frames stop at a kick, flow again on a new seat, and stop for good once the speaker leaves the room."""
    server = spawn()
    host = connect_to(server.url).enter("host", "r", as_host=True)
    listener = join_media(server, "listener", "r")
    speaker = join_media(server, "speaker", "r", seat=3)
    speaker.publish(audio(speaker.ssrc, 0))
    assert parse(listener.hear())[1] == 0
    host.ok("seat.kick", room="r", seat=3, ts=0)
    speaker.publish(audio(speaker.ssrc, 1))
    assert settled(server, not_seated=1)["not_seated"] == 1
    speaker.client.ok("seat.take", room="r", seat=5, ts=0)
    speaker.publish(audio(speaker.ssrc, 2))
    assert parse(listener.hear())[1] == 2
    speaker.client.ok("leave", room="r")
    assert sessions(server) == 1
    speaker.client.ok("join", room="r")
    speaker.client.ok("seat.take", room="r", seat=5, ts=0)
    speaker.publish(audio(speaker.ssrc, 3))
    assert settled(server, not_seated=2)["not_seated"] == 2
    other = join_media(server, "other", "r", seat=0)
    fence = audio(other.ssrc, 0)
    other.publish(fence)
    assert listener.hear() == fence


def test_frames_from_an_address_other_than_the_bound_one_are_not_forwarded(spawn, join_media, udp_sockets):
    """Another socket sending a speaker's ssrc is dropped as not_seated and cannot bind over it without the token."""
    server = spawn()
    listener = join_media(server, "listener", "r")
    speaker = join_media(server, "speaker", "r", seat=0)
    spoofer = udp_sockets()
    for seq in range(5):
        spoofer.sendto(audio(speaker.ssrc, seq, payload=b"spoofed"), speaker.target)
    spoofer.sendto(bind_packet(speaker.ssrc, b"\xff" * 16), speaker.target)
    counts = settled(server, not_seated=5, malformed=1)
    assert counts == {**dict.fromkeys(OUTCOMES, 0), "received": 5, "not_seated": 5, "malformed": 1}
    genuine = audio(speaker.ssrc, 0)
    speaker.publish(genuine)
    assert listener.hear() == genuine
    assert waiting(spoofer) == [] and waiting(listener.udp) == []


def test_malformed_datagrams_are_counted_and_the_relay_goes_on(spawn, join_media, udp_sockets):
    """Short, wrong-version, unknown-kind, out-of-range and bad-bind datagrams count as malformed; frames go on."""
    server = spawn()
    listener = join_media(server, "listener", "r")
    speaker = join_media(server, "speaker", "r", seat=0)
    good = audio(speaker.ssrc, 0)
    broken = [
        b"",
        b"\x80",
        good[:31],
        bytes([0x40]) + good[1:],
        good[:1] + bytes([9]) + good[2:],
        good[:1] + bytes([BIND_ACK]) + good[2:],
        good[:2] + bytes([200]) + good[3:],
        bind_packet(speaker.ssrc, bytes.fromhex(speaker.token))[:40],
        bind_packet(12345, b"\0" * 16),
    ]
    stranger = udp_sockets()
    for datagram in broken:
        stranger.sendto(datagram, speaker.target)
    assert settled(server, malformed=len(broken))["malformed"] == len(broken)
    speaker.publish(good)
    assert listener.hear() == good
    counts = settled(server, forwarded=1)
    assert (counts["received"], counts["forwarded"], counts["malformed"]) == (1, 1, len(broken))


def test_binary_messages_that_are_not_own_websocket_audio_keep_getting_bad_request(spawn, join_media):
    """A binary message that is not an audio frame of the connection's own websocket session is a bad_request."""
    server = spawn()
    udp_speaker = join_media(server, "u", "r", seat=0)
    web = join_media(server, "w", "r", transport="websocket", seat=1)
    for message in (b"\x80\x01", audio(udp_speaker.ssrc, 0), HEADER.pack(0x80, BIND, 0, web.ssrc, 0, 0, 0, 0)):
        web.client.send(message)
        reply = web.client.reply(None)
        assert (reply["ev"], reply["code"]) == ("error", "bad_request")
    assert server.sample("refserver_requests_total", op="invalid") == 3
    assert frames(server)["received"] == 0


def test_top_k_forwards_the_k_loudest_and_keeps_sequences_contiguous(spawn, join_media):
    """With --media-top-k 2 only the two loudest are heard; a resumed stream jumps in capture time, not sequence."""
    server = spawn("--media-top-k", "2")
    assert "forwarding the 2 loudest per room" in server.log()
    listener = join_media(server, "listener", "r")
    a, b, c = (join_media(server, name, "r", seat=n) for n, name in enumerate("abc"))
    sent = {a.ssrc: 0, b.ssrc: 0, c.ssrc: 0}
    heard: dict[int, list[tuple[int, int]]] = {a.ssrc: [], b.ssrc: [], c.ssrc: []}

    def round_of(*levels: tuple[Member, int]) -> None:
        for member, level in levels:
            member.publish(audio(member.ssrc, sent[member.ssrc], level=level))
            sent[member.ssrc] += 1
        time.sleep(0.02)

    def record(packet: bytes) -> None:
        ssrc, seq, capture, _, _ = parse(packet)
        heard[ssrc].append((seq, (capture - START_US) // FRAME_US))

    def hear_until(condition: Any) -> None:
        while not condition():
            record(listener.udp.recv(2048))

    # A and B speak first and fill both slots; C, quieter, joins them and is never heard.
    for _ in range(10):
        round_of((a, 10), (b, 30))
    for _ in range(30):
        round_of((a, 10), (b, 30), (c, 60))
    hear_until(lambda: len(heard[a.ssrc]) == len(heard[b.ssrc]) == 40)
    assert heard[c.ssrc] == [] and settled(server, not_selected=30)["not_selected"] == 30
    # A falls silent and C grows loud: C takes A's slot at a pick.
    for _ in range(150):
        round_of((a, 127), (b, 30), (c, 0))
        for packet in waiting(listener.udp):
            record(packet)
        if len(heard[c.ssrc]) >= 10:
            break
    # A is loud again and C quiet: A comes back.
    resumed_at = len(heard[a.ssrc])
    for _ in range(150):
        round_of((a, 0), (b, 30), (c, 127))
        for packet in waiting(listener.udp):
            record(packet)
        if len(heard[a.ssrc]) >= resumed_at + 10:
            break
    # Each frame forwarded goes to the listener and the two other speakers; its copies are
    # counted right after the frame is, so a scrape after the last frame came in has them all.
    settled(server, received=sum(sent.values()))
    forwarded = frames(server)["forwarded"]
    hear_until(lambda: 3 * sum(map(len, heard.values())) == forwarded)

    # B was always selected: every frame, its sequence untouched.
    assert heard[b.ssrc] == [(seq, seq) for seq in range(sent[b.ssrc])]
    # A and C: sequences heard run 0, 1, 2 … with no gap, whatever was held back.
    for member in (a, c):
        assert [out for out, _ in heard[member.ssrc]] == list(range(len(heard[member.ssrc])))
    # A paused once: one jump in capture time, over exactly the frames not forwarded.
    captured = [frame for _, frame in heard[a.ssrc]]
    jumps = [later - earlier for earlier, later in zip(captured, captured[1:], strict=False) if later != earlier + 1]
    assert jumps == [sent[a.ssrc] - len(captured) + 1]
    # C was first heard well after it began (sequence 0 on the wire was its 30th frame or later), then steadily.
    captured = [frame for _, frame in heard[c.ssrc]]
    assert captured[0] >= 30 and captured == list(range(captured[0], captured[0] + len(captured)))
    counts = frames(server)
    dropped = sum(sent.values()) - sum(map(len, heard.values()))
    assert counts["not_selected"] == dropped
    assert counts["received"] == sum(sent.values()) and counts["forwarded"] == 3 * sum(map(len, heard.values()))


def test_injected_loss_drops_a_binomial_share_and_counts_exactly_what_never_arrived(spawn, join_media):
    """--media-loss 0.05 drops about 5 % of copies; injected_loss equals the copies the listeners never got."""
    server = spawn("--media-loss", "0.05", "--seed", "11")
    listeners = [join_media(server, "udp", "r"), join_media(server, "web", "r", transport="websocket")]
    speaker = join_media(server, "speaker", "r", seat=0)
    total = 600
    for seq in range(total):
        speaker.publish(audio(speaker.ssrc, seq))
        if seq % 20 == 19:
            # Paced, so the backend's own UDP receive buffer never overflows.
            time.sleep(0.02)
    counts = settled(server, until=lambda counts: counts["forwarded"] + counts["injected_loss"] >= 2 * total)
    assert counts["received"] == total and counts["forwarded"] + counts["injected_loss"] == 2 * total
    udp_listener, web_listener = listeners
    arrived: dict[str, list[int]] = {"udp": [], "web": []}
    deadline = time.monotonic() + TIMEOUT
    # Each listener's share of the forwarded copies is not known: read both until all have come.
    while sum(map(len, arrived.values())) < counts["forwarded"] and time.monotonic() < deadline:
        arrived["udp"].extend(parse(packet)[1] for packet in waiting(udp_listener.udp))
        try:
            message = web_listener.client.ws.recv(timeout=0.05)
        except TimeoutError:
            continue
        if isinstance(message, bytes):
            arrived["web"].append(parse(message)[1])
    for seqs in arrived.values():
        assert seqs == sorted(set(seqs))
    missing = sum(total - len(seqs) for seqs in arrived.values())
    # n = 1200 copies, p = 0.05: mean 60, sd 7.5; five sd either side.
    sd = math.sqrt(2 * total * 0.05 * 0.95)
    assert abs(counts["injected_loss"] - 2 * total * 0.05) < 5 * sd
    assert missing == counts["injected_loss"]


def test_the_session_ends_on_leave_logout_close_and_disconnect(spawn, join_media):
    """A listener that leaves, logs out, closes its session or disconnects gets no more frames and is not counted."""
    server = spawn()
    speaker = join_media(server, "speaker", "r", seat=0)
    stays = join_media(server, "stays", "r")
    leaver, logger, closer, dropper = (join_media(server, name, "r") for name in ("leaver", "logger", "closer", "drop"))
    assert sessions(server) == 6
    leaver.client.ok("leave", room="r")
    logger.client.ok("logout")
    closer.client.ok("media.close", room="r")
    dropper.client.ws.close()
    assert sessions_settle_at(server, 2) == 2
    for seq in range(5):
        speaker.publish(audio(speaker.ssrc, seq))
    assert [parse(stays.hear())[1] for _ in range(5)] == list(range(5))
    counts = settled(server, received=5)
    assert (counts["received"], counts["forwarded"]) == (5, 5)
    assert all(gone.heard_nothing_more() for gone in (leaver, logger, closer, dropper))


def test_delayed_copies_all_arrive_and_websocket_copies_keep_their_order(spawn, join_media):
    """With --media-delay-ms and --media-jitter-ms every copy is still delivered, the websocket ones in order."""
    server = spawn("--media-delay-ms", "30", "--media-jitter-ms", "20", "--seed", "3")
    assert "media-delay=30±20ms" in server.log()
    udp_listener = join_media(server, "udp", "r")
    web_listener = join_media(server, "web", "r", transport="websocket")
    speaker = join_media(server, "speaker", "r", seat=0)
    for seq in range(50):
        speaker.publish(audio(speaker.ssrc, seq))
    assert sorted(parse(udp_listener.hear())[1] for _ in range(50)) == list(range(50))
    assert [parse(web_listener.hear())[1] for _ in range(50)] == list(range(50))
    counts = settled(server, forwarded=100)
    assert (counts["forwarded"], counts["injected_loss"]) == (100, 0)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _can_bind_udp(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_stop_closes_the_media_port_and_a_restart_binds_it_again():
    """stop() releases the UDP port; starting again with --media-port given binds that same port."""
    port = _free_udp_port()
    server = ReferenceServer(ServerConfig(port=0, media_port=port))

    async def scenario() -> list[Any]:
        seen: list[Any] = []
        await server.start()
        seen.append(server.media_address)
        seen.append(_can_bind_udp(port))
        await server.stop()
        seen.append(_can_bind_udp(port))
        await server.start()
        seen.append(server.media_address)
        await server.stop()
        return seen

    assert asyncio.run(asyncio.wait_for(scenario(), 3 * TIMEOUT)) == [
        ("127.0.0.1", port),
        False,
        True,
        ("127.0.0.1", port),
    ]


def test_a_media_port_in_use_ends_the_start_naming_the_option(udp_sockets):
    """A --media-port another socket holds makes loadgen serve exit 1 with a message naming --media-port."""
    port = udp_sockets().getsockname()[1]
    command = [sys.executable, "-m", "loadgen.server", "--port", "0", "--media-port", str(port)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=6 * TIMEOUT)
    assert done.returncode == 1 and f"(--media-port) {port}" in done.stderr, done.stderr


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve")
    add_serve_arguments(parser)
    return parser


def test_media_options_default_to_off_and_reach_the_config():
    """The --media-* options default to a free port, every speaker and no impairment, and set the config."""
    defaults = config_from_args(_parser().parse_args([]))
    assert (defaults.media_port, defaults.media_top_k, defaults.media_loss) == (0, 0, 0.0)
    assert (defaults.media_delay_ms, defaults.media_jitter_ms) == (0.0, 0.0)
    flags = ["--media-port", "40000", "--media-top-k", "3", "--media-loss", "0.1"]
    config = config_from_args(_parser().parse_args([*flags, "--media-delay-ms", "20", "--media-jitter-ms", "5"]))
    assert (config.media_port, config.media_top_k, config.media_loss) == (40000, 3, 0.1)
    assert (config.media_delay_ms, config.media_jitter_ms) == (20.0, 5.0)
    assert "media-loss=0.1 media-delay=20±5ms" in config.describe_faults()


@pytest.mark.parametrize(
    "values",
    [
        ["--media-port", "70000"],
        ["--media-top-k", "-1"],
        ["--media-top-k", "two"],
        ["--media-loss", "1.5"],
        ["--media-delay-ms", "-5"],
        ["--media-jitter-ms", "soon"],
    ],
    ids=["port", "top-k-negative", "top-k-word", "loss", "delay", "jitter"],
)
def test_bad_media_values_are_usage_errors_naming_the_option(capsys, values):
    """A media option out of range exits 2 with a message naming the option."""
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(values)
    assert exited.value.code == 2
    assert values[0] in capsys.readouterr().err


@pytest.mark.parametrize(
    "options",
    [{"media_port": -1}, {"media_top_k": 1.5}, {"media_loss": 2.0}, {"media_delay_ms": -1.0}, {"media_jitter_ms": "x"}],
    ids=["port", "top-k", "loss", "delay", "jitter"],
)
def test_config_rejects_invalid_media_options_naming_them(options):
    """ServerConfig refuses a bad media option with a ValueError naming the field."""
    (name,) = options
    with pytest.raises(ValueError, match=name):
        ServerConfig(**options)
