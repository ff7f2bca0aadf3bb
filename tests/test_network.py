"""Weak networks: the delay model, outages, users' draws, the latency split, profiles, and the transport under it."""

from __future__ import annotations

import itertools
import random
import time

import gevent
import gevent.event
import pytest

from loadgen.accounting import new_histogram, percentiles_ms, record_seconds
from loadgen.drivers.base import Delivery
from loadgen.network import (
    BUILT_IN,
    UP_DELAYS_KEPT,
    Direction,
    Impairment,
    Lane,
    NetworkRun,
    Outages,
    link_for,
    region_rtt_ms,
    summary,
)
from loadgen.profile import NETWORK_CONDITIONS, REGIONS, LinkProfile, NetworkProfile, NetworkShare, RegionShare
from loadgen.transport import WebSocketClient
from tests.support import profile_error
from tests.transport import conftest as transport

# the transport tests' WebSocket peer: a real server in a process of its own
peer = transport.peer
tls_ca = transport.tls_ca
scaled = transport.scaled


def fixed(latency: float) -> Direction:
    return Direction(latency, 0.0, 0.0, 0.2 + 2 * latency, 0.0)


class Scripted(random.Random):
    """A random source whose ``random()`` answers are given in advance: which frames are lost."""

    def __init__(self, answers: list[float]) -> None:
        super().__init__(0)
        self.answers = iter(answers)

    def random(self) -> float:
        return next(self.answers)


# -- the delay model ----------------------------------------------------------------------


def test_a_fixed_latency_is_added_exactly_to_every_frame():
    """Without jitter, loss or a cap, every frame is delayed by exactly the latency, whenever it is sent."""
    lane = Lane(fixed(0.1))
    rng = random.Random(1)
    assert [lane.delay(now, 100, rng) for now in (5.0, 5.001, 5.5, 9.0)] == [0.1] * 4


def test_frames_keep_their_order_under_jitter_and_loss():
    """However jitter and resends spread them, frames arrive in the order they were sent."""
    lane = Lane(Direction(0.05, 0.04, 0.05, 0.3, 0.0))
    rng = random.Random(7)
    arrivals = [now + lane.delay(now, 60, rng) for now in (n * 0.003 for n in range(5000))]
    # to the float's last digit: each arrival is computed from its own send time
    assert all(later >= earlier - 1e-12 for earlier, later in itertools.pairwise(arrivals))
    delays = [arrival - n * 0.003 for n, arrival in enumerate(arrivals)]
    assert min(delays) >= 0.01 - 1e-12 and max(delays) >= 0.3


def test_bandwidth_makes_each_frame_wait_behind_those_queued_before_it():
    """At 8 kbit/s (a millisecond a byte) frames sent together leave one after another, then the latency."""
    lane = Lane(Direction(0.02, 0.0, 0.0, 0.3, 8 / 8000))
    rng = random.Random(1)
    delays = [lane.delay(10.0, size, rng) for size in (100, 200, 50)]
    assert delays == pytest.approx([0.1 + 0.02, 0.3 + 0.02, 0.35 + 0.02], abs=1e-9)
    # once the link is idle again a frame waits for its own bytes only
    assert lane.delay(11.0, 40, rng) == pytest.approx(0.04 + 0.02, abs=1e-9)


def test_a_lost_frame_waits_the_retransmission_timeout_and_holds_up_those_behind_it():
    """A lost frame arrives an RTO later (doubled for each lost resend); a frame sent after it waits for it."""
    link = link_for(LinkProfile(up_latency_ms=50.0, down_latency_ms=30.0, up_loss=0.5))
    assert link.up.rto == pytest.approx(0.2 + 0.08)
    lane = Lane(link.up)
    # first frame: lost, its resend arrives; second: arrives at once; third: lost, resend lost, then arrives
    rng = Scripted([0.1, 0.9, 0.9, 0.1, 0.2, 0.9])
    assert lane.delay(0.0, 10, rng) == pytest.approx(0.05 + 0.28)
    assert lane.delay(0.01, 10, rng) == pytest.approx(0.05 + 0.28 - 0.01)
    assert lane.delay(1.0, 10, rng) == pytest.approx(0.05 + 0.28 + 0.56)


