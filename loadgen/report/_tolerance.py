"""Tolerance files: how much worse than the baseline a candidate may be before it has regressed.

A flat mapping from a figure to its allowance (docs/report.md; example in
``locustfiles/tolerance.yaml``)::

    latency: 20% or 5ms            # every latency percentile: the larger of the two
    delivery_latency p(99): 20ms   # one percentile of one figure
    ws.connect: ignore             # shown, never judged
    errors: 0.1%                   # the error rate may grow by 0.1 percentage point
    invariants.violations: 0

Read with ``yaml.compose`` like SLO files, so every mistake names file, line and key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from loadgen.errors import ConfigError, compose_yaml

LATENCY, RATE, COUNT = "latency", "rate", "count"
DELIVERY = "delivery_latency"
RATE_FIGURES = ("errors", "messages.lost", "messages.duplicated", "messages.out_of_order")
VIOLATIONS = "invariants.violations"
JUDGED_PERCENTILES = ("p(50)", "p(95)", "p(99)")
#: milliseconds per unit
LATENCY_UNITS = {"ms": 1.0, "s": 1000.0, "us": 0.001, "µs": 0.001}

_OPERATION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
_KEY = re.compile(r"^(?P<figure>[^\s]+)(?:\s+(?P<stat>p\(\s*[0-9.]+\s*\)))?$")
_NUMBER = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_KNOWN = (
    "latency, delivery_latency, an operation such as room.join, either with a percentile "
    f"(delivery_latency p(99)), {', '.join(RATE_FIGURES)}, {VIOLATIONS}"
)


class ToleranceError(ConfigError):
    """A tolerance file that cannot be used; the message names file, line and key."""


@dataclass(frozen=True)
class Allowance:
    """How far a figure may move the wrong way: the larger of ``share`` of the baseline and ``amount``.

    ``amount`` is in ms for latencies, a fraction for rates (0.001 is 0.1 percentage point) and a
    count for violations.
    """

    share: float = 0.0
    amount: float = 0.0
    ignore: bool = False
    source: str = "default"

    def allowed(self, baseline: float) -> float:
        return max(self.share * abs(baseline), self.amount)

    def describe(self, kind: str) -> str:
        if self.ignore:
            return "ignored"
        parts = []
        if self.share:
            parts.append(f"{self.share * 100:g}%")
        if self.amount or not parts:
            if kind == LATENCY:
                parts.append(f"{self.amount:g} ms")
            elif kind == RATE:
                parts.append(f"{self.amount * 100:g} pp")
            else:
                parts.append(f"{self.amount:g}")
        return " or ".join(parts)


#: the defaults: tiny loopback latencies jittering from 1 ms to 2 ms are not regressions, +30 ms is
DEFAULTS = {
    LATENCY: Allowance(share=0.20, amount=5.0),
    "errors": Allowance(amount=0.001),
    "messages.lost": Allowance(amount=0.0001),
    "messages.duplicated": Allowance(amount=0.0001),
    "messages.out_of_order": Allowance(amount=0.0001),
    VIOLATIONS: Allowance(amount=0.0),
}


@dataclass(frozen=True)
class Tolerance:
    path: str | None = None
    entries: dict[str, Allowance] = field(default_factory=dict)

    def latency(self, figure: str, stat: str) -> Allowance:
        """The allowance of one percentile: its own key, else its figure's, else ``latency``."""
        for key in (f"{figure} {stat}", figure, LATENCY):
            if key in self.entries:
                return self.entries[key]
        return DEFAULTS[LATENCY]

    def figure(self, name: str) -> Allowance:
        return self.entries.get(name, DEFAULTS[name])

    def operations(self) -> set[str]:
        """The operations the file names, to warn about those neither run performed."""
        names = {key.split(" ")[0] for key in self.entries}
        return {name for name in names if name not in (LATENCY, DELIVERY, VIOLATIONS, *RATE_FIGURES)}


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _kind(key: str, path: str, line: int) -> str:
    found = _KEY.match(key)
    figure, stat = (found["figure"], found["stat"]) if found else (key, None)
    bare = re.fullmatch(r"\S+\s+p([0-9.]+)", key)
    if bare is not None:
        raise ToleranceError(path, line, key, f"write a percentile as p({bare[1]})")
    if figure in ("throughput", "messages.sent", "messages.delivered", "messages.recovered"):
        raise ToleranceError(path, line, key, "shown for information, never judged: it takes no tolerance")
    if figure == LATENCY or figure in RATE_FIGURES or figure == VIOLATIONS:
        if stat is not None:
            raise ToleranceError(path, line, key, f"{figure} takes no percentile")
        return {LATENCY: LATENCY, VIOLATIONS: COUNT}.get(figure, RATE)
    known = figure == DELIVERY or (_OPERATION.match(figure) and not figure.startswith(("messages.", "invariants.")))
    if found is None or not known:
        raise ToleranceError(path, line, key, f"unknown figure (known: {_KNOWN})")
    if stat is not None and re.sub(r"\s", "", stat) not in JUDGED_PERCENTILES:
        raise ToleranceError(path, line, key, f"compare judges {', '.join(JUDGED_PERCENTILES)}, not {stat}")
    return LATENCY


