"""SLO files: parsing, errors naming file, line and key, the verdict, and Prometheus rules checked by promtool."""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess

import pytest
import yaml

from loadgen import slo
from loadgen.slo import SloError, evaluate, format_table, load_slo, loads_slo, rules, slo_block
from tests.support import ROOT, SCALE

REVIEW = ROOT / "locustfiles" / "slo" / "review.yaml"
RULES_TEST = ROOT / "tests" / "slo" / "review_rules_test.yaml"

SUMMARY = {
    "scenario": "voiceroom",
    "messages": {
        "sent": 1000,
        "delivered": 9000,
        "lost": 0,
        "duplicated": 2,
        "out_of_order": 0,
        "recovered": 5,
        "delivery_latency_ms": {"p50": 1.0, "p95": 120.0, "p99": 250.0, "p999": 400.0, "max": 900.0},
    },
    "operations": {
        "room.join": {"count": 1000, "failures": 1, "p50_ms": 10.0, "p95_ms": 550.0, "p99_ms": 700.0, "max_ms": 1200.0},
        "seat.take": {
            "count": 400,
            "failures": 0,
            "p50_ms": 5.0,
            "p95_ms": 80.0,
            "p99_ms": 90.0,
            "max_ms": 95.0,
            "refusals": {"taken": 100},
        },
    },
    "invariants": {"violations": 0, "by_kind": {}},
}


def one(text: str, summary: dict | None = None) -> slo.CheckResult:
    [result] = evaluate(loads_slo(text, "t.yaml"), SUMMARY if summary is None else summary)
    return result


def error(text: str) -> str:
    with pytest.raises(SloError) as caught:
        loads_slo(text, "slo.yaml")
    return str(caught.value)


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is not installed: apt-get install -y prometheus"
    return path


# --- parsing ------------------------------------------------------------------------------


def test_a_one_line_file_is_valid():
    """A single figure with a one-item flow list is a complete SLO file."""
    [check] = loads_slo('delivery_latency: ["p(99) < 300ms"]', "one.yaml").checks
    assert check.figure == "delivery_latency"
    assert (check.condition.stat, check.condition.op, check.condition.threshold, check.condition.unit) == (
        "p(99)",
        "<",
        300.0,
        "ms",
    )
    assert check.name == "delivery_latency p(99) < 300ms"
    assert (check.abort_on_fail, check.grace, check.line) == (False, 0.0, 1)


def test_every_entry_form_parses():
    """Block lists, flow lists, a bare string and the mapping form with abort_on_fail and grace all parse."""
    text = (
        "room.join:\n"
        "  - p(95)<600\n"
        "  - threshold: rate < 1%\n"
        "    abort_on_fail: true\n"
        "    grace: 2m\n"
        "seat.take: count > 10\n"
        "errors: ['rate <= 0.001']\n"
        "messages.lost: [count == 0]\n"
        "invariants.violations: [count == 0]\n"
        "delivery_latency: ['p(99.9) < 0.5s', 'max < 900000us', 'p(50) != 3µs']\n"
    )
    checks = loads_slo(text, "all.yaml").checks
    assert [c.name for c in checks] == [
        "room.join p(95) < 600ms",
        "room.join rate < 1%",
        "seat.take count > 10",
        "errors rate <= 0.001",
        "messages.lost count == 0",
        "invariants.violations count == 0",
        "delivery_latency p(99.9) < 0.5s",
        "delivery_latency max < 900000us",
        "delivery_latency p(50) != 3µs",
    ]
    assert (checks[1].abort_on_fail, checks[1].grace, checks[1].line) == (True, 120.0, 3)
    assert checks[6].condition.base_threshold == 0.5
    assert checks[1].condition.base_threshold == 0.01


