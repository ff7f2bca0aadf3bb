"""SLO files: k6-style thresholds over the summary's figures, a verdict, and Prometheus rules for the same checks.

An SLO file maps a figure to a list of conditions; one line is a valid file::

    delivery_latency: ["p(99) < 300ms"]

Each condition may also be a mapping that can stop the run early::

    invariants.violations:
      - threshold: count == 0
        abort_on_fail: true
        grace: 30s

The file is read once with ``yaml.compose`` so every error names file, line and key, into
frozen dataclasses. :func:`evaluate` judges a summary dict (docs/summary.md) and is a pure
function, so the same code gives the live abort decision and the end-of-run verdict.
:func:`rules` writes Prometheus recording and alerting rules for the same thresholds over the
generator's metrics. docs/slo.md is the reference.
"""

from __future__ import annotations

import operator
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from loadgen.errors import ConfigError, compose_yaml
from loadgen.soak import UNITS as SOAK_UNITS

__all__ = [
    "Check",
    "CheckResult",
    "Condition",
    "Slo",
    "SloError",
    "add_rules_arguments",
    "aborting",
    "evaluate",
    "exit_code",
    "format_table",
    "load_slo",
    "loads_slo",
    "rules",
    "rules_command",
    "slo_block",
]


class SloError(ConfigError):
    """An SLO file that cannot be used; the message names file, line and key."""


# --- what can be judged -----------------------------------------------------------------

#: stat kinds: a latency (p(N), max), a count, or a rate (a fraction)
LATENCY, COUNT, RATE = "latency", "count", "rate"
#: soak stat kinds: a trend's slope per hour, of bytes or of a count, and its growth over the run (a fraction)
SLOPE_BYTES, SLOPE_COUNT, GROWTH = "slope_bytes", "slope_count", "growth"

DELIVERY = "delivery_latency"
MESSAGE_OUTCOMES = ("sent", "delivered", "lost", "duplicated", "out_of_order", "recovered")
ERRORS = "errors"
VIOLATIONS = "invariants.violations"
#: the soak verdict's series: ``soak.generator_rss``, ``soak.backend_fds`` …
SOAK = "soak."
#: how long reconnect storms took to bring their users back: the slowest storm's times
RECONNECT_STORMS = "reconnect_storms"
STORM_SHARES = ("50", "90", "99")
#: a storm some of whose users never came back has no time for that share: the check fails
NEVER_BACK = "never back"
#: what listeners heard (the summary's ``media`` block): rates, a count and two latencies. The times to
#: first audio are operations (``media.first_audio.join``, ``media.first_audio.seat``)
MEDIA_RATES = {"media.stall_rate": "stall_rate", "media.loss_rate": "loss_rate", "media.late_rate": "late_rate"}
MEDIA_STALLS = "media.stalls"
MEDIA_LATENCIES = {"media.frame_delay": "frame_delay_ms", "media.jitter": "jitter_ms"}
#: the top-level key of the generator's own settings, and the check it adds to every verdict
GENERATOR = "generator"
GENERATOR_VALID = "generator.valid"

#: percentiles the summary holds: the delivery histogram has p99.9, operations stop at p99
DELIVERY_PERCENTILES = ("50", "95", "99", "99.9")
OPERATION_PERCENTILES = ("50", "95", "99")

#: an operation name as the summary spells it: ``room.join``, ``seat.fanout``, ``ws.connect``
_OPERATION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
#: figure prefixes that are not operations
_RESERVED = ("messages.", "invariants.", "delivery_latency", "errors", SOAK, GENERATOR, RECONNECT_STORMS)

_CONDITION = re.compile(
    r"""^\s*(?P<stat>p\(\s*(?P<p>[0-9]+(?:\.[0-9]+)?)\s*\)|[a-z_][a-z0-9_]*)
        \s*(?P<op><=|>=|==|!=|<|>)
        \s*(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)
        \s*(?P<unit>[^\s0-9.]*)\s*$""",
    re.VERBOSE,
)

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
#: the operator that means "the condition is broken", for alert expressions
_BREACH = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}
_OP_WORDS = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}

