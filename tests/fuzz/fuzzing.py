"""What the fuzz tests share: how many cases, a deadline per case, what a typed event is,
a seeded mutator of recorded frames, and the replay of recorded sessions.

Two knobs, both environment variables (docs/faults.md, "Fuzzing"):

- ``FUZZ_EXAMPLES`` (default 1000): hypothesis examples per property; the mutation fuzzer
  runs 100 times as many cases per target. A deep run sets it to 100000 or more.
- ``FUZZ_SEED`` (default 1): the mutation fuzzer's seed, and hypothesis runs derandomized
  unless ``FUZZ_EXAMPLES`` is given: the suite's default cases are the same on every run, a
  deep run explores new ones. A failure prints the seed and the case that broke.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import signal
import time
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import orjson
from hypothesis import HealthCheck, settings

from loadgen import drivers
from loadgen.drivers import base
from tests.support import SCALE

CORPUS = Path(__file__).with_name("corpus")
DEEP = "FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
MUTATIONS = 100 * EXAMPLES
SEED = int(os.environ.get("FUZZ_SEED", "1"))
#: one case that takes this long is taken for a hang: the parsers do microseconds of work per frame
CASE_SECONDS = 5.0 * SCALE

#: hypothesis for these tests: a fixed set of cases in the suite, new ones in a deep run; the
#: per-case bound is :func:`bounded`'s, which also stops a case that never returns
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not DEEP,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


class Hang(Exception):
    """A case ran past its deadline."""


_armed = [False]


@contextlib.contextmanager
def bounded(seconds: float = CASE_SECONDS) -> Iterator[None]:
    """Raise :class:`Hang` in whatever the block is running once ``seconds`` have passed.

    Within a bounded block, another one adds nothing: the outer deadline holds.
    """
    if _armed[0]:
        yield
        return

    def expire(_signum: int, _frame: object) -> None:
        raise Hang(f"a case ran over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    # pytest-timeout may have its own alarm running for the whole test: it gets the rest back after
    outer, _interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    _armed[0] = True
    try:
        yield
    finally:
        _armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 0.001))


# -- what a typed event is ----------------------------------------------------------------

RESULTS = (
    base.LoginResult,
    base.JoinResult,
    base.LeaveResult,
    base.SendResult,
    base.ReadResult,
    base.HistoryResult,
    base.ClockResult,
    base.LogoutResult,
    base.SeatResult,
    base.Done,
)
EVENTS = (
    base.Reply,
    base.Failure,
    base.Delivery,
    base.Receipt,
    base.SeatSnapshot,
    base.RoomEvent,
    base.Invitation,
    base.PkUpdate,
    base.CallUpdate,
    base.Malformed,
)
_HINTS = {cls: get_type_hints(cls) for cls in (*RESULTS, *EVENTS, base.Seat, base.SeatChange)}


def _typed(value: Any, hint: Any, where: str) -> None:
    if hint is object:
        return
    if hint is str or hint is int or hint is bool or hint is bytes:
        assert type(value) is hint, f"{where} is {value!r}, not {hint.__name__}"
        return
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        problems = []
        for option in get_args(hint):
            try:
                _typed(value, option, where)
                return
            except AssertionError as exc:
                problems.append(str(exc))
        raise AssertionError(" / ".join(problems))
    if hint is type(None):
        assert value is None, f"{where} is {value!r}, not None"
    elif hint is float:
        assert type(value) in (int, float) and math.isfinite(value), f"{where} is {value!r}, not a finite number"
    elif origin is tuple:
        assert type(value) is tuple, f"{where} is {value!r}, not a tuple"
        item = get_args(hint)[0]
        for n, element in enumerate(value):
            _typed(element, item, f"{where}[{n}]")
    elif origin is Mapping or origin is dict:
        assert isinstance(value, Mapping), f"{where} is {value!r}, not a mapping"
        key_hint, value_hint = get_args(hint)
        for key, element in value.items():
            _typed(key, key_hint, f"{where} key")
            _typed(element, value_hint, f"{where}[{key!r}]")
    elif dataclasses.is_dataclass(hint):
        assert type(value) is hint, f"{where} is {value!r}, not {hint.__name__}"
        for name, field_hint in _HINTS[hint].items():
            _typed(getattr(value, name), field_hint, f"{where}.{name}")
    else:
        raise AssertionError(f"{where}: no check for {hint!r}")


def check_events(events: object) -> None:
    """What a driver may return: a list of events whose every field has its declared type."""
    assert type(events) is list, f"receive returned {events!r}, not a list"
    for event in events:
        assert isinstance(event, EVENTS), f"not an event: {event!r}"
        _typed(event, type(event), type(event).__name__)
        if isinstance(event, base.Reply):
            assert isinstance(event.result, RESULTS), f"a reply whose result is {event.result!r}"
            _typed(event.result, type(event.result), f"Reply({event.request_id}).result")
        elif isinstance(event, base.Malformed):
            assert event.kind in base.PROTOCOL_ERROR_KINDS, f"a protocol error of no known kind: {event!r}"
        elif isinstance(event, base.Failure):
            assert event.code, f"a failure without a code: {event!r}"


# -- the recorded corpus --------------------------------------------------------------------


@functools.cache
def corpus(driver: str) -> dict:
    return json.loads((CORPUS / f"{driver}.json").read_text())


def decode(text: str) -> bytes:
    return base64.b64decode(text)


def received_frames(driver: str) -> list[bytes]:
    """Every frame the recorded sessions of ``driver`` received, in order."""
    return [decode(call[2]) for tape in corpus(driver)["tapes"] for call in tape["calls"] if call[1] == "receive"]


def sent_frames(driver: str) -> list[tuple[int, bytes]]:
    """Every frame the recorded sessions sent, each with its session's index, in the order they went."""
    sent = []
    for index, tape in enumerate(corpus(driver)["tapes"]):
        for call in tape["calls"]:
            if call[1] == "pending":
                sent += [(call[0], index, decode(frame)) for frame in call[2]]
            elif call[1] not in ("receive",):
                sent.append((call[0], index, decode(call[4])))
    return [(index, frame) for _order, index, frame in sorted(sent)]


