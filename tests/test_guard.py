"""The generator's validity guard: sustained-window logic, the verdict it feeds, and real runs it judges."""

from __future__ import annotations

import logging
from argparse import Namespace

import pytest

from loadgen import guard, slo
from loadgen.errors import ConfigError
from loadgen.guard import CPU, LOOP_LAG, QUEUE, SCHEDULE_LAG, Guard, ProcessGuard, Thresholds
from loadgen.metrics import registry_for
from tests.support import free_port
from tests.test_metrics import fake_run

#: how long the starving user holds the event loop each time: longer than every default threshold,
#: short enough that a worker's heartbeats to its master still get through between two holds
BLOCK_S = 1.5
#: and lets it run this long between two holds, so connections and timers still get their turn
FREE_S = 0.5

STARVED_LOCUSTFILE = f'''
import time

from locust import User, constant, events, task

from loadgen.run import install
from loadgen.scenarios.messaging import ChatUser

install(events, scenario="messaging")


class Starver(User):
    """Holds the event loop {BLOCK_S} s at a time, {FREE_S} s apart, as a generator short of CPU would."""

    fixed_count = 1
    wait_time = constant({FREE_S})

    @task
    def hog(self):
        until = time.monotonic() + {BLOCK_S}
        while time.monotonic() < until:
            pass


__all__ = ["ChatUser", "Starver"]
'''

LIGHT_PROFILE = "messaging: {rooms: 3, post_rate: 1, dm_rate: 0.2, read_rate: 0.2, reconnect_rate: 0}\n"
SLO_FILE = 'messages.lost: ["count == 0"]\n'


def feed(g: Guard, measure: str, values: list[float | None], start: int = 1) -> list[dict]:
    """One-second samples of one measure at t = start, start + 1 …; every reason that was new."""
    crossed = []
    for n, value in enumerate(values):
        crossed += g.observe(float(start + n), 1.0, {measure: value})
    return crossed


# --- the sustained window ------------------------------------------------------------------


def test_two_samples_over_do_not_mark_a_process_three_do():
    """Two one-second samples over the threshold are a blip; the third in a row marks the process."""
    g = Guard(Thresholds(loop_lag=100.0, window=3))
    assert feed(g, LOOP_LAG, [150.0, 400.0, 20.0, 150.0, 150.0]) == []
    [reason] = feed(g, LOOP_LAG, [300.0], start=6)
    assert reason == {"process": "local", "measure": LOOP_LAG, "value": 300.0, "unit": "ms", "threshold": 100.0,
                      "at_s": 3.0, "seconds_over": 3.0}  # fmt: skip
    assert g.reasons == [reason]


def test_samples_without_a_value_neither_extend_nor_break_a_streak():
    """A second with no post sent says nothing about schedule lag: the streak waits for real samples."""
    g = Guard(Thresholds(schedule_lag=500.0, window=3))
    assert feed(g, SCHEDULE_LAG, [900.0, None, 800.0, None]) == []
    [reason] = feed(g, SCHEDULE_LAG, [700.0], start=5)
    assert (reason["value"], reason["seconds_over"], reason["at_s"]) == (900.0, 3.0, 0.0)


def test_one_reason_per_measure_counts_every_sustained_second():
    """After the first crossing, later samples over add to seconds_over and peak; short blips do not."""
    g = Guard(Thresholds(cpu=90.0, window=3))
    assert len(feed(g, CPU, [95.0, 96.0, 97.0, 99.0])) == 1  # 4 s over
    feed(g, CPU, [10.0, 95.0, 95.0, 10.0], start=5)  # a 2 s blip: not sustained
    assert feed(g, CPU, [91.0, 100.0, 92.0], start=9) == []  # 3 s more, already reported
    [reason] = g.reasons
    assert (reason["value"], reason["seconds_over"], reason["at_s"]) == (100.0, 7.0, 0.0)
    assert g.peaks[CPU] == 100.0


def test_a_threshold_of_zero_or_no_guard_watches_nothing():
    """0 turns one measure off; --no-guard turns off them all, whatever the samples."""
    off = Guard(Thresholds(queue=0.0, window=1))
    assert feed(off, QUEUE, [1e9, 1e9]) == []
    disabled = Guard(Thresholds(window=1, enabled=False))
    assert feed(disabled, CPU, [100.0]) == [] and feed(disabled, LOOP_LAG, [5000.0]) == []


