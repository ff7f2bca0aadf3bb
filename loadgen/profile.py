"""Load profiles: YAML read into frozen dataclasses, checked once, errors naming file, line and key.

A profile holds one section per scenario; a run reads the section of its own scenario and
ignores the others, so one file can describe a whole review::

    messaging:
      rooms: 20
      post_rate: 1.0

Each knob is a dataclass field whose metadata gives its bounds and its one-line help, which
also feed docs/profile.md.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from loadgen.errors import ConfigError, compose_yaml


class ProfileError(ConfigError):
    """A profile that cannot be used; the message names file, line and key."""


def knob(default, help: str, minimum: float | None = None, maximum: float | None = None):
    return field(default=default, metadata={"help": help, "min": minimum, "max": maximum})


@dataclass(frozen=True)
class MessagingProfile:
    """Chat users: rooms, rates and churn."""

    rooms: int = knob(20, "number of chat rooms users spread over", 1)
    rooms_per_user: int = knob(1, "rooms each user joins", 1, 50)
    post_rate: float = knob(1.0, "room messages per user per second (Poisson, open model)", 0)
    dm_rate: float = knob(0.1, "direct messages per user per second", 0)
    read_rate: float = knob(0.2, "read receipts per user per second, for the latest unread message", 0)
    reconnect_rate: float = knob(0.005, "per user per second: drop the connection, reconnect, sync history", 0)
    body_bytes: int = knob(64, "size of a message body in bytes", 1, 65536)


@dataclass(frozen=True)
class Storm:
    """A burst on top of the steady load, in the hot rooms only."""

    kind: str = knob("gift", "gift (a gift and danmaku storm) or seat_churn (every seat changes hands)")
    at: float = knob(10.0, "seconds after the test starts", 0)
    duration: float = knob(5.0, "how long it lasts, in seconds", 0.1)
    multiplier: float = knob(20.0, "how many times the steady rate the storm runs at", 1)


STORM_KINDS = ("gift", "seat_churn")


@dataclass(frozen=True)
class RoomsProfile:
    """What voice rooms and live streams share: Zipf-skewed rooms, gifting, chatter, visits, storms."""

    zipf_s: float = knob(1.1, "skew of room popularity (Zipf exponent): 0 is uniform, higher is hotter", 0, 5)
    hot_rooms: int = knob(2, "the most popular rooms, where storms happen", 1)
    gift_rate: float = knob(0.5, "gifts per gifter per second", 0)
    gift_value: int = knob(10, "value of one gift", 0)
    combo_max: int = knob(5, "largest combo count of a gift (uniform from 1)", 1)
    danmaku_rate: float = knob(0.5, "danmaku per chatter per second", 0)
    chat_rate: float = knob(0.05, "public-screen chat messages per member per second (end-to-end accounted)", 0)
    session_mean: float = knob(120.0, "mean seconds a non-host stays in a room before moving to another", 1)
    storms: tuple[Storm, ...] = ()


@dataclass(frozen=True)
class VoiceRoomProfile(RoomsProfile):
    """Voice rooms with mic seats: hosts, seat hoppers, gifters, danmaku chatters, listeners."""

    rooms: int = knob(20, "voice rooms; the first this many users are their hosts", 1)
    seats: int = knob(8, "mic seats per room", 1, 16)
    hopper_share: float = knob(0.25, "share of non-host users who contend for seats", 0, 1)
    gifter_share: float = knob(0.15, "share of non-host users who send gifts", 0, 1)
    chatter_share: float = knob(0.15, "share of non-host users who send danmaku (the rest only listen)", 0, 1)
    seat_rate: float = knob(0.3, "seat attempts per hopper per second while unseated", 0)
    hold_mean: float = knob(6.0, "mean seconds a hopper holds a seat (exponential)", 0.1)
    host_rate: float = knob(0.2, "host actions per second: lock/unlock, mute, kick, invite to a seat", 0)
    settings_rate: float = knob(0.02, "voice-effect or background-music changes per seated user per second", 0)


@dataclass(frozen=True)
class LiveStreamProfile(RoomsProfile):
    """Live streams: hosts with co-hosts (连麦) and PK, viewers who gift, chat and apply to go on stage."""

    rooms: int = knob(10, "live rooms; the first this many users host them", 2)
    stage: int = knob(3, "co-host places on a host's stage", 1, 16)
    applicant_share: float = knob(0.2, "share of viewers who apply to co-host", 0, 1)
    gifter_share: float = knob(0.3, "share of viewers who send gifts", 0, 1)
    chatter_share: float = knob(0.2, "share of viewers who send danmaku", 0, 1)
    cohost_rate: float = knob(0.1, "co-host requests per applicant per second while off stage", 0)
    cohost_hold_mean: float = knob(8.0, "mean seconds a co-host stays on stage", 0.1)
    accept_probability: float = knob(0.8, "chance a host accepts a co-host request", 0, 1)
    pk_rate: float = knob(0.05, "PK invitations per host per second", 0)
    pk_duration: int = knob(10, "PK length in seconds", 1, 600)
    pk_accept_probability: float = knob(0.9, "chance a host accepts a PK invitation", 0, 1)
    call_host_rate: float = knob(0.002, "per viewer per second: switch to a 1v1 call with the host", 0)
    talk_mean: float = knob(5.0, "mean seconds of a call switched from a stream", 0.1)


@dataclass(frozen=True)
class CallProfile:
    """1v1 calls: callers ring callees, who answer, talk and hang up."""

    callee_share: float = knob(0.5, "share of users who wait for calls (the rest place them)", 0.01, 0.99)
    call_rate: float = knob(0.1, "calls placed per caller per second while not in a call", 0)
    answer_probability: float = knob(0.9, "chance a callee answers (else it declines)", 0, 1)
    answer_delay: float = knob(0.0, "seconds a callee lets it ring before answering", 0, 60)
    talk_mean: float = knob(10.0, "mean seconds of a call (exponential)", 0.1)


@dataclass(frozen=True)
class ShapeProfile:
    """How many users run over time (docs/shapes.md); without it, -u, -r and -t decide. Each kind has its own knobs."""

    kind: str = knob("ramp", "ramp, step, spike or soak")
    users: int = knob(100, "ramp, step, soak: target (peak) users", 1)
    spawn_rate: float = knob(10.0, "users started or stopped per second on every change of the target", 0.01)
    duration: float = knob(60.0, "ramp: seconds to reach users; spike, soak: total seconds of the test", 1)
    hold: float = knob(60.0, "ramp: seconds to hold users after reaching them", 0)
    steps: int = knob(5, "step: number of equal steps up to users", 1, 1000)
    step_duration: float = knob(60.0, "step: seconds each step lasts", 1)
    baseline: int = knob(10, "spike: users before and after the spike", 0)
    spike_users: int = knob(100, "spike: users during the spike", 1)
    spike_at: float = knob(20.0, "spike: seconds after the start the spike begins", 0)
    spike_duration: float = knob(20.0, "spike: seconds the spike lasts", 1)
    wave_every: float = knob(600.0, "soak: seconds between the starts of churn waves (the first at this time)", 1)
    wave_depth: float = knob(0.2, "soak: share of users stopped in a wave and started again after it", 0, 1)
    wave_duration: float = knob(60.0, "soak: seconds a wave keeps the users away", 1)


@dataclass(frozen=True)
class ReconnectStorm:
    """Every chosen connection lost at one moment, as a backend restart or a network outage does."""

    at: float = knob(10.0, "seconds after the test starts", 0)
    share: float = knob(1.0, "share of connected users whose connection is cut (drop only)", 0, 1)
    cause: str = knob("drop", "drop (the clients lose their connections), restart or hard_restart (of the embedded "
                              "reference backend: graceful, or killed)")  # fmt: skip


STORM_CAUSES = ("drop", "restart", "hard_restart")
RECONNECT_POLICIES = ("immediate", "backoff")
JITTERS = ("full", "equal", "none")


@dataclass(frozen=True)
class ReconnectProfile:
    """How users come back after losing their connection (docs/reconnects.md), and reconnect storms."""

    policy: str = knob("backoff", "immediate (at once, then every initial_delay) or backoff (exponential)")
    initial_delay: float = knob(1.0, "seconds before the first try (backoff) or between tries (immediate)", 0, 3600)
    multiplier: float = knob(2.0, "backoff: each failed try multiplies the delay by this", 1, 100)
    max_delay: float = knob(30.0, "backoff: the delay never exceeds this many seconds", 0, 3600)
    jitter: str = knob("full", "backoff: full (uniform 0..delay), equal (delay/2 plus uniform 0..delay/2) or none")
    storms: tuple[ReconnectStorm, ...] = ()


def listed(help: str, under: str, default=()):
    """A list (or a mapping by name) of sub-sections whose keys docs/profile.md lists under ``under``."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help, "listed": under})
    return field(default=default, metadata={"help": help, "listed": under})