def _tape_clock(readings: list[float]) -> Callable[[], float]:
    """The clock a recorded driver read, reading for reading; past the end it stands still."""
    position = [0]

    def read() -> float:
        n = min(position[0], len(readings) - 1)
        position[0] += 1
        return readings[n] if readings else 0.0

    return read


def make_driver(name: str, config: dict, tape: dict | None = None) -> base.Driver:
    """A fresh driver as the recorded sessions had it: its options, and for Janus the clocks it read."""
    cls = drivers.load(name)
    if name == "janus":
        tape = tape or {"monotonic": [], "wall": []}
        return cls(**config, monotonic=_tape_clock(tape["monotonic"]), wall=_tape_clock(tape["wall"]))
    return cls(**config)


def apply_call(driver: base.Driver, call: list) -> list | None:
    """One recorded call on ``driver``; what ``receive`` returned, for a received frame."""
    method = call[1]
    if method == "receive":
        return driver.receive(decode(call[2]), call[3])
    if method == "pending":
        driver.pending()
    else:
        getattr(driver, method)(*call[2], **call[3])
    return None


def primed(name: str, tape: int, calls: int) -> base.Driver:
    """A driver taken through the first ``calls`` calls of recorded session ``tape`` (both wrap around)."""
    recorded = corpus(name)
    chosen = recorded["tapes"][tape % len(recorded["tapes"])]
    driver = make_driver(name, recorded["config"], chosen)
    for call in chosen["calls"][: calls % (len(chosen["calls"]) + 1)]:
        apply_call(driver, call)
    return driver


def replay(
    name: str, on_frame: Callable[[base.Driver, bytes, bool], None] | None = None
) -> Iterator[tuple[base.Driver, list]]:
    """Drive fresh drivers through every recorded session; yield each driver and what each frame gave.

    ``on_frame(driver, frame, binary)`` runs just before each recorded frame is handed over,
    with the driver in the state the frame found it in: where the mutants go in.
    """
    recorded = corpus(name)
    for tape in recorded["tapes"]:
        driver = make_driver(name, recorded["config"], tape)
        results = []
        for call in tape["calls"]:
            if call[1] == "receive" and on_frame is not None:
                on_frame(driver, decode(call[2]), call[3])
            result = apply_call(driver, call)
            if result is not None:
                results.append(result)
        yield driver, results


def harvest(name: str) -> tuple[list[str], list[int]]:
    """The strings and integers the recorded frames of ``name`` carry (ids, names, JIDs): values a
    generated frame must reuse to reach past the checks for requests in flight."""
    strings: set[str] = set()
    numbers: set[int] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            strings.update(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            strings.add(node)
        elif type(node) is int:
            numbers.add(node)

    for frame in received_frames(name):
        if name == "xmpp":
            from xml.etree.ElementTree import fromstring

            for element in fromstring(frame).iter():
                strings.update(element.attrib.values())
                if element.text:
                    strings.add(element.text)
        else:
            walk(orjson.loads(frame))
    return sorted(strings), sorted(numbers)


# -- mutations ----------------------------------------------------------------------------

_INTERESTING_BYTES = b"\x00\xff\x7f\x80\"{}[],:<>/\\&;='09-e.n \n\xc3\xe2\xf0"
_INTERESTING_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63), 1.5, -0.0, 1e308, "", "x", "0",
    "\u0000", "\ud7ff\ue000", [], {}, [None], {"": None},
)  # fmt: skip


