"""Every driver's frame parser under arbitrary and half-right input: typed events or Malformed, never more.

Three sources of frames per driver: arbitrary bytes, frames built by strategies that know the
protocol's events and fields (with the ids and names of real sessions, so they reach past
the "no such request" checks), and mutants of the frames real sessions received, fed to a
driver in the very state the real frame found it in (tests/fuzz/corpus, recorded by
tests/fuzz/record.py). A driver may answer with any events, as long as each is one of the
typed events with every field of its declared type, a Malformed of a known kind, or a
Failure with a code; raising, returning something else or taking seconds over a frame fails.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element, tostring

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadgen.drivers import xmpp
from loadgen.drivers.base import Driver, Malformed
from tests.fuzz.fuzzing import (
    FUZZ,
    MUTATIONS,
    SEED,
    Mutator,
    attack,
    bounded,
    check_events,
    harvest,
    primed,
    received_frames,
    replay,
)

DRIVERS = ("reference", "xmpp", "janus")


def feed(driver: Driver, frame: bytes, binary: bool = False) -> list:
    with bounded():
        events = driver.receive(frame, binary)
        # what a session does after every frame; a driver's answer to a broken frame must not break it
        driver.pending()
    check_events(events)
    return events


@pytest.mark.parametrize("name", DRIVERS)
def test_recorded_sessions_replay_into_typed_events_and_no_protocol_error(name):
    """The corpus is sound: every frame of the recorded sessions decodes into typed events, none Malformed."""
    frames = 0
    for _driver, results in replay(name):
        for events in results:
            check_events(events)
            assert not [event for event in events if isinstance(event, Malformed)], events
            frames += 1
    assert frames > 40


# -- arbitrary input ----------------------------------------------------------------------


@pytest.mark.parametrize("name", DRIVERS)
@FUZZ
@given(data=st.data(), frame=st.binary(max_size=512) | st.text(max_size=256).map(str.encode), binary=st.booleans())
def test_arbitrary_bytes_decode_into_typed_events_or_malformed(name, data, frame, binary):
    """Any bytes, text or binary, in any state of a real session: typed events or Malformed."""
    driver = primed(name, data.draw(st.integers(0, 5)), data.draw(st.integers(0, 400)))
    events = feed(driver, frame, binary)
    if binary:
        assert [event.kind for event in events] == ["binary"]


# -- half-right frames --------------------------------------------------------------------

_64_BITS = st.integers(-(2**63), 2**63 - 1)
#: strings that Python's own number parsers take, to values no protocol has
_ODD_NUMBERS = st.sampled_from(["inf", "-inf", "nan", "1e999", "\u0661\u0662", "1_000", " 7 ", "0x10"])
_LEAF = (
    st.none()
    | st.booleans()
    | _64_BITS
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | _ODD_NUMBERS
)
JSON = st.recursive(
    _LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5,
)


def _pools(name: str) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    strings, numbers = harvest(name)
    names = st.sampled_from(strings) if strings else st.text(max_size=8)
    ints = (st.sampled_from(numbers) if numbers else st.integers(0, 30)) | st.integers(-2, 60)
    return names, ints


def _mostly(right: st.SearchStrategy) -> st.SearchStrategy:
    """Usually a value of the right type, sometimes any JSON at all."""
    return st.one_of(right, right, right, JSON)


#: the reference protocol's events (docs/protocol.md) and the types of their fields
_REFERENCE_EVENTS = {
    "msg": {"room": "str", "seq": "int", "from": "str", "cseq": "int", "ts": "num", "server_ts": "num", "body": "str"},
    "dm": {"seq": "int", "from": "str", "to": "str", "cseq": "int", "ts": "num", "server_ts": "num", "body": "str"},
    "ack": {"re": "int", "user": "str", "inbox_head": "int", "server_time": "num", "room": "str", "head": "int",
            "members": "int", "host": "str", "state": "seats", "live": "bool", "seat": "int", "version": "int",
            "pk": "str", "call": "str", "seq": "int", "server_ts": "num", "online": "bool", "messages": "messages",
            "inbox": "bool", "t0": "num", "heads": "heads"},
    "error": {"re": "int", "code": "str", "message": "str"},
    "seats": {"room": "str", "version": "int", "seats": "seat_list", "change": "change"},
    "gift": {"room": "str", "from": "str", "ts": "num", "gift": "str", "count": "int", "value": "int"},
    "danmaku": {"room": "str", "from": "str", "ts": "num", "text": "str"},
    "settings": {"room": "str", "by": "str", "ts": "num", "title": "str"},
    "stream": {"room": "str", "live": "bool", "host": "str", "ts": "num"},
    "seat_invite": {"room": "str", "from": "str", "ts": "num", "seat": "int"},
    "cohost_request": {"room": "str", "from": "str", "ts": "num"},
    "cohost_rejected": {"room": "str", "by": "str", "ts": "num"},
    "pk_invite": {"room": "str", "from": "str", "ts": "num", "pk": "str", "target": "str", "duration": "int"},
    "pk_rejected": {"room": "str", "by": "str", "ts": "num", "pk": "str"},
    "pk": {"pk": "str", "state": "str", "rooms": "names", "scores": "heads", "version": "int", "ts": "num",
           "winner": "str"},
    "call": {"call": "str", "state": "str", "from": "str", "to": "str", "ts": "num", "by": "str"},
    "receipt": {"room": "str", "seq": "int", "reader": "str"},
}  # fmt: skip


def _reference_frames() -> st.SearchStrategy:
    names, ints = _pools("reference")
    types: dict[str, st.SearchStrategy] = {
        "str": names,
        "int": ints,
        "num": ints | st.floats(allow_nan=False, allow_infinity=False),
        "bool": st.booleans(),
        "names": st.lists(names, max_size=3),
        "heads": st.dictionaries(names, ints, max_size=3),
    }
    seat = st.fixed_dictionaries(
        {"n": _mostly(ints), "user": st.none() | _mostly(names)},
        optional={"muted": _mostly(st.booleans()), "locked": _mostly(st.booleans())},
    )
    types["seat_list"] = st.lists(_mostly(seat), max_size=3)
    types["seats"] = st.fixed_dictionaries({"version": _mostly(ints), "seats": _mostly(types["seat_list"])})
    types["change"] = st.fixed_dictionaries(
        {"kind": _mostly(names), "seat": _mostly(ints), "ts": _mostly(types["num"])},
        optional={"user": _mostly(names), "by": _mostly(names)},
    )
    message = st.fixed_dictionaries({"ev": st.sampled_from(["msg", "dm"])}, optional={
        key: _mostly(types[kind]) for key, kind in _REFERENCE_EVENTS["msg"].items()
    })  # fmt: skip
    types["messages"] = st.lists(_mostly(message), max_size=2)
    frame = st.one_of(
        [
            st.fixed_dictionaries(
                {"ev": st.just(event)}, optional={key: _mostly(types[kind]) for key, kind in fields.items()}
            )
            for event, fields in _REFERENCE_EVENTS.items()
        ]
    )
    return st.one_of(frame, frame, frame, st.fixed_dictionaries({"ev": JSON}), JSON).map(orjson.dumps)


def _janus_frames() -> st.SearchStrategy:
    names, ints = _pools("janus")
    display = st.builds(
        lambda fields: orjson.dumps(fields).decode(),
        st.fixed_dictionaries(
            {},
            optional={"u": names | JSON, "ts": ints | st.floats(allow_nan=False) | JSON, "mute": ints | JSON,
                      "kick": ints | JSON, "leave": st.booleans() | JSON, "ab": ints | JSON},
        ),
    ) | names | st.text(max_size=6)  # fmt: skip
    participant = st.fixed_dictionaries(
        {"id": ints | JSON}, optional={"display": display | JSON, "muted": st.booleans() | JSON}
    )
    plugin_data = st.fixed_dictionaries(
        {},
        optional={
            "videoroom": st.sampled_from(["joined", "event", "attached", "destroyed"]) | JSON,
            "audiobridge": st.sampled_from(["joined", "event", "left"]) | JSON,
            "room": ints | JSON,
            "id": ints | JSON,
            "participants": st.lists(participant | JSON, max_size=3) | JSON,
            "publishers": st.lists(participant | JSON, max_size=3) | JSON,
            "attendees": st.lists(participant | JSON, max_size=3) | JSON,
            "joining": participant | JSON,
            "leaving": ints | st.just("ok") | JSON,
            "kicked": ints | JSON,
            "reason": st.just("kicked") | JSON,
            "display": display | JSON,
            "error_code": st.sampled_from([426, 427, 428, 436, 485, 486, 492]) | JSON,
            "error": st.text(max_size=8) | JSON,
        },
    )
    frame = st.fixed_dictionaries(
        {"janus": st.sampled_from(["success", "ack", "event", "error", "timeout", "hangup", "webrtcup", "media",
                                   "slowlink", "trickle", "detached", "keepalive"]) | JSON},
        optional={
            "transaction": names | JSON,
            "session_id": ints | JSON,
            "sender": ints | JSON,
            "data": st.fixed_dictionaries({"id": ints | JSON}) | JSON,
            "plugindata": st.fixed_dictionaries({"plugin": st.sampled_from([janus_plugin for janus_plugin in (
                "janus.plugin.videoroom", "janus.plugin.audiobridge")]), "data": plugin_data}) | JSON,
            "error": st.fixed_dictionaries({"code": ints | JSON}, optional={"reason": st.text(max_size=8) | JSON})
            | JSON,
        },
    )  # fmt: skip
    return (frame | JSON).map(orjson.dumps)


#: the XMPP names a stanza or its children may carry, as (namespace, local name)
_XMPP_NAMES = [
    (xmpp.NS_CLIENT, local) for local in ("message", "presence", "iq", "body", "error", "text", "subject")
] + [
    (xmpp.NS_FRAMING, "open"), (xmpp.NS_FRAMING, "close"), (xmpp.NS_STREAMS, "features"), (xmpp.NS_STREAMS, "error"),
    (xmpp.NS_SASL, "success"), (xmpp.NS_SASL, "failure"), (xmpp.NS_SASL, "mechanisms"), (xmpp.NS_SASL, "mechanism"),
    (xmpp.NS_SASL, "not-authorized"), (xmpp.NS_BIND, "bind"), (xmpp.NS_BIND, "jid"), (xmpp.NS_STAMP, "stamp"),
    (xmpp.NS_DELAY, "delay"), (xmpp.NS_RECEIPTS, "received"), (xmpp.NS_MAM, "result"), (xmpp.NS_MAM, "fin"),
    (xmpp.NS_FORWARD, "forwarded"), (xmpp.NS_MUC_USER, "x"), (xmpp.NS_MUC_USER, "status"), (xmpp.NS_PING, "ping"),
    (xmpp.NS_STANZA_ERRORS, "conflict"), (xmpp.NS_STANZA_ERRORS, "item-not-found"),
    (xmpp.NS_STREAM_ERRORS, "conflict"), ("urn:example:unknown", "thing"),
]  # fmt: skip
_XMPP_ATTRIBUTES = ("type", "id", "from", "to", "queryid", "code", "cseq", "ts", "stamp", "version")


def _xmpp_frames() -> st.SearchStrategy:
    names, _ints = _pools("xmpp")
    odd = st.sampled_from(
        ["", "1", "-5", "1e400", "nan", "inf", "-inf", "\u0661\u0662", "1_000", "9" * 5000, "lg.1.fuzzroom",
         "2026-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00", "0001-01-01T00:00:00+14:00",
         "groupchat", "chat", "error", "result", "get", "set", "unavailable", "110", "201"]
    )  # fmt: skip
    value = names | odd | st.text(max_size=6)

    def build(tree) -> Element:
        (namespace, local), attributes, text, children = tree
        element = Element(f"{{{namespace}}}{local}", attributes)
        element.text = text
        for child in children:
            element.append(build(child))
        return element

    def node(children):
        return st.tuples(
            st.sampled_from(_XMPP_NAMES),
            st.dictionaries(st.sampled_from(_XMPP_ATTRIBUTES), value, max_size=4),
            st.none() | value,
            children,
        )

    leaf = node(st.just(()))
    tree = node(st.lists(node(st.lists(node(st.lists(leaf, max_size=2)), max_size=2)), max_size=3))
    return tree.map(lambda t: tostring(build(t)))


FRAMES = {"reference": _reference_frames(), "xmpp": _xmpp_frames(), "janus": _janus_frames()}


@pytest.mark.parametrize("name", DRIVERS)
@FUZZ
@given(data=st.data())
def test_frames_built_from_the_protocol_decode_into_typed_events_or_malformed(name, data):
    """Known events with fields right, wrong, missing or of another type, a few in a row: typed events or Malformed."""
    driver = primed(name, data.draw(st.integers(0, 5)), data.draw(st.integers(0, 400)))
    for frame in data.draw(st.lists(FRAMES[name], min_size=1, max_size=2)):
        feed(driver, frame)


def test_an_xmpp_stream_refuses_entities_and_never_expands_them():
    """A document type declaration (and so every entity) is a bad_xml protocol error, however small."""
    driver = primed("xmpp", 0, 30)
    laughs = b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa">]><message xmlns="jabber:client">&a;</message>'
    assert [event.kind for event in feed(driver, laughs)] == ["bad_xml"]


# -- mutants of what real sessions received -----------------------------------------------


@pytest.mark.parametrize("name", DRIVERS)
def test_mutants_of_recorded_frames_decode_into_typed_events_or_malformed(name):
    """Flipped, cut, spliced and re-typed copies of every recorded frame, each in the state its original met."""
    mutator = Mutator(SEED, received_frames(name))
    per_frame = 50
    ran = 0

    def mutants(driver: Driver, frame: bytes, binary: bool) -> None:
        nonlocal ran
        ran += attack(lambda case: feed(driver, case, binary), frame, per_frame, mutator)

    while ran < MUTATIONS:
        for _driver, _results in replay(name, mutants):
            pass
    assert ran >= MUTATIONS