#: latency units -> milliseconds per unit; a bare number is milliseconds
LATENCY_UNITS = {"ms": 1.0, "s": 1000.0, "us": 0.001, "µs": 0.001}
#: slope units of a byte series -> bytes per hour per unit; a bare number is bytes per hour
SLOPE_BYTE_UNITS = {"B/h": 1.0, "KB/h": 1e3, "MB/h": 1e6, "GB/h": 1e9, "KiB/h": 2.0**10, "MiB/h": 2.0**20,
                    "GiB/h": 2.0**30}  # fmt: skip
#: grace units -> seconds per unit; a bare number is seconds
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _stats_of(figure: str) -> dict[str, str]:
    """The stats a figure supports, each with its kind; empty for an unknown figure."""
    if figure == DELIVERY:
        return {"max": LATENCY, **{f"p({p})": LATENCY for p in DELIVERY_PERCENTILES}}
    if figure == ERRORS:
        return {"rate": RATE}
    if figure == RECONNECT_STORMS:
        return {"max": LATENCY, **{f"p({p})": LATENCY for p in STORM_SHARES}}
    if figure == VIOLATIONS or figure == MEDIA_STALLS:
        return {"count": COUNT}
    if figure in MEDIA_RATES:
        return {"value": RATE}
    if figure in MEDIA_LATENCIES:
        return {"max": LATENCY, **{f"p({p})": LATENCY for p in OPERATION_PERCENTILES}}
    if figure.startswith(SOAK):
        unit = SOAK_UNITS.get(figure.removeprefix(SOAK))
        if unit is None:
            return {}
        return {"slope": SLOPE_BYTES if unit == "bytes" else SLOPE_COUNT, "growth": GROWTH}
    if figure.startswith("messages."):
        return {"count": COUNT} if figure.removeprefix("messages.") in MESSAGE_OUTCOMES else {}
    if figure.startswith(_RESERVED) or not _OPERATION.match(figure):
        return {}
    stats = {f"p({p})": LATENCY for p in OPERATION_PERCENTILES}
    return {**stats, "max": LATENCY, "count": COUNT, "failures": COUNT, "rate": RATE}


# --- the parsed file ----------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One threshold: ``stat op number unit``, such as ``p(99) < 300ms`` or ``rate < 0.1%``."""

    stat: str  # p(99), max, count, failures, rate
    op: str  # < <= > >= == !=
    threshold: float  # in ``unit``
    unit: str  # ms, s, us, µs for latencies; % or "" for rates and growth; "" for counts; MB/h … for slopes
    kind: str  # LATENCY, COUNT, RATE, SLOPE_BYTES, SLOPE_COUNT or GROWTH
    number: str  # the number as written, kept for names and messages

    @property
    def expr(self) -> str:
        return f"{self.stat} {self.op} {self.number}{self.unit}"

    @property
    def base_threshold(self) -> float:
        """The threshold in base units: seconds for latencies, a fraction for rates, bytes per hour for slopes."""
        if self.kind == LATENCY:
            return self.threshold * LATENCY_UNITS[self.unit] / 1000
        if self.kind in (RATE, GROWTH) and self.unit == "%":
            return self.threshold / 100
        if self.kind == SLOPE_BYTES:
            return self.threshold * SLOPE_BYTE_UNITS[self.unit]
        return self.threshold


@dataclass(frozen=True)
class Check:
    """A figure and one condition on it, with what a breach does during the run."""

    figure: str
    condition: Condition
    abort_on_fail: bool = False
    grace: float = 0.0  # seconds after the test starts before a breach may abort it
    line: int | None = None

    @property
    def name(self) -> str:
        return f"{self.figure} {self.condition.expr}"

    @property
    def expr(self) -> str:
        return self.condition.expr


@dataclass(frozen=True)
class Slo:
    path: str
    checks: tuple[Check, ...]
    #: ``generator: {allow_suspect: true}``: a run the generator could not drive may still pass
    allow_suspect: bool = False


@dataclass(frozen=True)
class _ValidityCheck(Check):
    """``generator.valid``: added to every verdict; fails when the generator's guard marked the run suspect."""

    @property
    def name(self) -> str:
        return GENERATOR_VALID