class Mutator:
    """Seeded mutations of frames: bytes flipped, cut, spliced, and (for JSON) values swapped for others."""

    def __init__(self, seed: int, pool: list[bytes]) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.pool = pool

    def __call__(self, frame: bytes) -> bytes:
        rng = self.rng
        if rng.random() < 0.4:
            structured = self._json(frame)
            if structured is not None:
                return structured
        data = bytearray(frame)
        for _ in range(rng.choice((1, 1, 1, 2, 3, 6))):
            data = getattr(self, rng.choice(self._BYTE_OPS))(data)
        return bytes(data)

    _BYTE_OPS = ("_flip", "_interesting", "_delete", "_duplicate", "_insert", "_truncate", "_splice", "_swap")

    def _at(self, data: bytearray) -> int:
        return self.rng.randrange(len(data) + 1)

    def _flip(self, data: bytearray) -> bytearray:
        if data:
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return data

    def _interesting(self, data: bytearray) -> bytearray:
        if data:
            data[self.rng.randrange(len(data))] = self.rng.choice(_INTERESTING_BYTES)
        return data

    def _delete(self, data: bytearray) -> bytearray:
        start = self._at(data)
        del data[start : start + self.rng.choice((1, 2, 4, 16, 64))]
        return data

    def _duplicate(self, data: bytearray) -> bytearray:
        start = self._at(data)
        piece = data[start : start + self.rng.choice((1, 4, 16, 256))]
        at = self._at(data)
        data[at:at] = piece * self.rng.choice((1, 2, 8))
        return data

    def _insert(self, data: bytearray) -> bytearray:
        at = self._at(data)
        data[at:at] = bytes(self.rng.randrange(256) for _ in range(self.rng.choice((1, 2, 4, 9))))
        return data

    def _truncate(self, data: bytearray) -> bytearray:
        return data[: self._at(data)]

    def _splice(self, data: bytearray) -> bytearray:
        other = self.rng.choice(self.pool)
        return data[: self._at(data)] + other[self.rng.randrange(len(other) + 1) :]

    def _swap(self, data: bytearray) -> bytearray:
        a, b = sorted((self._at(data), self._at(data)))
        c = self.rng.randrange(b, len(data) + 1)
        return data[:a] + data[b:c] + data[a:b] + data[c:]

    def _json(self, frame: bytes) -> bytes | None:
        try:
            value = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return None
        nodes: list[tuple[Any, Any]] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for key in node:
                    nodes.append((node, key))
                    walk(node[key])
            elif isinstance(node, list):
                for index in range(len(node)):
                    nodes.append((node, index))
                    walk(node[index])

        walk(value)
        if not nodes:
            return None
        rng = self.rng
        for _ in range(rng.choice((1, 1, 2, 3))):
            parent, key = rng.choice(nodes)
            choice = rng.random()
            # an earlier change may have taken the node away
            with contextlib.suppress(KeyError, IndexError):
                if choice < 0.5:
                    parent[key] = rng.choice(_INTERESTING_VALUES)
                elif choice < 0.65 and isinstance(parent, dict):
                    del parent[key]
                elif choice < 0.8:
                    parent[key] = [parent[key]] if rng.random() < 0.5 else {"v": parent[key]}
                else:
                    # a value from elsewhere in the frame, where a field of another type may be expected
                    other_parent, other_key = rng.choice(nodes)
                    parent[key] = other_parent[other_key]
        try:
            return orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError):
            return None


def attack(target: Callable[[bytes], object], frame: bytes, count: int, mutator: Mutator) -> int:
    """Feed ``count`` mutants of ``frame`` to ``target``, each within its deadline; return ``count``.

    A failing case is raised again with the mutator's seed and the case's bytes, to be replayed.
    """
    done, case = 0, frame
    try:
        # one deadline for the lot: each case takes microseconds, so any case that hangs trips it
        with bounded():
            for done in range(count):  # noqa: B007  (named in the report of a failing case)
                case = mutator(frame)
                target(case)
    except BaseException as exc:
        raise AssertionError(f"mutant {done} of {frame!r:.300} (seed {mutator.seed}): {case!r:.2000}: {exc!r}") from exc
    return count


def run_mutation_cases(target: Callable[[bytes], object], frames: list[bytes], cases: int) -> int:
    """Feed ``cases`` mutants of ``frames``, taken in turn, to a target that keeps no state between them."""
    mutator = Mutator(SEED, frames)
    done = 0
    while done < cases:
        for frame in frames:
            done += attack(target, frame, min(10, cases - done), mutator)
            if done >= cases:
                break
    return done