def test_loss_delays_the_configured_share_of_frames():
    """With 3 % loss, 3 % of frames sent far apart get the retransmission delay."""
    lane = Lane(Direction(0.04, 0.0, 0.03, 0.3, 0.0))
    rng = random.Random(11)
    delays = [lane.delay(n * 10.0, 100, rng) for n in range(40_000)]
    late = sum(1 for d in delays if d > 0.04)
    assert late / len(delays) == pytest.approx(0.03, rel=0.06)


def test_offline_spells_and_handovers_come_at_their_configured_rates():
    """Over a long span, spells start once per mean interval plus mean spell, last min..max, handovers as set."""
    condition = LinkProfile(offline_every_s=120.0, offline_min_s=10.0, offline_max_s=30.0, handover_every_s=300.0)
    outages = Outages(condition, random.Random(3))
    span = 3_000_000.0
    spells, at = [], 0.0
    while (spell := outages.next_offline(at))[0] < span:
        spells.append(spell)
        at = spell[0] + spell[1]
    handovers, at = 0, 0.0
    while (at := outages.next_handover(at)) < span:
        handovers += 1
    assert len(spells) == pytest.approx(span / (120 + 20), rel=0.03)
    assert all(10.0 <= lasting <= 30.0 for _, lasting in spells)
    assert sum(lasting for _, lasting in spells) / len(spells) == pytest.approx(20.0, rel=0.02)
    assert handovers == pytest.approx(span / 300, rel=0.03)
    assert Outages(LinkProfile(), random.Random(3)).next_offline(0.0) is None


# -- conditions and regions --------------------------------------------------------------


def test_every_built_in_condition_is_named_in_the_profile_schema():
    """The built-ins are the names the profile accepts; good adds nothing, every other adds each way."""
    assert tuple(BUILT_IN) == NETWORK_CONDITIONS
    assert not link_for(BUILT_IN["good"]).impaired
    for name in NETWORK_CONDITIONS[1:]:
        link = link_for(BUILT_IN[name])
        assert link.up is not None and link.down is not None, name
    assert BUILT_IN["elevator"].offline_every_s and BUILT_IN["subway"].offline_every_s


def test_regions_add_half_their_round_trip_each_way():
    """Every pair of regions has a round trip, the same both ways, and a user there gets half of it each way."""
    for a in REGIONS:
        for b in REGIONS:
            assert region_rtt_ms(a, b) == region_rtt_ms(b, a) >= 0
    assert region_rtt_ms("eu-west", "eu-west") == 0
    link = link_for(LinkProfile(up_latency_ms=10.0), region_rtt_ms("eu-west", "us-east"))
    assert (link.up.latency, link.down.latency) == pytest.approx((0.010 + 0.0405, 0.0405))


def test_users_get_their_condition_and_region_from_their_id_by_the_shares():
    """The same user id always gets the same draw, and over many users the shares hold."""
    profile = NetworkProfile(
        mix=(NetworkShare("4g", 0.5), NetworkShare("weak-3g", 0.2)),
        regions=(RegionShare("eu-west", 0.3), RegionShare("far", 0.1, rtt_ms=300.0)),
    )
    first, again = NetworkRun(profile, time.time), NetworkRun(profile, time.time)
    draws = [first.assign(f"u{n}") for n in range(20_000)]
    assert draws[:50] == [again.assign(f"u{n}") for n in range(50)]
    assert first.conditions_used["4g"] / 20_000 == pytest.approx(0.5, abs=0.015)
    assert first.conditions_used["weak-3g"] / 20_000 == pytest.approx(0.2, abs=0.015)
    assert first.conditions_used["good"] / 20_000 == pytest.approx(0.3, abs=0.015)
    assert first.regions_used["us-east"] / 20_000 == pytest.approx(0.6, abs=0.015)
    far = next(link for condition, region, link in draws if (condition, region) == ("good", "far"))
    assert (far.up.latency, far.down.latency) == (0.15, 0.15)