VALIDITY = _ValidityCheck(
    GENERATOR_VALID, Condition(stat="suspect", op="==", threshold=0.0, unit="", kind=COUNT, number="0")
)


# --- reading ------------------------------------------------------------------------------


def _line(node: yaml.Node | None) -> int | None:
    return None if node is None else node.start_mark.line + 1


def _scalar(node: yaml.Node, path: str, key: str, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise SloError(path, _line(node), key, f"must be {what}")
    return node.value


def _condition(text: str, figure: str, path: str, line: int | None, key: str) -> Condition:
    found = _CONDITION.match(text)
    if found is None:
        raise SloError(
            path, line, key, f"cannot read condition {text!r}: write it as STAT OP NUMBER[UNIT], e.g. 'p(99) < 300ms'"
        )
    stat = found["stat"] if found["p"] is None else f"p({found['p']})"
    stats = _stats_of(figure)
    if stat not in stats and re.fullmatch(r"p[0-9]+", stat):
        raise SloError(path, line, key, f"write a percentile as p({stat[1:]}), not {stat}")
    if stat not in stats:
        if found["p"] is not None and any(s.startswith("p(") for s in stats):
            have = ", ".join(s for s in stats if s.startswith("p("))
            raise SloError(path, line, key, f"the summary has no {stat} for {figure} (it has {have})")
        raise SloError(path, line, key, f"{figure} has no {stat!r} (it has {', '.join(stats)})")
    kind = stats[stat]
    unit = found["unit"]
    number = found["number"]
    threshold = float(number)
    if kind == LATENCY:
        if unit == "":
            unit = "ms"
        elif unit not in LATENCY_UNITS:
            raise SloError(path, line, key, f"unknown unit {unit!r} for a latency (use ms, s, µs or us)")
    elif kind == SLOPE_BYTES:
        if unit == "":
            unit = "B/h"
        elif unit not in SLOPE_BYTE_UNITS:
            raise SloError(
                path, line, key, f"unknown unit {unit!r} for a memory slope (use {', '.join(SLOPE_BYTE_UNITS)})"
            )
    elif kind == SLOPE_COUNT:
        if unit not in ("", "/h"):
            raise SloError(path, line, key, f"unknown unit {unit!r} for a count's slope (use /h, or none: per hour)")
    elif kind == GROWTH:
        if unit not in ("", "%"):
            raise SloError(path, line, key, f"unknown unit {unit!r} for a growth (use a fraction such as 0.05, or %)")
    elif kind == RATE:
        if unit not in ("", "%"):
            raise SloError(path, line, key, f"unknown unit {unit!r} for a rate (use a fraction such as 0.001, or %)")
        if unit == "" and threshold > 1:
            raise SloError(
                path, line, key, f"a rate is a fraction from 0 to 1, got {number}; write {number}% for percent"
            )
        if unit == "%" and threshold > 100:
            raise SloError(path, line, key, f"a rate cannot exceed 100%, got {number}%")
    elif unit:
        raise SloError(path, line, key, f"a {stat} takes no unit, got {unit!r}")
    return Condition(stat=stat, op=found["op"], threshold=threshold, unit=unit, kind=kind, number=number)


def _duration(node: yaml.Node, path: str, key: str) -> float:
    text = _scalar(node, path, key, "a duration such as 30s").strip()
    found = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)", text)
    if found is None:
        raise SloError(path, _line(node), key, f"cannot read duration {text!r} (write e.g. 30s, 2m, 500ms)")
    unit = found[2] or "s"
    if unit not in DURATION_UNITS:
        raise SloError(path, _line(node), key, f"unknown unit {unit!r} for a duration (use ms, s, m or h)")
    return float(found[1]) * DURATION_UNITS[unit]


_ENTRY_KEYS = ("threshold", "abort_on_fail", "grace")