def test_the_review_file_holds_the_review_checks():
    """The shipped review SLO has the seven review checks, the invariant one aborting after 30 s."""
    review = load_slo(REVIEW)
    assert [c.name for c in review.checks] == [
        "delivery_latency p(99) < 300ms",
        "messages.lost count == 0",
        "room.join p(95) < 600ms",
        "seat.take p(95) < 600ms",
        "call.setup p(95) < 600ms",
        "errors rate < 0.1%",
        "invariants.violations count == 0",
    ]
    assert [(c.abort_on_fail, c.grace) for c in review.checks][-1] == (True, 30.0)
    assert not any(c.abort_on_fail for c in review.checks[:-1])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("delivery_latency: [p(99) < 300ms\n", "slo.yaml:2: not valid YAML"),
        ("room.join: [count > 0]\nroom_join: [count == 0]\n", "slo.yaml:2: room_join: unknown figure"),
        ("messages.eaten: [count == 0]\n", "slo.yaml:1: messages.eaten: unknown figure"),
        (
            "room.join:\n  - p(95) < 600ms\n  - p95 < 600ms\n",
            "slo.yaml:3: room.join[1]: write a percentile as p(95), not p95",
        ),
        ("room.join:\n  - p(95) 600ms\n", "slo.yaml:2: room.join[0]: cannot read condition 'p(95) 600ms'"),
        ("room.join: [p(95) < 6min]\n", "slo.yaml:1: room.join[0]: unknown unit 'min' for a latency"),
        ("room.join: [p(99.9) < 6s]\n", "slo.yaml:1: room.join[0]: the summary has no p(99.9) for room.join"),
        (
            "errors: [rate < 5]\n",
            "slo.yaml:1: errors[0]: a rate is a fraction from 0 to 1, got 5; write 5% for percent",
        ),
        ("messages.lost: [count == 0ms]\n", "slo.yaml:1: messages.lost[0]: a count takes no unit"),
        ("errors: [count == 0]\n", "slo.yaml:1: errors[0]: errors has no 'count' (it has rate)"),
        (
            "invariants.violations:\n  - threshold: count == 0\n    abort_on_fial: true\n",
            "slo.yaml:3: invariants.violations[0].abort_on_fial: unknown key (known: threshold, abort_on_fail, grace)",
        ),
        ("room.join:\n  - abort_on_fail: true\n", "slo.yaml:2: room.join[0].threshold: missing"),
        ("room.join:\n  - threshold: count > 1\n    grace: soon\n", "slo.yaml:3: room.join[0].grace: cannot read"),
        ("room.join:\n  - threshold: count > 1\n    grace: 3d\n", "slo.yaml:3: room.join[0].grace: unknown unit 'd'"),
        (
            "room.join:\n  - threshold: count > 1\n    abort_on_fail: yes please\n",
            "slo.yaml:3: room.join[0].abort_on_fail",
        ),
        ("room.join: [count > 1]\nroom.join: [count > 2]\n", "slo.yaml:2: room.join: given twice"),
        ("room.join: [count > 1, count > 1]\n", "slo.yaml:1: room.join[1]: the check 'room.join count > 1' is given"),
        ("room.join: []\n", "slo.yaml:1: room.join: empty list"),
        ("- room.join\n", "slo.yaml:1: must be a mapping"),
        ("# nothing yet\n", "slo.yaml: no checks"),
    ],
)
def test_every_error_names_file_line_and_key(text, expected):
    """Each kind of mistake raises SloError whose message starts with file:line: key: and says what is wrong."""
    assert error(text).startswith(expected)


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    """An unreadable SLO file raises SloError naming the path."""
    with pytest.raises(SloError, match="nope.yaml: cannot read"):
        load_slo(tmp_path / "nope.yaml")