def _latency(text: str, path: str, line: int, key: str) -> Allowance:
    share = amount = None
    for part in re.split(r"\s+or\s+", text.strip()):
        found = re.fullmatch(_NUMBER + r"\s*(%|ms|s|us|µs)?", part.strip())
        if found is None or found[2] is None:
            raise ToleranceError(
                path, line, key, f"cannot read {text!r}: write a share, an amount or both, e.g. '20% or 5ms'"
            )
        value = float(found[1])
        if found[2] == "%":
            if share is not None:
                raise ToleranceError(path, line, key, f"{text!r} gives a share twice")
            share = value / 100
        else:
            if amount is not None:
                raise ToleranceError(path, line, key, f"{text!r} gives an amount twice")
            amount = value * LATENCY_UNITS[found[2]]
    return Allowance(share=share or 0.0, amount=amount or 0.0, source=f"{path}:{line}")


def _rate(text: str, path: str, line: int, key: str) -> Allowance:
    found = re.fullmatch(_NUMBER + r"\s*(%?)", text.strip())
    if found is None:
        raise ToleranceError(path, line, key, f"cannot read {text!r}: write percentage points such as 0.1%")
    value = float(found[1])
    if found[2] == "%":
        if value > 100:
            raise ToleranceError(path, line, key, f"a rate cannot grow by more than 100%, got {text}")
        value /= 100
    elif value > 1:
        raise ToleranceError(path, line, key, f"a bare rate is a fraction from 0 to 1, got {text}; write {text}%")
    return Allowance(amount=value, source=f"{path}:{line}")


def _count(text: str, path: str, line: int, key: str) -> Allowance:
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise ToleranceError(path, line, key, f"must be a count such as 0, got {text!r}")
    return Allowance(amount=float(text), source=f"{path}:{line}")


def loads_tolerance(text: str, path: str = "<tolerance>") -> Tolerance:
    """Read and check a tolerance file's text; ``path`` names it in errors."""
    root = compose_yaml(text, path, ToleranceError)
    if root is None:
        raise ToleranceError(path, None, "", "empty: name at least one figure, e.g. 'latency: 20% or 5ms'")
    if not isinstance(root, yaml.MappingNode):
        raise ToleranceError(path, _line(root), "", "must be a mapping of figures to allowances")
    entries: dict[str, Allowance] = {}
    for key_node, value_node in root.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise ToleranceError(path, _line(key_node), "", "a key must be a figure name such as delivery_latency")
        key = re.sub(r"\s+", " ", key_node.value.strip())
        key = re.sub(r"p\(\s*([0-9.]+)\s*\)", r"p(\1)", key)
        line = _line(key_node)
        kind = _kind(key, path, line)
        if key in entries:
            raise ToleranceError(path, line, key, "given twice")
        if not isinstance(value_node, yaml.ScalarNode) or value_node.value == "":
            raise ToleranceError(path, _line(value_node), key, "must be an allowance such as '20% or 5ms', or ignore")
        value = value_node.value
        if value.strip() == "ignore":
            entries[key] = Allowance(ignore=True, source=f"{path}:{line}")
        else:
            read = {LATENCY: _latency, RATE: _rate, COUNT: _count}[kind]
            entries[key] = read(value, path, _line(value_node), key)
    return Tolerance(path=path, entries=entries)


def load_tolerance(path: str | Path) -> Tolerance:
    """Read and check a tolerance file; every problem raises :class:`ToleranceError` naming file, line and key."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ToleranceError(path, None, "", f"cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
    return loads_tolerance(text, path)