def _entry(figure: str, node: yaml.Node, path: str, key: str) -> Check:
    if isinstance(node, yaml.ScalarNode):
        text = _scalar(node, path, key, "a condition")
        return Check(figure, _condition(text, figure, path, _line(node), key), line=_line(node))
    if not isinstance(node, yaml.MappingNode):
        raise SloError(
            path, _line(node), key, "must be a condition such as 'p(99) < 300ms' or a mapping with threshold"
        )
    fields: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        name = _scalar(key_node, path, key, "a key")
        if name not in _ENTRY_KEYS:
            raise SloError(path, _line(key_node), f"{key}.{name}", f"unknown key (known: {', '.join(_ENTRY_KEYS)})")
        if name in fields:
            raise SloError(path, _line(key_node), f"{key}.{name}", "given twice")
        fields[name] = value_node
    if "threshold" not in fields:
        raise SloError(path, _line(node), f"{key}.threshold", "missing: give the condition, e.g. 'p(95) < 600ms'")
    threshold_node = fields["threshold"]
    text = _scalar(threshold_node, path, f"{key}.threshold", "a condition such as 'p(95) < 600ms'")
    condition = _condition(text, figure, path, _line(threshold_node), f"{key}.threshold")
    abort = False
    if "abort_on_fail" in fields:
        abort_node = fields["abort_on_fail"]
        abort = yaml.safe_load(yaml.serialize(abort_node)) if isinstance(abort_node, yaml.ScalarNode) else None
        if not isinstance(abort, bool):
            raise SloError(path, _line(abort_node), f"{key}.abort_on_fail", "must be true or false")
    grace = _duration(fields["grace"], path, f"{key}.grace") if "grace" in fields else 0.0
    return Check(figure, condition, abort_on_fail=abort, grace=grace, line=_line(node))


_GENERATOR_KEYS = ("allow_suspect",)


def _generator_settings(node: yaml.Node, path: str) -> bool:
    """``generator: {allow_suspect: true}``; whether a suspect run may pass."""
    if not isinstance(node, yaml.MappingNode):
        raise SloError(path, _line(node), GENERATOR, "must be a mapping such as {allow_suspect: true}")
    allow = False
    for key_node, value_node in node.value:
        name = _scalar(key_node, path, GENERATOR, "a key")
        if name not in _GENERATOR_KEYS:
            raise SloError(path, _line(key_node), f"{GENERATOR}.{name}",
                           f"unknown key (known: {', '.join(_GENERATOR_KEYS)})")  # fmt: skip
        value = yaml.safe_load(yaml.serialize(value_node)) if isinstance(value_node, yaml.ScalarNode) else None
        if not isinstance(value, bool):
            raise SloError(path, _line(value_node), f"{GENERATOR}.{name}", "must be true or false")
        allow = value
    return allow


def loads_slo(text: str, path: str = "<slo>") -> Slo:
    """Read and check an SLO file's text; ``path`` names it in errors."""
    root = compose_yaml(text, path, SloError)
    if root is None:
        raise SloError(path, None, "", "no checks: an SLO file maps figures to conditions, e.g. "
                       "delivery_latency: [\"p(99) < 300ms\"]")  # fmt: skip
    if not isinstance(root, yaml.MappingNode):
        raise SloError(path, _line(root), "", "must be a mapping of figures to lists of conditions")
    checks: list[Check] = []
    seen_figures: set[str] = set()
    seen_names: set[str] = set()
    allow_suspect = False
    for key_node, value_node in root.value:
        figure = _scalar(key_node, path, "", "a figure name such as delivery_latency")
        if figure in seen_figures:
            raise SloError(path, _line(key_node), figure, "given twice; list all its conditions under one key")
        seen_figures.add(figure)
        if figure == GENERATOR:
            allow_suspect = _generator_settings(value_node, path)
            continue
        stats = _stats_of(figure)
        if not stats:
            raise SloError(
                path,
                _line(key_node),
                figure,
                "unknown figure (known: delivery_latency, an operation name such as room.join, "
                f"{', '.join('messages.' + o for o in MESSAGE_OUTCOMES)}, errors, {VIOLATIONS}, "
                f"{', '.join(SOAK + name for name in SOAK_UNITS)}, {RECONNECT_STORMS}; "
                f"and {GENERATOR} for its settings)",
            )
        if isinstance(value_node, yaml.SequenceNode):
            if not value_node.value:
                raise SloError(path, _line(value_node), figure, "empty list: give at least one condition")
            entries = [(f"{figure}[{n}]", entry) for n, entry in enumerate(value_node.value)]
        else:
            entries = [(figure, value_node)]  # a single condition without the list brackets
        for key, entry in entries:
            check = _entry(figure, entry, path, key)
            if check.name in seen_names:
                raise SloError(path, check.line, key, f"the check {check.name!r} is given twice")
            seen_names.add(check.name)
            checks.append(check)
    return Slo(path=path, checks=tuple(checks), allow_suspect=allow_suspect)