def test_each_measure_keeps_its_own_streak():
    """A sample over on one measure does not extend another's streak."""
    g = Guard(Thresholds(cpu=90.0, loop_lag=100.0, window=2))
    assert g.observe(1.0, 1.0, {CPU: 95.0, LOOP_LAG: 10.0}) == []
    assert g.observe(2.0, 1.0, {CPU: 10.0, LOOP_LAG: 200.0}) == []
    [reason] = g.observe(3.0, 1.0, {CPU: 10.0, LOOP_LAG: 300.0})
    assert reason["measure"] == LOOP_LAG and reason["at_s"] == 1.0


@pytest.mark.parametrize(
    "option, value, flag",
    [
        ("guard_cpu", -1.0, "--guard-cpu"),
        ("guard_loop_lag_ms", -5.0, "--guard-loop-lag-ms"),
        ("guard_queue", -1, "--guard-queue"),
        ("guard_window", 0, "--guard-window"),
    ],
)
def test_bad_thresholds_name_their_option(option, value, flag):
    """A negative threshold or an empty window is refused, naming the option."""
    with pytest.raises(ConfigError, match=f"^{flag}: "):
        guard.thresholds_from(Namespace(**{option: value}))


def test_options_become_thresholds():
    """Every guard option lands in the thresholds; --no-guard disables the guard."""
    options = Namespace(guard_cpu=80.0, guard_loop_lag_ms=50.0, guard_schedule_lag_ms=0.0, guard_queue=10,
                        guard_window=5, no_guard=True)  # fmt: skip
    assert guard.thresholds_from(options) == Thresholds(80.0, 50.0, 0.0, 10.0, window=5, enabled=False)


# --- a process's guard, workers, summary and metrics ---------------------------------------------


def test_a_master_lists_each_workers_reasons_and_warns_once(caplog):
    """A master's suspect block names each worker's reasons, since the earliest; each is warned of once."""
    master = ProcessGuard(Thresholds(), watches_posts=False)
    reason = {"process": "w1", "measure": CPU, "value": 99.0, "unit": "%", "threshold": 90.0, "at_s": 12.0,
              "seconds_over": 4.0}  # fmt: skip
    states = {"w0": {"reasons": [], "peaks": {CPU: 40.0}}, "w1": {"reasons": [reason], "peaks": {CPU: 99.0}}}
    with caplog.at_level(logging.WARNING, logger="loadgen"):
        master.adopt(states)
        master.adopt(states)
    warnings = [r.getMessage() for r in caplog.records if "Generator overloaded" in r.getMessage()]
    assert len(warnings) == 1 and "worker w1" in warnings[0] and "cpu 99 %" in warnings[0], warnings
    suspect, settings = master.summary()
    assert suspect == {"since_s": 12.0, "reasons": [reason]}
    assert settings["peaks"]["w0"] == {"cpu_percent": 40.0} and settings["peaks"]["w1"] == {"cpu_percent": 99.0}
    assert settings["thresholds"] == {"cpu_percent": 90.0, "loop_lag_ms": 100.0, "schedule_lag_ms": 500.0,
                                      "queue_callbacks": 1000.0}  # fmt: skip
    assert master.suspect


def test_the_suspect_gauge_and_the_measures_are_exported():
    """loadgen_generator_suspect turns 1 with the guard; the last sample's measures are gauges in base units."""
    context = fake_run()
    context.guard = process = ProcessGuard(Thresholds(schedule_lag=500.0, window=1), watches_posts=True)
    value = registry_for(context).get_sample_value
    labels = {"scenario": "voiceroom"}
    assert value("loadgen_generator_suspect", labels) == 0
    process.last = {SCHEDULE_LAG: 750.0, QUEUE: 12.0}
    process.guard.observe(1.0, 1.0, process.last)
    assert value("loadgen_generator_suspect", labels) == 1
    assert value("loadgen_schedule_lag_seconds", labels) == 0.75
    assert value("loadgen_event_loop_ready_callbacks", labels) == 12
    assert value("loadgen_process_cpu_seconds_total", labels) > 0


def test_a_real_event_loop_says_how_many_callbacks_wait():
    """gevent's default loop reports its ready watchers: a number, not None."""
    assert guard.ready_callbacks() is not None