# -- the split ----------------------------------------------------------------------------


def delivery(sender: str, sent_at: float) -> Delivery:
    return Delivery("r1", 1, sender, 1, sent_at, sent_at)


def test_added_latency_is_the_senders_up_delay_plus_the_receivers_down_delay():
    """A fixed sender's up-delay is known from its link, a jittered one's from the table; the rest is the backend's."""
    profile = NetworkProfile(
        mix=(NetworkShare("steady", 0.5), NetworkShare("shaky", 0.5)),
        profiles={"steady": LinkProfile(up_latency_ms=30.0), "shaky": LinkProfile(up_latency_ms=30.0,
                                                                                  up_jitter_ms=20.0)},
    )  # fmt: skip
    clock = [1000.0]
    network = NetworkRun(profile, lambda: clock[0])
    steady = next(f"u{n}" for n in range(100) if network.assign(f"u{n}")[0] == "steady")
    shaky = next(f"v{n}" for n in range(100) if network.assign(f"v{n}")[0] == "shaky")
    network.record_up((shaky, 999.5), 0.0375)
    clock[0] = 999.5 + 0.25
    network.split(delivery(steady, 999.5), 0.02)
    network.split(delivery(shaky, 999.5), 0.02)
    network.split(delivery(shaky, 999.4), 0.02)  # a message whose up-delay nobody recorded
    network.split(delivery("w1-u3", 999.5), 0.02)  # a sender in another process
    assert network.unknown_split == 2
    added, rest = new_histogram(), new_histogram()
    for up in (0.03, 0.0375):
        record_seconds(added, round(up + 0.02, 6))
        record_seconds(rest, clock[0] - 999.5 - round(up + 0.02, 6))
    block = summary([network.snapshot()])
    assert block["added_latency_ms"] == percentiles_ms(added)
    assert block["backend_latency_ms"] == percentiles_ms(rest)
    assert (block["split"], block["unknown_split"]) == (2, 2)


def test_the_up_delay_table_keeps_the_latest_entries_only():
    """The table is bounded: the oldest entry goes once it is full."""
    network = NetworkRun(NetworkProfile(), time.time)
    for n in range(UP_DELAYS_KEPT + 1):
        network.record_up(("u1", float(n)), 0.01)
    network.links["u1"] = link_for(LinkProfile(up_jitter_ms=5.0))
    assert network.up_delay("u1", 0.0) is None
    assert network.up_delay("u1", float(UP_DELAYS_KEPT)) == 0.01


def test_workers_figures_add_up_in_the_summary():
    """The summary of two processes' snapshots counts both: users, splits, spells and handovers."""
    one, two = NetworkRun(NetworkProfile(), time.time), NetworkRun(NetworkProfile(), time.time)
    one.assign("w0-u0")
    two.assign("w1-u0")
    one.offline_spells, two.handovers, two.unknown_split = 2, 3, 4
    block = summary([one.snapshot(), two.snapshot()])
    assert block["profiles"] == {"good": 2} and block["regions"] == {"us-east": 2}
    assert (block["offline_spells"], block["handovers"], block["unknown_split"]) == (2, 3, 4)