#: built-in network conditions (their figures: loadgen/network.py, docs/network.md)
NETWORK_CONDITIONS = ("good", "wifi", "4g", "weak-3g", "elevator", "subway")
#: regions with a typical round trip to one another (loadgen/network.py, docs/network.md)
REGIONS = ("us-east", "us-west", "eu-west", "ap-northeast", "ap-southeast", "sa-east")


@dataclass(frozen=True)
class LinkProfile:
    """A network condition (docs/network.md): what it adds to every frame each way, and how often the link goes."""

    up_latency_ms: float = knob(0.0, "one-way latency added to every frame client → backend, ms", 0, 60000)
    down_latency_ms: float = knob(0.0, "one-way latency added to every frame backend → client, ms", 0, 60000)
    up_jitter_ms: float = knob(0.0, "up: each latency varies uniformly by this much either way (not below 0), ms", 0,
                               60000)  # fmt: skip
    down_jitter_ms: float = knob(0.0, "down: each latency varies uniformly by this much either way, ms", 0, 60000)
    up_loss: float = knob(0.0, "up: share of frames lost: TCP resends each, rto_ms later, and the frames behind it "
                               "wait; an audio datagram is gone", 0, 0.5)  # fmt: skip
    down_loss: float = knob(0.0, "down: share of frames lost (resent over TCP, gone as datagrams)", 0, 0.5)
    up_loss_burst_ms: float = knob(0.0, "up, audio datagrams: mean length of a loss burst, ms; the share lost stays "
                                        "up_loss (0: each datagram is lost on its own)", 0, 60000)  # fmt: skip
    down_loss_burst_ms: float = knob(0.0, "down, audio datagrams: mean length of a loss burst, ms", 0, 60000)
    rto_ms: float = knob(200.0, "retransmission timeout of a lost frame, on top of the added round trip", 200, 60000)
    up_kbps: float = knob(0.0, "up: bandwidth in kbit/s, a frame waits its serialization time; 0 for no cap", 0)
    down_kbps: float = knob(0.0, "down: bandwidth in kbit/s; 0 for no cap", 0)
    offline_every_s: float = knob(0.0, "mean seconds between offline spells (Poisson); 0 for none", 0)
    offline_min_s: float = knob(10.0, "shortest offline spell, s (spells last uniformly between min and max)", 0, 86400)
    offline_max_s: float = knob(30.0, "longest offline spell, s", 0, 86400)
    handover_every_s: float = knob(0.0, "mean seconds between Wi-Fi/cellular handovers (Poisson): the connection "
                                        "drops and the client reconnects at once; 0 for none", 0)  # fmt: skip