# --- the SLO verdict -----------------------------------------------------------------------


def suspect_summary(suspect) -> dict:
    return {"messages": {"lost": 0}, "generator": {"suspect": suspect}}


REASON = {"process": "local", "measure": LOOP_LAG, "value": 900.0, "unit": "ms", "threshold": 100.0,
          "at_s": 2.0, "seconds_over": 5.0}  # fmt: skip


def test_a_suspect_run_fails_generator_valid():
    """With the guard's verdict in the summary, generator.valid is judged: 1 and failing when suspect."""
    rules = slo.loads_slo(SLO_FILE, "s.yaml")
    results = slo.evaluate(rules, suspect_summary({"since_s": 2.0, "reasons": [REASON]}))
    assert [(r.name, r.value, r.passed) for r in results] == [
        ("messages.lost count == 0", 0, True),
        ("generator.valid", 1.0, False),
    ]
    assert slo.exit_code(results) == 1
    assert "generator.valid" in slo.format_table(results) and "FAIL" in slo.format_table(results)
    [valid] = [r for r in slo.evaluate(rules, suspect_summary(False)) if r.name == "generator.valid"]
    assert (valid.value, valid.passed) == (0.0, True)


def test_allow_suspect_opts_out_and_old_summaries_are_not_judged():
    """generator: {allow_suspect: true} drops the check; a summary without the guard's verdict never had one."""
    allowing = slo.loads_slo(SLO_FILE + "generator:\n  allow_suspect: true\n", "s.yaml")
    assert allowing.allow_suspect and len(allowing.checks) == 1
    results = slo.evaluate(allowing, suspect_summary({"since_s": 2.0, "reasons": [REASON]}))
    assert [r.name for r in results] == ["messages.lost count == 0"] and slo.exit_code(results) == 0
    plain = slo.loads_slo(SLO_FILE, "s.yaml")
    assert [r.name for r in slo.evaluate(plain, {"messages": {"lost": 0}})] == ["messages.lost count == 0"]


def test_with_the_guard_off_generator_valid_is_not_run():
    """--no-guard watched nothing: generator.valid passes as not run, never as a measured 0."""
    unwatched = {"messages": {"lost": 0}, "generator": {"suspect": False, "guard": {"enabled": False}}}
    [_, valid] = slo.evaluate(slo.loads_slo(SLO_FILE, "s.yaml"), unwatched)
    assert (valid.name, valid.value, valid.passed, valid.note) == ("generator.valid", None, True, "not run")


@pytest.mark.parametrize(
    "text, error",
    [
        ("generator: true\n", "s.yaml:1: generator: must be a mapping such as {allow_suspect: true}"),
        ("generator:\n  allow_suspct: true\n", "s.yaml:2: generator.allow_suspct: unknown key (known: allow_suspect)"),
        ("generator:\n  allow_suspect: maybe\n", "s.yaml:2: generator.allow_suspect: must be true or false"),
        ("generator.valid: [count == 0]\n", "s.yaml:1: generator.valid: unknown figure"),
    ],
)
def test_generator_settings_errors_name_file_line_and_key(text, error):
    """A mistake under generator: names the file, the line and the key."""
    with pytest.raises(slo.SloError) as caught:
        slo.loads_slo(text, "s.yaml")
    assert str(caught.value).startswith(error), caught.value


# --- real runs ---------------------------------------------------------------------------------


@pytest.fixture
def starved(tmp_path):
    path = tmp_path / "starved.py"
    path.write_text(STARVED_LOCUSTFILE)
    return str(path)


@pytest.fixture
def slo_file(tmp_path):
    path = tmp_path / "slo.yaml"
    path.write_text(SLO_FILE)
    return str(path)