# -- the profile section ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, where",
    [
        ("network:\n  mix:\n    - {profile: 4g, share: 0.7}\n    - {profile: wifi, share: 0.4}\n",
         ":4: network.mix[1].share: the shares of network.mix add up to more than 1"),
        ("network:\n  mix:\n    - profile: 5g\n      share: 0.1\n", ":3: network.mix[0].profile: must be one of good"),
        ("network:\n  mix:\n    - {profile: 4g, share: 0.1}\n    - {profile: 4g, share: 0.1}\n",
         ":4: network.mix[1].profile: 4g is listed twice"),
        ("network:\n  profiles:\n    mine:\n      up_latency_ms: -3\n",
         ":4: network.profiles.mine.up_latency_ms: must be at least 0"),
        ("network:\n  profiles:\n    mine: {rto_ms: 50}\n", ":3: network.profiles.mine.rto_ms: must be at least 200"),
        ("network:\n  profiles:\n    mine: {up_loss: 0.9}\n", ":3: network.profiles.mine.up_loss: must be at most 0.5"),
        ("network:\n  profiles:\n    mine: {offline_min_s: 5, offline_max_s: 2}\n",
         ":3: network.profiles.mine.offline_max_s: must be at least offline_min_s"),
        ("network:\n  profiles:\n    wifi: {}\n", ":3: network.profiles.wifi: is the name of a built-in"),
        ("network:\n  regions:\n    - {region: mars, share: 0.2}\n", ":3: network.regions[0].region: has no typical"),
        ("network:\n  regions:\n    - {region: eu-west, share: -0.2}\n",
         ":3: network.regions[0].share: must be at least 0"),
        ("network:\n  backend_region: moon\n  regions:\n    - {region: eu-west, share: 0.2}\n",
         ":2: network.backend_region: must be one of"),
    ],
)  # fmt: skip
def test_bad_network_sections_name_file_line_and_key(tmp_path, text, where):
    """Shares over 1, unknown names and out-of-range values are reported with the file, line and key."""
    assert where in profile_error(tmp_path, text)


def test_a_network_section_reads_its_own_profiles_and_regions(tmp_path):
    """Custom conditions by name, mix and regions come back as written; other knobs keep their defaults."""
    from loadgen.profile import load_profile

    path = tmp_path / "p.yaml"
    path.write_text(
        "network:\n  mix: [{profile: lift, share: 0.25}]\n  regions: [{region: mars, share: 0.5, rtt_ms: 600}]\n"
        "  profiles:\n    lift: {up_latency_ms: 20, offline_every_s: 60}\n"
    )
    network = load_profile(path).network
    assert network.mix == (NetworkShare("lift", 0.25),)
    assert network.regions == (RegionShare("mars", 0.5, 600.0),)
    assert network.profiles == {"lift": LinkProfile(up_latency_ms=20.0, offline_every_s=60.0)}
    assert load_profile(None).network is None


# -- the transport under it ---------------------------------------------------------------