# --- evaluation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "passed"),
    [
        ("delivery_latency: [p(99) < 300ms]", 250.0, True),
        ("delivery_latency: [p(99) < 250]", 250.0, False),
        ("delivery_latency: [p(99) <= 250]", 250.0, True),
        ("delivery_latency: [p(99.9) < 0.3s]", 0.4, False),
        ("delivery_latency: [p(50) >= 1000us]", 1000.0, True),
        ("delivery_latency: [max < 1s]", 0.9, True),
        ("room.join: [p(95) < 600ms]", 550.0, True),
        ("room.join: [p(99) < 600ms]", 700.0, False),
        ("room.join: [count > 999]", 1000.0, True),
        ("room.join: [failures == 0]", 1.0, False),
        ("room.join: [rate < 0.1%]", 0.1, False),
        ("room.join: [rate <= 0.1%]", 0.1, True),
        ("room.join: [rate < 0.01]", 0.001, True),
        ("errors: [rate < 0.1%]", 1 / 1400 * 100, True),
        ("errors: [rate < 0.0007]", 1 / 1400, False),
        ("messages.lost: [count == 0]", 0.0, True),
        ("messages.duplicated: [count == 0]", 2.0, False),
        ("messages.recovered: [count != 0]", 5.0, True),
        ("invariants.violations: [count == 0]", 0.0, True),
    ],
)
def test_checks_pass_and_fail_on_a_summary(text, value, passed):
    """A condition is judged on the summary's figure, reported in the condition's own unit."""
    result = one(text)
    assert result.value == pytest.approx(value)
    assert result.passed is passed


def test_operations_never_run_pass_percentiles_and_fail_required_counts():
    """An operation absent from the summary is 'not run': percentiles and rates pass, counts are zero."""
    assert (one("call.setup: [p(95) < 600ms]").value, one("call.setup: [p(95) < 600ms]").passed) == (None, True)
    assert one("call.setup: [p(95) < 600ms]").note == "not run"
    assert one("call.setup: [rate < 1%]").passed is True
    assert (one("call.setup: [count > 0]").value, one("call.setup: [count > 0]").passed) == (0.0, False)
    assert one("call.setup: [failures == 0]").passed is True


def test_an_operation_with_nothing_timed_fails_its_percentiles():
    """An operation that ran but never succeeded has no samples, so a latency condition on it fails."""
    summary = copy.deepcopy(SUMMARY)
    summary["operations"]["call.setup"] = {"count": 5, "failures": 3, "p95_ms": 0.0, "refusals": {"busy": 2}}
    result = one("call.setup: [p(95) < 600ms]", summary)
    assert (result.value, result.passed, result.note) == (None, False, "no samples")


def test_delivery_latency_without_deliveries():
    """No delivery latency is judged without deliveries: not run when nothing was sent, failed when all was lost."""
    summary = copy.deepcopy(SUMMARY)
    summary["messages"].update(sent=0, delivered=0)
    assert one("delivery_latency: [p(99) < 300ms]", summary).passed is True
    summary["messages"]["sent"] = 10
    assert one("delivery_latency: [p(99) < 300ms]", summary).passed is False


AUDIO = {
    "media": {
        "loss_rate": 0.05,
        "late_rate": 0.002,
        "stall_rate": 0.004,
        "stalls": 3,
        "frame_delay_ms": {"p50": 12.0, "p95": 40.0, "p99": 90.0, "max": 300.0, "count": 5000},
        "jitter_ms": {"p50": 1.0, "p95": 4.0, "p99": 9.0, "max": 20.0, "count": 100},
    }
}


@pytest.mark.parametrize(
    ("text", "value", "passed"),
    [
        ("media.stall_rate: ['value < 1%']", 0.4, True),
        ("media.loss_rate: ['value < 0.02']", 0.05, False),
        ("media.late_rate: ['value <= 0.2%']", 0.2, True),
        ("media.stalls: ['count == 0']", 3.0, False),
        ("media.frame_delay: ['p(99) < 100ms']", 90.0, True),
        ("media.jitter: ['max < 10ms']", 20.0, False),
    ],
)
def test_media_figures_are_judged_on_the_media_block(text, value, passed):
    """Stall, loss and late rates, stalls, frame delay and jitter are read from the summary's media block."""
    result = one(text, {**SUMMARY, **AUDIO})
    assert (result.value, result.passed) == (pytest.approx(value), passed)


def test_media_figures_of_a_run_without_audio_are_not_run():
    """Without a media block the rates and latencies are 'not run' and pass; stalls count zero."""
    for text in ("media.stall_rate: ['value < 1%']", "media.jitter: ['p(95) < 30ms']"):
        result = one(text)
        assert (result.value, result.passed, result.note) == (None, True, "not run")
    assert one("media.stalls: ['count > 0']").passed is False
    assert "has no 'p(95)'" in error("media.stall_rate: ['p(95) < 1%']")