@dataclass(frozen=True)
class NetworkShare:
    """A network condition and the share of users on it."""

    profile: str = knob("good", f"{', '.join(NETWORK_CONDITIONS)}, or a name under network.profiles")
    share: float = knob(0.0, "share of users on it", 0, 1)


@dataclass(frozen=True)
class RegionShare:
    """A region users connect from and the share of users there."""

    region: str = knob("us-east", f"{', '.join(REGIONS)}, or a name of your own with rtt_ms")
    share: float = knob(0.0, "share of users in it", 0, 1)
    rtt_ms: float = knob(0.0, "round trip added to the region of the backend, ms; 0 takes the typical figure", 0, 60000)


@dataclass(frozen=True)
class NetworkProfile:
    """Weak networks emulated per user in the client (docs/network.md); users no share covers are on good."""

    mix: tuple[NetworkShare, ...] = listed("network conditions by share of users", "network.mix[]")
    backend_region: str = knob("us-east", "the region of the backend, which typical round trips are from")
    regions: tuple[RegionShare, ...] = listed("regions by share of users; the rest is in backend_region",
                                              "network.regions[]")  # fmt: skip
    profiles: Mapping[str, LinkProfile] = listed("conditions of your own by name", "network.profiles.NAME", {})


MEDIA_TRANSPORTS = ("udp", "websocket")