class Recorder:
    """What an impaired connection delivered, with the delay it gave each, in the order of events."""

    def __init__(self, network: NetworkRun | None = None) -> None:
        self.network = network
        self.events: list[tuple[str, object, float]] = []
        self.arrived = gevent.event.Event()
        self.greenlets: set = set()

    def on_message(self, payload: bytes, binary: bool) -> None:
        self.greenlets.add(gevent.getcurrent())
        self.events.append(("message", payload, self.network.delivering if self.network else 0.0))
        self.arrived.set()

    def on_close(self, closed) -> None:
        self.events.append(("close", closed.code, 0.0))
        self.arrived.set()

    def messages(self) -> list[bytes]:
        return [payload for kind, payload, _ in self.events if kind == "message"]

    def wait_for(self, count: int, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + scaled(seconds)
        while len(self.events) < count:
            assert time.monotonic() < deadline, self.events
            self.arrived.clear()
            self.arrived.wait(0.05)


def impaired(url: str, condition: LinkProfile, seed: int = 1) -> tuple[WebSocketClient, Impairment, Recorder]:
    network = NetworkRun(NetworkProfile(), time.time)
    recorder = Recorder(network)
    client = WebSocketClient.connect(url, on_message=recorder.on_message, on_close=recorder.on_close,
                                     timeout=scaled(10))  # fmt: skip
    impairment = Impairment(link_for(condition), random.Random(seed), network)
    client.impair(impairment)
    return client, impairment, recorder


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + scaled(seconds)
    while not condition():
        assert time.monotonic() < deadline
        gevent.sleep(0.01)


def ended(impairment: Impairment) -> bool:
    """Whether the impairment's greenlet is gone once it had its turn to see the connection's end."""
    gevent.sleep(0)
    return not impairment.running and impairment.held == 0


def echo_round_trip(client: WebSocketClient, recorder: Recorder, body: bytes) -> float:
    before = len(recorder.events)
    started = time.perf_counter()
    client.send_text(body)
    recorder.wait_for(before + 1)
    return time.perf_counter() - started


def test_latency_added_each_way_adds_up_in_an_echo_round_trip(peer):
    """100 ms up and 50 ms down make an echo round trip 150 ms longer, each echo delivered 50 ms late."""
    plain_recorder = Recorder()
    plain = WebSocketClient.connect(peer.url("/echo"), on_message=plain_recorder.on_message,
                                    on_close=plain_recorder.on_close, timeout=scaled(10))  # fmt: skip
    client, impairment, recorder = impaired(peer.url("/echo"), LinkProfile(up_latency_ms=100, down_latency_ms=50))
    try:
        plain_rtt = min(echo_round_trip(plain, plain_recorder, b"p%d" % n) for n in range(3))
        rtts = [echo_round_trip(client, recorder, b"i%d" % n) for n in range(3)]
    finally:
        plain.abort()
        client.abort()
    assert min(rtts) >= 0.150
    assert min(rtts) < 0.150 + plain_rtt + scaled(0.25), (rtts, plain_rtt)
    assert [(payload, delay) for _, payload, delay in recorder.events[:3]] == [(b"i0", 0.05), (b"i1", 0.05),
                                                                              (b"i2", 0.05)]  # fmt: skip
    assert ended(impairment)


def test_messages_keep_their_order_both_ways_through_jitter_and_loss(peer):
    """Two hundred echoes through a jittery, lossy link come back complete and in order, from one greenlet."""
    condition = LinkProfile(up_latency_ms=20, down_latency_ms=20, up_jitter_ms=15, down_jitter_ms=15, up_loss=0.05,
                            down_loss=0.05)  # fmt: skip
    client, impairment, recorder = impaired(peer.url("/echo"), condition, seed=5)
    try:
        sent = [b"m%d" % n for n in range(200)]
        for body in sent:
            client.send_text(body)
        recorder.wait_for(len(sent), seconds=30)
    finally:
        client.close()
    assert recorder.messages() == sent
    # one greenlet delivered them all, the connection's own, and it ended with the connection
    assert len(recorder.greenlets) == 1
    assert ended(impairment)


def test_what_the_backend_sent_before_its_close_is_delivered_before_the_close(peer):
    """Echoes still held when the closing handshake ends are delivered first, each after its delay, then the close."""
    client, impairment, recorder = impaired(peer.url("/echo"), LinkProfile(down_latency_ms=300, down_jitter_ms=100))
    sent = [b"e%d" % n for n in range(20)]
    for body in sent:
        client.send_text(body)
    wait_until(lambda: impairment.held == len(sent))
    client.close()
    assert recorder.messages() == sent
    assert recorder.events[-1][:2] == ("close", 1000)
    assert all(0.2 <= delay <= 0.4 + 1e-9 for kind, _, delay in recorder.events if kind == "message")
    assert ended(impairment)


def test_an_aborted_connection_loses_what_its_link_held(peer):
    """A link lost on our side loses the echo it still held, and its greenlet ends with it."""
    client, impairment, recorder = impaired(peer.url("/echo"), LinkProfile(down_latency_ms=2000))
    client.send_text(b"never seen")
    wait_until(lambda: impairment.held == 1)
    assert impairment.running
    client.abort()
    assert recorder.messages() == [] and recorder.events[-1][0] == "close"
    assert ended(impairment)