def test_media_rules_divide_the_media_counters():
    """The rules for media rates divide rates of the media counters; the latencies are their histograms' quantiles."""
    text = "media.loss_rate: ['value < 2%']\nmedia.stall_rate: ['value < 1%']\nmedia.jitter: ['p(95) < 30ms']\n"
    [group] = yaml.safe_load(rules(loads_slo(text, "t.yaml")))["groups"]
    records = {r["record"]: r["expr"] for r in group["rules"] if "record" in r}
    assert 'loadgen_media_frames_total{outcome="lost"}' in records["loadgen:slo:media_loss_rate_ratio"]
    assert 'outcome=~"played|late|lost"' in records["loadgen:slo:media_loss_rate_ratio"]
    assert "loadgen_media_stalled_seconds_total" in records["loadgen:slo:media_stall_rate_ratio"]
    assert "loadgen_media_jitter_seconds_bucket" in records["loadgen:slo:media_jitter_p95_seconds"]


def test_an_empty_summary_fails_nothing_that_counts_zero():
    """Against an empty summary, 'count == 0' checks pass and a throughput floor fails."""
    results = evaluate(loads_slo("messages.lost: [count == 0]\nmessages.sent: [count > 100]\n", "t.yaml"), {})
    assert [(r.value, r.passed) for r in results] == [(0.0, True), (0.0, False)]


def test_abort_needs_a_failed_abort_check_past_its_grace():
    """aborting() names failed abort_on_fail checks only once their grace is over."""
    text = (
        "invariants.violations:\n"
        "  - {threshold: count == 0, abort_on_fail: true, grace: 30s}\n"
        "messages.lost: [count == 0]\n"
    )
    summary = copy.deepcopy(SUMMARY)
    summary["invariants"]["violations"] = 1
    summary["messages"]["lost"] = 3
    results = evaluate(loads_slo(text, "t.yaml"), summary)
    assert slo.aborting(results, 29.0) == []
    assert [r.name for r in slo.aborting(results, 30.0)] == ["invariants.violations count == 0"]
    assert slo.exit_code(results) == 1
    assert slo.exit_code(evaluate(loads_slo(text, "t.yaml"), SUMMARY)) == 0


def test_slo_block_has_the_summary_shape():
    """slo_block gives the file, the overall verdict and each check's name, expr, value, verdict and abort flag."""
    review = load_slo(REVIEW)
    block = slo_block(review, evaluate(review, SUMMARY))
    assert block["file"] == str(REVIEW)
    assert block["passed"] is True
    assert block["checks"][0] == {
        "name": "delivery_latency p(99) < 300ms",
        "expr": "p(99) < 300ms",
        "value": 250.0,
        "passed": True,
        "abort_on_fail": False,
        "note": None,
    }
    assert block["checks"][4]["value"] is None and block["checks"][4]["note"] == "not run"
    assert block["checks"][-1]["abort_on_fail"] is True
    failing = copy.deepcopy(SUMMARY)
    failing["messages"]["lost"] = 1
    assert slo_block(review, evaluate(review, failing))["passed"] is False


def test_the_table_shows_each_check_and_the_verdict():
    """format_table prints a line per check with its value and verdict, then the overall verdict."""
    review = load_slo(REVIEW)
    summary = copy.deepcopy(SUMMARY)
    summary["messages"]["lost"] = 4
    lines = format_table(evaluate(review, summary)).splitlines()
    assert lines[1].split() == ["delivery_latency", "p(99)", "<", "300ms", "250ms", "pass"]
    assert lines[2].split() == ["messages.lost", "count", "==", "0", "4", "FAIL"]
    assert "not run" in lines[5]
    assert lines[-1] == "SLO FAILED: 6 of 7 checks passed"


# --- Prometheus rules ---------------------------------------------------------------------