@dataclass(frozen=True)
class MediaProfile:
    """Synthetic audio from mic seats and hosts, and what listeners hear (docs/media.md)."""

    rooms: int = knob(3, "the most popular rooms of the scenario (rank 0, 1, …) carry audio; the others none", 0)
    decode_share: float = knob(0.25, "share of members of an audio room that play its audio out and measure it; "
                                     "the rest only count frames", 0, 1)  # fmt: skip
    transport: str = knob("udp", "udp, or websocket: frames ride the signalling connection, for backends that "
                                 "tunnel media")  # fmt: skip
    frame_bytes: int = knob(80, "payload bytes of a 20 ms frame after the 32-byte header (80: Opus at 32 kbit/s)",
                            0, 1200)  # fmt: skip
    jitter_buffer_ms: float = knob(60.0, "playout delay of a listener's jitter buffer, ms: a frame later than "
                                         "this is late", 0, 5000)  # fmt: skip
    stall_ms: float = knob(200.0, "a gap with nothing playable longer than this is a stall, ms", 20, 60000)
    top_k: int = knob(0, "the embedded backend forwards only the K loudest speakers of a room; 0 forwards all", 0)
    talk_mean_s: float = knob(3.0, "a speaker's mean talk spurt (loud), s", 0.02, 3600)
    quiet_mean_s: float = knob(6.0, "a speaker's mean quiet between spurts (frames still flow, softly), s", 0,
                               3600)  # fmt: skip


#: shape kind -> the knobs it reads; a knob of another kind in the file is an error
SHAPE_KNOBS: dict[str, tuple[str, ...]] = {
    "ramp": ("kind", "users", "spawn_rate", "duration", "hold"),
    "step": ("kind", "users", "spawn_rate", "steps", "step_duration"),
    "spike": ("kind", "spawn_rate", "baseline", "spike_users", "spike_at", "spike_duration", "duration"),
    "soak": ("kind", "users", "spawn_rate", "duration", "wave_every", "wave_depth", "wave_duration"),
}