def test_a_starved_generator_marks_the_run_suspect_and_fails_its_slo(locust_run, write_profile, starved, slo_file):
    """A user holding the event loop 1.5 s at a time sustains loop lag: suspect, generator.valid fails, exit 1."""
    run = locust_run(starved, "-u", "11", "-r", "11", "-t", "10s", "--drain", "1", "--metrics-port", "0",
                     "--profile", write_profile(LIGHT_PROFILE), "--slo", slo_file)  # fmt: skip
    assert run.returncode == 1, run
    generator = run.summary["generator"]
    suspect = generator["suspect"]
    assert suspect, run
    by_measure = {reason["measure"]: reason for reason in suspect["reasons"]}
    lag = by_measure[LOOP_LAG]
    assert lag["process"] == "local" and lag["threshold"] == 100.0 and lag["value"] > 100.0, lag
    assert lag["seconds_over"] >= 3 and 0 <= lag["at_s"] <= run.summary["duration_s"], lag
    assert suspect["since_s"] == min(reason["at_s"] for reason in suspect["reasons"])
    assert generator["guard"]["peaks"]["local"]["loop_lag_ms"] >= lag["value"]
    checks = {check["name"]: check for check in run.summary["slo"]["checks"]}
    assert checks["generator.valid"]["passed"] is False and checks["generator.valid"]["value"] == 1
    assert checks["messages.lost count == 0"]["passed"] is True
    assert run.summary["slo"]["suspect"] is True and run.summary["slo"]["passed"] is False
    warnings = [line for line in run.output.splitlines() if "Generator overloaded" in line]
    assert len(warnings) == len(suspect["reasons"]), warnings
    assert any("loop_lag" in line and "over its threshold of 100 ms" in line for line in warnings), warnings
    assert "SUSPECT RUN: local process loop_lag" in run.output
    assert "The run is SUSPECT" in run.output


def test_a_light_run_is_not_suspect_and_passes(locust_run, write_profile, slo_file):
    """Ten users posting once a second stay far below every threshold: valid, exit 0."""
    run = locust_run("messaging.py", "-u", "10", "-r", "10", "-t", "5s", "--drain", "1", "--metrics-port", "0",
                     "--profile", write_profile(LIGHT_PROFILE), "--slo", slo_file)  # fmt: skip
    assert run.returncode == 0, run
    generator = run.summary["generator"]
    assert generator["suspect"] is False, generator
    peaks = generator["guard"]["peaks"]["local"]
    assert set(peaks) == {"cpu_percent", "loop_lag_ms", "schedule_lag_ms", "queue_callbacks"}, peaks
    checks = {check["name"]: check for check in run.summary["slo"]["checks"]}
    assert checks["generator.valid"] == {"name": "generator.valid", "expr": "suspect == 0", "value": 0.0,
                                         "passed": True, "abort_on_fail": False, "note": None}  # fmt: skip
    assert run.summary["slo"]["suspect"] is False
    assert "Generator overloaded" not in run.output


def test_the_no_guard_option_leaves_a_starved_run_unjudged(locust_run, write_profile, starved):
    """--no-guard: the same starved run is not marked, and its summary says the guard was off."""
    run = locust_run(starved, "-u", "6", "-r", "6", "-t", "6s", "--drain", "1", "--metrics-port", "0",
                     "--profile", write_profile(LIGHT_PROFILE), "--no-guard")  # fmt: skip
    generator = run.summary["generator"]
    assert generator["suspect"] is False and generator["guard"]["enabled"] is False, run
    assert generator["guard"]["peaks"] == {"local": {}}
    assert "Generator overloaded" not in run.output


def test_a_starved_worker_is_named_in_the_masters_summary(locust_run, write_profile, starved, slo_file):
    """In a distributed run the starved worker's reasons travel in its reports: the master names it and fails."""
    port = str(free_port())
    run = locust_run(starved, "--processes", "1", "--master-bind-port", port, "--master-port", port,
                     "-u", "11", "-r", "11", "-t", "10s", "--drain", "1", "--metrics-port", "0",
                     "--profile", write_profile(LIGHT_PROFILE), "--slo", slo_file)  # fmt: skip
    assert run.returncode == 1, run
    suspect = run.summary["generator"]["suspect"]
    assert suspect, run
    workers = {reason["process"] for reason in suspect["reasons"]}
    assert workers == {"w0"}, suspect
    assert LOOP_LAG in {reason["measure"] for reason in suspect["reasons"]}
    assert set(run.summary["generator"]["guard"]["peaks"]) == {"local", "w0"}
    assert "worker w0" in run.output
    # the worker's RSS trend travels the same way: the master fits its own and lists the worker's
    assert set(run.summary["soak"]["series"]["generator_rss"]["processes"]) == {"local", "w0"}