def load_slo(path: str | Path) -> Slo:
    """Read and check an SLO file; every problem raises :class:`SloError` naming file, line and key."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SloError(path, None, "", f"cannot read: {exc.strerror}") from exc
    return loads_slo(text, path)


# --- judging a summary --------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    check: Check
    value: float | None  # in the condition's unit; None when there was nothing to measure
    passed: bool
    note: str | None = None  # why value is None: "not run" (passes) or "no samples" (fails)

    @property
    def name(self) -> str:
        return self.check.name

    @property
    def expr(self) -> str:
        return self.check.expr

    @property
    def abort_on_fail(self) -> bool:
        return self.check.abort_on_fail


NOT_RUN = "not run"
NO_SAMPLES = "no samples"


def _number(value) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _figure_value(check: Check, summary: dict) -> tuple[float | None, str | None]:
    """The figure in base units (ms for latencies, a fraction for rates), or None with the reason."""
    figure, stat = check.figure, check.condition.stat
    messages = summary.get("messages") or {}
    operations = summary.get("operations") or {}
    if figure == VIOLATIONS:
        return _number((summary.get("invariants") or {}).get("violations")), None
    if figure.startswith(SOAK):
        series = ((summary.get("soak") or {}).get("series") or {}).get(figure.removeprefix(SOAK))
        if series is None:
            return None, NOT_RUN
        if stat == "slope":
            value = series.get("slope_per_hour")
        else:
            growth = series.get("growth_percent")
            value = None if growth is None else growth / 100
        return (None, NO_SAMPLES) if value is None else (float(value), None)
    if figure.startswith("messages."):
        return _number(messages.get(figure.removeprefix("messages."))), None
    if figure == RECONNECT_STORMS:
        return _slowest_storm(summary, "time_to_all_ms" if stat == "max" else f"time_to_{stat[2:-1]}pct_ms")
    if figure in MEDIA_RATES or figure == MEDIA_STALLS or figure in MEDIA_LATENCIES:
        return _media_value(summary.get("media"), figure, stat)
    if figure == ERRORS:
        total = sum(_number(op.get("count")) for op in operations.values())
        if total == 0:
            return None, NOT_RUN
        return sum(_number(op.get("failures")) for op in operations.values()) / total, None
    key = "max" if stat == "max" else "p" + stat[2:-1].replace(".", "")
    if figure == DELIVERY:
        if _number(messages.get("delivered")) == 0:
            return None, NOT_RUN if _number(messages.get("sent")) == 0 else NO_SAMPLES
        return _number((messages.get("delivery_latency_ms") or {}).get(key)), None
    op = operations.get(figure)
    count = 0.0 if op is None else _number(op.get("count"))
    failures = 0.0 if op is None else _number(op.get("failures"))
    if stat == "count":
        return count, None
    if stat == "failures":
        return failures, None
    if count == 0:
        return None, NOT_RUN
    if stat == "rate":
        return failures / count, None
    refused = sum(_number(n) for n in (op.get("refusals") or {}).values())
    if count - failures - refused <= 0:  # attempted, but nothing succeeded to be timed
        return None, NO_SAMPLES
    return _number(op.get(f"{key}_ms")), None


def _media_value(audio: dict | None, figure: str, stat: str) -> tuple[float | None, str | None]:
    """A media figure: None (not run) without audio or before anything was heard."""
    if not audio:
        return (0.0, None) if figure == MEDIA_STALLS else (None, NOT_RUN)
    if figure == MEDIA_STALLS:
        return _number(audio.get("stalls")), None
    if figure in MEDIA_RATES:
        value = audio.get(MEDIA_RATES[figure])
        return (None, NOT_RUN) if value is None else (float(value), None)
    latency = audio.get(MEDIA_LATENCIES[figure]) or {}
    if not latency.get("count"):
        return None, NOT_RUN
    return _number(latency.get("max" if stat == "max" else "p" + stat[2:-1])), None


def _slowest_storm(summary: dict, key: str) -> tuple[float | None, str | None]:
    """The longest time any storm that happened took to bring that share of its users back."""
    storms = [s for s in (summary.get("reconnects") or {}).get("storms", ()) if s.get("happened")]
    if not storms:
        return None, NOT_RUN
    times = [storm.get(key) for storm in storms]
    if any(t is None for t in times):
        return None, NEVER_BACK
    return max(_number(t) for t in times), None


def _in_unit(base: float, condition: Condition) -> float:
    if condition.kind == LATENCY:
        value = base / LATENCY_UNITS[condition.unit]
    elif condition.kind in (RATE, GROWTH) and condition.unit == "%":
        value = base * 100
    elif condition.kind == SLOPE_BYTES:
        value = base / SLOPE_BYTE_UNITS[condition.unit]
    else:
        value = base
    return float(f"{value:.9g}")  # no 300.00000000000006 in a verdict


def evaluate(slo: Slo, summary: dict) -> list[CheckResult]:
    """Judge every check against a summary dict shaped like docs/summary.md.

    Counts are never missing: an absent count is zero. A percentile, max or rate of something
    the run never attempted has no value and passes (``note`` "not run"); add ``count > 0`` to
    require it. Something attempted with nothing to time (every call failed) fails ("no samples").

    A summary that carries the generator's guard (``generator.suspect``) also gets the check
    ``generator.valid``, 0 when valid and 1 when suspect, which fails a suspect run unless the
    file says ``generator: {allow_suspect: true}``.
    """
    results = []
    for check in slo.checks:
        base, note = _figure_value(check, summary)
        if base is None:
            results.append(CheckResult(check, None, note == NOT_RUN, note))
            continue
        value = _in_unit(base, check.condition)
        passed = OPERATORS[check.condition.op](value, check.condition.threshold)
        results.append(CheckResult(check, value, bool(passed)))
    generator = summary.get("generator") or {}
    if "suspect" in generator and not slo.allow_suspect:
        if (generator.get("guard") or {}).get("enabled") is False:
            # --no-guard: nobody watched, so the check cannot say the run was valid
            results.append(CheckResult(VALIDITY, None, True, NOT_RUN))
        else:
            suspect = 1.0 if generator["suspect"] else 0.0
            results.append(CheckResult(VALIDITY, suspect, suspect == 0))
    return results


def aborting(results: list[CheckResult], elapsed_s: float) -> list[CheckResult]:
    """The failed ``abort_on_fail`` checks whose grace is over: a non-empty list means stop the run."""
    return [
        r
        for r in results
        if r.check.abort_on_fail and not r.passed and r.value is not None and elapsed_s >= r.check.grace
    ]


def exit_code(results: list[CheckResult]) -> int:
    """0 when every check passed, 1 when one failed (DESIGN.md's exit codes with an SLO file)."""
    return 0 if all(r.passed for r in results) else 1


def slo_block(slo: Slo, results: list[CheckResult]) -> dict:
    """The summary's ``slo`` field."""
    return {
        "file": slo.path,
        "passed": all(r.passed for r in results),
        "checks": [
            {
                "name": r.name,
                "expr": r.expr,
                "value": r.value,
                "passed": r.passed,
                "abort_on_fail": r.abort_on_fail,
                "note": r.note,
            }
            for r in results
        ],
    }


def _shown(result: CheckResult) -> str:
    if result.value is None:
        return result.note or "no data"
    unit = result.check.condition.unit
    return f"{result.value:g}{unit}"


def format_table(results: list[CheckResult]) -> str:
    """The end-of-run SLO table for the log, one check a line and the verdict last."""
    rows = [("check", "value", "verdict")]
    rows += [(r.name, _shown(r), "pass" if r.passed else "FAIL") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c}" for a, b, c in rows]
    passed = sum(r.passed for r in results)
    verdict = "PASSED" if passed == len(results) else "FAILED"
    lines.append(f"SLO {verdict}: {passed} of {len(results)} checks passed")
    return "\n".join(lines)


# --- Prometheus rules ---------------------------------------------------------------------


def _sanitise(text: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^a-zA-Z0-9_]", "_", text)).strip("_")


def _record_name(check: Check) -> str:
    """The recording rule for a check's figure: one per figure and stat, shared by checks on it."""
    stat = check.condition.stat
    stat_part = "max" if stat == "max" else stat if not stat.startswith("p(") else "p" + stat[2:-1].replace(".", "")
    figure = _sanitise(check.figure)
    suffix = {LATENCY: "_seconds", RATE: "_ratio", COUNT: ""}[check.condition.kind]
    if check.figure.startswith("messages.") or check.figure in (VIOLATIONS, MEDIA_STALLS, *MEDIA_RATES):
        return f"loadgen:slo:{figure}{suffix}"
    if check.figure == ERRORS:
        return f"loadgen:slo:errors{suffix}"
    name = {"rate": "failure", "count": "count", "failures": "failures"}.get(stat, stat_part)
    return f"loadgen:slo:{figure}_{name}{suffix}"


def _alert_name(check: Check) -> str:
    condition = check.condition
    stat = condition.stat.replace("(", "").replace(")", "").replace(".", "")
    number = condition.number.replace(".", "_")
    unit = {"%": "pct", "µs": "us"}.get(condition.unit, condition.unit)
    words = [*re.split(r"[._]", check.figure), stat, _OP_WORDS[condition.op], f"{number}{unit}"]
    return "LoadgenSLOBreach" + "".join(w[:1].upper() + w[1:] for w in words if w)


#: a distributed run's master serves its workers' figures merged: summing over processes leaves it out
NOT_MASTER = 'and on (job, instance) loadgen_run_info{role!="master"}'


def _promql(check: Check, scenario: str | None, window: str) -> str:
    """The figure as PromQL, per scenario, in base units; percentiles merge every worker's buckets."""
    where = f'scenario="{scenario}"' if scenario else ""

    def sel(*matchers: str) -> str:
        inner = ",".join(m for m in (where, *matchers) if m)
        return "{" + inner + "}" if inner else ""

    def total(series: str) -> str:
        return f"sum by (scenario) ({series} {NOT_MASTER})"

    def per_second(series: str) -> str:
        return f"sum by (scenario) (rate({series}[{window}]) {NOT_MASTER})"

    figure, stat = check.figure, check.condition.stat
    if figure == VIOLATIONS:
        return total(f"loadgen_invariant_violations_total{sel()}")
    if figure == MEDIA_STALLS:
        return total(f"loadgen_media_stalls_total{sel()}")
    if figure == "media.stall_rate":
        stalled, listening = (
            f"loadgen_media_stalled_seconds_total{sel()}",
            f"loadgen_media_listening_seconds_total{sel()}",
        )
        return f"{per_second(stalled)}\n/ {per_second(listening)}"
    if figure in MEDIA_RATES:
        outcome = {"media.loss_rate": "lost", "media.late_rate": "late"}[figure]
        part = "loadgen_media_frames_total" + sel(f'outcome="{outcome}"')
        slots = "loadgen_media_frames_total" + sel('outcome=~"played|late|lost"')
        return f"{per_second(part)}\n/ {per_second(slots)}"
    if figure.startswith("messages."):
        return total("loadgen_messages_total" + sel('outcome="' + figure.removeprefix("messages.") + '"'))
    if figure == ERRORS:
        failures, operations = f"loadgen_operation_failures_total{sel()}", f"loadgen_operations_total{sel()}"
        return f"{per_second(failures)}\n/ {per_second(operations)}"
    if check.condition.kind == LATENCY:
        q = "1" if stat == "max" else repr(float(stat[2:-1]) / 100)
        if figure == DELIVERY:
            bucket = f"loadgen_delivery_latency_seconds_bucket{sel()}"
        elif figure in MEDIA_LATENCIES:
            bucket = f"loadgen_media_{figure.removeprefix('media.')}_seconds_bucket{sel()}"
        else:
            bucket = "loadgen_operation_duration_seconds_bucket" + sel(f'op="{figure}"')
        return f"histogram_quantile({q}, sum by (scenario, le) (rate({bucket}[{window}]) {NOT_MASTER}))"
    op = sel(f'op="{figure}"')
    if stat == "count":
        return total(f"loadgen_operations_total{op}")
    if stat == "failures":
        return total(f"loadgen_operation_failures_total{op}")
    return f"{per_second(f'loadgen_operation_failures_total{op}')}\n/ {per_second(f'loadgen_operations_total{op}')}"


def _prom_number(value: float) -> str:
    text = repr(float(f"{value:.12g}"))
    return text.removesuffix(".0")


def _prom_duration(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


class _Literal(str):
    """A multi-line string written as a YAML block scalar."""


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style="|" if "\n" in value else None)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _literal)