def _check_shape(shape: ShapeProfile, given: Mapping[str, object], fail) -> None:
    """A shape's knobs agree with each other, and spawn_rate lets the runner follow every change."""
    if shape.kind not in SHAPE_KNOBS:
        fail("kind", f"must be one of {', '.join(SHAPE_KNOBS)}, got {shape.kind!r}")
    own = SHAPE_KNOBS[shape.kind]
    for key in given:
        if key not in own:
            fail(key, f"is not a knob of kind {shape.kind} (its knobs: {', '.join(own)})")
    if shape.kind == "spike":
        if shape.spike_users <= shape.baseline:
            fail("spike_users", f"must exceed baseline ({shape.baseline})")
        if shape.spike_at + shape.spike_duration > shape.duration:
            fail("duration", f"must be at least spike_at + spike_duration ({shape.spike_at + shape.spike_duration:g})")
    if shape.kind == "soak" and shape.wave_duration >= shape.wave_every:
        fail("wave_duration", f"must be shorter than wave_every ({shape.wave_every:g})")
    # the largest change of the target: users to move, seconds to move them in, the knobs that set them
    if shape.kind == "ramp":
        users, seconds, inputs = shape.users, shape.duration, ("users", "duration")
    elif shape.kind == "step":
        users, seconds = -(-shape.users // shape.steps), shape.step_duration
        inputs = ("users", "steps", "step_duration")
    elif shape.kind == "spike":
        users, seconds, inputs = shape.spike_users - shape.baseline, shape.spike_duration, ("spike_users", "baseline")
    else:  # a soak wave must empty and refill within its duration and the gap before the next wave
        users, inputs = round(shape.users * shape.wave_depth), ("users", "wave_depth", "wave_duration", "wave_every")
        seconds = min(shape.wave_duration, shape.wave_every - shape.wave_duration)
    if users / seconds > shape.spawn_rate + 1e-9:
        blame = next((k for k in ("spawn_rate", *inputs) if k in given), "kind")
        fail(blame, f"moving {users} users in {seconds:g} s needs a spawn_rate of at least {users / seconds:g}, "
                    f"not {shape.spawn_rate:g}")  # fmt: skip


SHARED_ROOM_KNOBS = frozenset(f.name for f in dataclasses.fields(RoomsProfile))

#: scenario name -> its section's dataclass
SECTIONS: dict[str, type] = {
    "messaging": MessagingProfile,
    "voiceroom": VoiceRoomProfile,
    "livestream": LiveStreamProfile,
    "call1v1": CallProfile,
}

#: top-level sections that are not scenarios: read by every run
COMMON_SECTIONS: dict[str, type] = {
    "shape": ShapeProfile,
    "reconnect": ReconnectProfile,
    "network": NetworkProfile,
    "media": MediaProfile,
}


@dataclass(frozen=True)
class Profile:
    path: str | None = None
    messaging: MessagingProfile = field(default_factory=MessagingProfile)
    voiceroom: VoiceRoomProfile = field(default_factory=VoiceRoomProfile)
    livestream: LiveStreamProfile = field(default_factory=LiveStreamProfile)
    call1v1: CallProfile = field(default_factory=CallProfile)
    #: None without a ``shape:`` section: Locust's -u, -r and -t decide the load
    shape: ShapeProfile | None = None
    reconnect: ReconnectProfile = field(default_factory=ReconnectProfile)
    #: None without a ``network:`` section: no condition is emulated and no split is measured
    network: NetworkProfile | None = None
    #: None without a ``media:`` section: rooms carry no audio
    media: MediaProfile | None = None


def _line(node: yaml.Node | None) -> int | None:
    return None if node is None else node.start_mark.line + 1


def _mapping(node: yaml.Node, path: str, key: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise ProfileError(path, _line(node), key, "must be a mapping of keys to values")
    return {k.value: (k, v) for k, v in node.value}


def _convert(value_node: yaml.Node, kind: type, spec: dataclasses.Field, path: str, key: str):
    line = _line(value_node)
    if not isinstance(value_node, yaml.ScalarNode):
        raise ProfileError(path, line, key, f"must be a {kind.__name__}")
    value = yaml.safe_load(yaml.serialize(value_node))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProfileError(path, line, key, f"must be a {kind.__name__}, got {value_node.value!r}")
    low, high = spec.metadata.get("min"), spec.metadata.get("max")
    if low is not None and value < low:
        raise ProfileError(path, line, key, f"must be at least {low:g}, got {value!r}")
    if high is not None and value > high:
        raise ProfileError(path, line, key, f"must be at most {high:g}, got {value!r}")
    return value


def _section(cls: type, node: yaml.Node, path: str, name: str):
    entries = _mapping(node, path, name)
    specs = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, (key_node, value_node) in entries.items():
        spec = specs.get(key)
        if spec is None:
            known = ", ".join(specs)
            raise ProfileError(path, _line(key_node), f"{name}.{key}", f"unknown key (known: {known})")
        if typing.get_origin(hints[key]) is tuple:
            values[key] = _sequence(typing.get_args(hints[key])[0], value_node, path, f"{name}.{key}")
        elif typing.get_origin(hints[key]) is Mapping:
            values[key] = _named(typing.get_args(hints[key])[1], value_node, path, f"{name}.{key}")
        else:
            values[key] = _convert(value_node, hints[key], spec, path, f"{name}.{key}")
    section = cls(**values)
    _check(section, entries, path, name)
    return section


def _named(item: type, node: yaml.Node, path: str, key: str) -> dict:
    entries = _mapping(node, path, key)
    return {name: _section(item, value, path, f"{key}.{name}") for name, (_, value) in entries.items()}


def _sequence(item: type, node: yaml.Node, path: str, key: str) -> tuple:
    if not isinstance(node, yaml.SequenceNode):
        raise ProfileError(path, _line(node), key, "must be a list")
    return tuple(_section(item, entry, path, f"{key}[{n}]") for n, entry in enumerate(node.value))


def _check(section, entries: Mapping[str, tuple[yaml.Node, yaml.Node]], path: str, name: str) -> None:
    """Rules that tie knobs together, each reported at the line of the knob it names."""

    def fail(key: str, problem: str) -> None:
        node = entries.get(key, (None, None))[1]
        raise ProfileError(path, _line(node), f"{name}.{key}" if name else key, problem)

    if isinstance(section, Storm) and section.kind not in STORM_KINDS:
        fail("kind", f"must be one of {', '.join(STORM_KINDS)}, got {section.kind!r}")
    if isinstance(section, ReconnectStorm) and section.cause not in STORM_CAUSES:
        fail("cause", f"must be one of {', '.join(STORM_CAUSES)}, got {section.cause!r}")
    if isinstance(section, ReconnectProfile):
        if section.policy not in RECONNECT_POLICIES:
            fail("policy", f"must be one of {', '.join(RECONNECT_POLICIES)}, got {section.policy!r}")
        if section.jitter not in JITTERS:
            fail("jitter", f"must be one of {', '.join(JITTERS)}, got {section.jitter!r}")
        if section.max_delay < section.initial_delay:
            fail("max_delay", f"must be at least initial_delay ({section.initial_delay:g})")
    shares = [f.name for f in dataclasses.fields(section) if f.name.endswith("_share")]
    if len(shares) > 1 and sum(getattr(section, s) for s in shares) > 1 + 1e-9:
        fail(shares[-1], f"the shares {', '.join(shares)} add up to more than 1")
    if hasattr(section, "hot_rooms") and section.hot_rooms > section.rooms:
        fail("hot_rooms", f"must not exceed rooms ({section.rooms})")
    if isinstance(section, ShapeProfile):
        _check_shape(section, entries, fail)
    if isinstance(section, LinkProfile) and section.offline_max_s < section.offline_min_s:
        fail("offline_max_s", f"must be at least offline_min_s ({section.offline_min_s:g})")
    if isinstance(section, NetworkProfile):
        _check_network(section, entries, path, name)
    if isinstance(section, MediaProfile) and section.transport not in MEDIA_TRANSPORTS:
        fail("transport", f"must be one of {', '.join(MEDIA_TRANSPORTS)}, got {section.transport!r}")


def _check_network(network: NetworkProfile, entries: Mapping[str, tuple[yaml.Node, yaml.Node]], path: str,
                   name: str) -> None:  # fmt: skip
    """Every condition and region named is known and named once, and each list's shares add up to 1 at most."""
    if network.profiles:
        for custom, (key_node, _) in _mapping(entries["profiles"][1], path, f"{name}.profiles").items():
            if custom in NETWORK_CONDITIONS:
                raise ProfileError(path, _line(key_node), f"{name}.profiles.{custom}",
                                   "is the name of a built-in condition: give yours another")  # fmt: skip
    conditions = (*NETWORK_CONDITIONS, *network.profiles)
    for key, named in (("mix", "profile"), ("regions", "region")):
        seen: set[str] = set()
        total = 0.0
        for n, item in enumerate(getattr(network, key)):
            where = f"{name}.{key}[{n}]"
            node = entries[key][1].value[n]
            value, blame, problem = getattr(item, named), named, None
            total += item.share
            if key == "mix" and value not in conditions:
                problem = f"must be one of {', '.join(conditions)}, got {value!r}"
            elif key == "regions" and value not in REGIONS and not item.rtt_ms:
                problem = f"has no typical round trip (only {', '.join(REGIONS)} have): give its rtt_ms"
            elif value in seen:
                problem = f"{value} is listed twice"
            elif total > 1 + 1e-9:
                blame, problem = "share", f"the shares of {name}.{key} add up to more than 1"
            if problem is not None:
                line = _line(_mapping(node, path, where).get(blame, (None, node))[1])
                raise ProfileError(path, line, f"{where}.{blame}", problem)
            seen.add(value)
    if network.backend_region not in REGIONS and any(not region.rtt_ms for region in network.regions):
        raise ProfileError(path, _line(entries.get("backend_region", (None, None))[1]), f"{name}.backend_region",
                           f"must be one of {', '.join(REGIONS)} for typical round trips, or every region needs "
                           f"its rtt_ms")  # fmt: skip


def load_profile(path: str | Path | None) -> Profile:
    """Read and check a profile; ``None`` gives the defaults."""
    if path is None:
        return Profile()
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(path, None, "", f"cannot read: {exc.strerror}") from exc
    root = compose_yaml(text, path, ProfileError)
    if root is None:
        return Profile(path=path)
    sections: Mapping[str, tuple[yaml.Node, yaml.Node]] = _mapping(root, path, "")
    values = {}
    for name, (key_node, value_node) in sections.items():
        cls = SECTIONS.get(name) or COMMON_SECTIONS.get(name)
        if cls is None:
            known = ", ".join([*SECTIONS, *COMMON_SECTIONS])
            raise ProfileError(path, _line(key_node), name, f"unknown section (known: {known})")
        values[name] = _section(cls, value_node, path, name)
    return Profile(path=path, **values)


def reference() -> str:
    """The key tables of docs/profile.md, written from the dataclasses so docs match the code."""
    out = []
    sections = [*SECTIONS.items(), ("storms[]", Storm), *COMMON_SECTIONS.items()]
    sections.append(("reconnect.storms[]", ReconnectStorm))
    sections += [("network.mix[]", NetworkShare), ("network.regions[]", RegionShare),
                 ("network.profiles.NAME", LinkProfile)]  # fmt: skip
    for name, cls in sections:
        # the shared knobs read best after each scenario's own
        fields = sorted(dataclasses.fields(cls), key=lambda f: f.name in SHARED_ROOM_KNOBS)
        out += [f"## `{name}`", "", (cls.__doc__ or "").strip(), "", "| key | default | meaning |", "|---|---|---|"]
        for spec in fields:
            if "listed" in spec.metadata:
                out.append(f"| `{spec.name}` | none | {spec.metadata['help']}: each with the keys under "
                           f"`{spec.metadata['listed']}` |")  # fmt: skip
                continue
            if spec.name == "storms":
                listed = "reconnect.storms[]" if cls is ReconnectProfile else "storms[]"
                out.append(f"| `storms` | none | a list of storms, each with the keys under `{listed}` |")
                continue
            bounds = [f"at least {spec.metadata['min']:g}" if spec.metadata.get("min") is not None else "",
                      f"at most {spec.metadata['max']:g}" if spec.metadata.get("max") is not None else ""]  # fmt: skip
            bounded = "; ".join(b for b in bounds if b)
            meaning = spec.metadata["help"] + (f" ({bounded})" if bounded else "")
            out.append(f"| `{spec.name}` | {spec.default!r} | {meaning} |".replace("'", ""))
        out.append("")
    return "\n".join(out).rstrip() + "\n"