def test_rules_have_a_recording_rule_and_an_alert_per_check():
    """rules() writes one group with a recording rule per figure and an alert per check over the generator metrics."""
    review = load_slo(REVIEW)
    [group] = yaml.safe_load(rules(review, scenario_label="voiceroom"))["groups"]
    assert group["name"] == "loadgen-slo"
    records = {r["record"]: r["expr"] for r in group["rules"] if "record" in r}
    alerts = {r["alert"]: r for r in group["rules"] if "alert" in r}
    assert len(records) == len(alerts) == len(review.checks)
    assert records["loadgen:slo:delivery_latency_p99_seconds"] == (
        "histogram_quantile(0.99, sum by (scenario, le) "
        '(rate(loadgen_delivery_latency_seconds_bucket{scenario="voiceroom"}[5m]) '
        'and on (job, instance) loadgen_run_info{role!="master"}))'
    )
    assert 'op="room.join"' in records["loadgen:slo:room_join_p95_seconds"]
    assert records["loadgen:slo:messages_lost"] == (
        'sum by (scenario) (loadgen_messages_total{scenario="voiceroom",outcome="lost"} '
        'and on (job, instance) loadgen_run_info{role!="master"})'
    )
    lost = alerts["LoadgenSLOBreachMessagesLostCountEq0"]
    assert (lost["expr"], lost["for"], lost["labels"]["severity"]) == (
        "loadgen:slo:messages_lost != 0",
        "1m",
        "warning",
    )
    assert "messages.lost count == 0" in lost["annotations"]["summary"]
    assert alerts["LoadgenSLOBreachErrorsRateLt0_1pct"]["expr"] == "loadgen:slo:errors_ratio >= 0.001"
    violations = alerts["LoadgenSLOBreachInvariantsViolationsCountEq0"]
    assert (violations["for"], violations["labels"]["severity"]) == ("30s", "critical")


def test_promtool_accepts_the_rules(tmp_path):
    """promtool check rules accepts the rules for the review file and for every kind of figure."""
    every = (
        "delivery_latency: ['p(99.9) < 1s', 'max < 2s', 'p(50) < 500us']\n"
        "seat.fanout: ['p(99) < 300', 'max < 1s', 'count > 0', 'failures == 0', 'rate < 1%']\n"
        "messages.out_of_order: [count == 0]\n"
        "errors: [rate < 0.001]\n"
        "invariants.violations: [{threshold: count == 0, abort_on_fail: true, grace: 1.5s}]\n"
        "media.stall_rate: ['value < 1%']\nmedia.late_rate: ['value < 1%']\nmedia.stalls: ['count < 5']\n"
        "media.frame_delay: ['p(99) < 150ms']\n"
    )
    for name, source in [("review", REVIEW.read_text()), ("every", every)]:
        path = tmp_path / f"{name}-rules.yaml"
        path.write_text(rules(loads_slo(source, f"{name}.yaml"), scenario_label="chat" if name == "every" else None))
        done = subprocess.run(
            [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60 * SCALE
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_show_the_alerts_fire(tmp_path):
    """With synthetic series, promtool test rules sees the lost-message, latency and invariant alerts fire on time."""
    (tmp_path / "review-rules.yaml").write_text(rules(loads_slo(REVIEW.read_text(), "review.yaml")))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    done = subprocess.run(
        [promtool(), "test", "rules", RULES_TEST.name], cwd=tmp_path, capture_output=True, text=True, timeout=60 * SCALE
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_command_prints_writes_and_rejects(tmp_path, capsys):
    """`loadgen rules` prints the rules, writes them with -o, and exits 2 naming file:line:key on a bad file."""
    parser = argparse.ArgumentParser()
    slo.add_rules_arguments(parser)
    assert slo.rules_command(parser.parse_args([str(REVIEW)])) == 0
    assert "loadgen:slo:messages_lost" in capsys.readouterr().out
    out = tmp_path / "rules.yaml"
    assert slo.rules_command(parser.parse_args([str(REVIEW), "-o", str(out), "--scenario", "chat"])) == 0
    assert 'scenario="chat"' in out.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("delivery_latency:\n  - p(99) < 300 parsecs\n")
    assert slo.rules_command(parser.parse_args([str(bad)])) == 2
    assert f"{bad}:2: delivery_latency[0]: unknown unit 'parsecs'" in capsys.readouterr().err


def test_all_names_are_public():
    """Every name in slo.__all__ exists."""
    assert all(hasattr(slo, name) for name in slo.__all__)