def rules(slo: Slo, scenario_label: str | None = None, window: str = "5m") -> str:
    """Prometheus rules for the SLO: a recording rule per figure and an alert per check, as YAML.

    Counts are run totals (what the summary counts); percentiles and rates look at the last
    ``window``. Without ``scenario_label`` every scenario is judged on its own series.
    """
    if scenario_label is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]+", scenario_label):
        raise ValueError(f"scenario label {scenario_label!r} has characters a label value here may not")
    if not re.fullmatch(r"[0-9]+(ms|s|m|h|d)", window):
        raise ValueError(f"window {window!r} is not a Prometheus duration such as 5m")
    recorded: dict[str, str] = {}
    alerts = []
    for check in slo.checks:
        if check.figure.startswith(SOAK) or check.figure == RECONNECT_STORMS:
            continue  # a trend over the whole run, or a storm's recovery, judged from the summary: no series
        record = _record_name(check)
        expr = _promql(check, scenario_label, window)
        if recorded.setdefault(record, expr) != expr:  # only operation names such as a.b_c and a_b.c collide
            raise ValueError(f"two figures share the recording rule name {record}; rename one operation")
        threshold = _prom_number(check.condition.base_threshold)
        unit = {LATENCY: " seconds", RATE: " (fraction)", COUNT: ""}[check.condition.kind]
        alerts.append(
            {
                "alert": _alert_name(check),
                "expr": f"{record} {_BREACH[check.condition.op]} {threshold}",
                "for": _prom_duration(check.grace) if check.grace > 0 else "1m",
                "labels": {"severity": "critical" if check.abort_on_fail else "warning", "slo_check": check.name},
                "annotations": {
                    "summary": f"SLO check {check.name!r} is failing for scenario {{{{ $labels.scenario }}}}",
                    "description": f"{check.name}: the figure is {{{{ $value }}}}{unit}, "
                    f"the threshold {threshold}{unit} (SLO file {slo.path}).",
                },
            }
        )
    group = {
        "name": "loadgen-slo",
        "rules": [{"record": name, "expr": _Literal(expr)} for name, expr in recorded.items()] + alerts,
    }
    header = f"# Generated by `loadgen rules {slo.path}` from the SLO file; edit that file, not this one.\n"
    return header + yaml.dump({"groups": [group]}, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


# --- `loadgen rules` ----------------------------------------------------------------------


def add_rules_arguments(parser) -> None:
    """The arguments of ``loadgen rules SLO_FILE [-o OUT]``."""
    parser.add_argument("slo_file", metavar="SLO_FILE", help="the SLO file (see docs/slo.md)")
    parser.add_argument("-o", "--output", metavar="OUT", help="write the rules here instead of to standard output")
    parser.add_argument(
        "--scenario", metavar="NAME", help="judge only series with this scenario label (default: each scenario)"
    )
    parser.add_argument(
        "--window", default="5m", help="range for percentiles and rates, a Prometheus duration (default: 5m)"
    )


def rules_command(args) -> int:
    """Run ``loadgen rules``: 0 when written, 2 with a message naming file, line and key when not."""
    try:
        text = rules(load_slo(args.slo_file), scenario_label=args.scenario, window=args.window)
    except ValueError as exc:  # an SloError, or a bad --scenario or --window
        sys.stderr.write(f"loadgen rules: {exc}\n")
        return 2
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        sys.stderr.write(f"loadgen rules: {args.output}: cannot write: {exc.strerror}\n")
        return 2
    return 0
