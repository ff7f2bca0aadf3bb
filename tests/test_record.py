"""The results folder written while a run goes: run.json, timeseries.jsonl, histograms.json."""

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from loadgen.accounting import new_histogram
from loadgen.record import IntervalHistogram
from tests.scenarios.test_messaging import STABLE
from tests.support import ROOT, SCALE


def lines(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "timeseries.jsonl").read_text().splitlines()]


def test_interval_quantiles_are_those_of_the_interval_alone():
    """After a slow first interval, the second interval's quantiles are those of its own values only."""
    run = new_histogram()
    interval = IntervalHistogram()
    for micros in range(100_000, 200_000, 1000):
        run.record_value(micros)
    first = interval.take(run)
    alone = new_histogram()
    for micros in range(1000, 3000, 10):
        run.record_value(micros)
        alone.record_value(micros)
    second = interval.take(run)
    assert first["count"] == 100 and first["p50"] == pytest.approx(150.0, rel=0.01)
    assert second["count"] == 200
    for name, percentile in (("p50", 50), ("p95", 95), ("p99", 99)):
        assert second[name] == alone.get_value_at_percentile(percentile) / 1000
    assert second["max"] == alone.get_max_value() / 1000
    assert interval.take(run) == {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}


def test_the_series_adds_up_to_the_summary_and_run_json_describes_the_run(backend, locust_run, write_profile):
    """Every interval's counts add up to the summary's totals; each interval's delivery quantiles carry the
    backend's injected 50 ms; run.json holds the profile's text, the command and the versions."""
    server = backend("--delay-ms", "50", "--seed", "2")
    profile = write_profile(STABLE)
    run = locust_run("messaging.py", "-u", "30", "-r", "30", "-t", "6s", "--drain", "1", "--series-interval", "1",
                     "--host", server.url, "--profile", profile)  # fmt: skip
    assert run.returncode == 0, run
    folder = run.results
    series = lines(folder)
    assert len(series) >= 5
    totals = Counter()
    operations = Counter()
    for line in series:
        totals.update(line["messages"])
        operations.update({name: op["count"] for name, op in line["operations"].items()})
        if line["delivery_ms"]["count"]:
            assert line["delivery_ms"]["p50"] >= 50, line
    summary = run.summary
    for outcome in ("sent", "delivered", "lost", "duplicated", "out_of_order", "recovered"):
        assert totals[outcome] == summary["messages"][outcome], outcome
    assert sum(line["delivery_ms"]["count"] for line in series) == summary["messages"]["delivered"]
    assert operations == Counter({name: op["count"] for name, op in summary["operations"].items()})
    assert series[0]["users"] > 0 and series[0]["workers"] == 1
    described = json.loads((folder / "run.json").read_text())
    assert described["profile"] == {"path": profile, "text": STABLE}
    assert described["run_id"] == summary["run_id"] and "--series-interval" in described["command"]
    assert described["options"]["num_users"] == 30 and described["versions"]["locust"]


def test_a_killed_run_keeps_what_it_recorded(tmp_path):
    """A run killed outright has no summary, but its run.json, time series and histograms so far."""
    results = tmp_path / "results"
    command = [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "messaging.py"), "--headless",
               "-u", "20", "-r", "20", "-t", "60s", "--results", str(results), "--series-interval", "1",
               "--metrics-port", "0"]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60 * SCALE
        while time.monotonic() < deadline:
            if (results / "timeseries.jsonl").exists() and len(lines(results)) >= 3:
                break
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (results / "summary.json").exists()
    assert (results / "run.json").exists() and (results / "histograms.json").exists()
    series = lines(results)
    assert len(series) >= 3 and sum(line["messages"]["sent"] for line in series) > 0
