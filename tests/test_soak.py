"""The soak verdict: trends fitted past the warm-up, leak checks in the SLO file, the backend's series scraped."""

from __future__ import annotations

import json
import logging
from argparse import Namespace

import psutil
import pytest

from loadgen import slo, soak
from loadgen.errors import ConfigError
from loadgen.soak import Settings, Watch, fit, judge, read_backend
from tests.support import free_port

PERCENT_10 = Settings(interval=2.0, warmup_seconds=None, warmup_fraction=0.1)


def test_a_straight_line_is_recovered_exactly():
    """Samples on a line of 5 bytes/s give 18,000 bytes/h, r² 1 and the growth the line makes."""
    times = [2.0 * n for n in range(100)]
    values = [100_000_000 + 5 * t for t in times]
    trend = fit(times, values)
    assert trend.slope == pytest.approx(5.0, rel=1e-12) and trend.r2 == pytest.approx(1.0)
    block = judge(times, values, PERCENT_10, "bytes")
    assert block["slope_per_hour"] == 18_000.0
    # warm-up: the first 10 % of 198 s, so samples from 19.8 s on: 20 s … 198 s
    assert (block["samples"], block["from_s"], block["to_s"]) == (90, 20.0, 198.0)
    assert (block["start"], block["end"]) == (100_000_100, 100_000_990)
    assert block["growth_percent"] == pytest.approx(890 / 100_000_100 * 100, rel=1e-5)


def test_the_warm_up_hides_the_start_of_a_series():
    """Memory that climbs for the first minute and is flat after is steady once the warm-up is left out."""
    times = [float(t) for t in range(0, 600, 2)]
    values = [50e6 + min(t, 60.0) * 1e6 for t in times]
    assert judge(times, values, Settings(2.0, 0.0, None), "bytes")["slope_per_hour"] > 0
    by_seconds = judge(times, values, Settings(2.0, 60.0, None), "bytes")
    assert (by_seconds["slope_per_hour"], by_seconds["r2"], by_seconds["verdict"]) == (0.0, 0.0, "steady")
    by_share = judge(times, values, Settings(2.0, None, 0.2), "bytes")  # 20 % of 598 s: from 119.6 s
    assert by_share["slope_per_hour"] == 0.0 and by_share["from_s"] == 120.0


def test_a_leak_grows_and_too_few_samples_have_no_verdict():
    """A steady climb of 1 fd a second is growing; four samples past the warm-up are too few to judge."""
    times = [float(t) for t in range(100)]
    leaking = judge(times, [100.0 + t for t in times], PERCENT_10, "fds")
    assert (leaking["slope_per_hour"], leaking["verdict"]) == (3600.0, "growing")
    short = judge([0.0, 1.0, 2.0, 3.0, 4.0], [1.0] * 5, PERCENT_10, "fds")
    assert short == {"unit": "fds", "samples": 4, "slope_per_hour": None, "r2": None, "start": 1, "end": 1,
                     "growth_percent": None, "from_s": None, "to_s": None, "verdict": "too_few_samples"}  # fmt: skip


def test_noise_around_a_flat_line_is_steady():
    """Alternating ±1 MB around 80 MB: a fit this poor is no trend."""
    times = [float(t) for t in range(200)]
    values = [80e6 + (1e6 if n % 2 else -1e6) for n in range(200)]
    assert judge(times, values, PERCENT_10, "bytes")["verdict"] == "steady"


@pytest.mark.parametrize(
    "options, error",
    [
        (Namespace(soak_warmup="ten"), "--soak-warmup: cannot read 'ten'"),
        (Namespace(soak_warmup="100%"), "--soak-warmup: a share of the run must be below 100%"),
        (Namespace(backend_metrics="ws://127.0.0.1:1/metrics"), "--backend-metrics: must be an http:// or https://"),
        (Namespace(backend_metrics="file:///etc/passwd"), "--backend-metrics: must be an http:// or https://"),
    ],
)
def test_bad_soak_options_name_their_option(options, error):
    """A warm-up that cannot be read or a metrics URL that is not http(s) is refused, naming the option."""
    with pytest.raises(ConfigError) as caught:
        soak.settings_from(options)
    assert str(caught.value).startswith(error), caught.value


def test_warm_up_is_seconds_or_a_share():
    """--soak-warmup 120 is seconds, 25% a share of the span sampled."""
    assert soak.settings_from(Namespace(soak_warmup="120", series_interval=1.0)) == Settings(1.0, 120.0, None)
    assert soak.settings_from(Namespace(soak_warmup="25%")).warmup_fraction == 0.25


EXPOSITION = """\
# HELP refserver_process_resident_memory_bytes Resident memory size in bytes.
# TYPE refserver_process_resident_memory_bytes gauge
refserver_process_resident_memory_bytes 5.24288e+07
# TYPE refserver_process_open_fds gauge
refserver_process_open_fds 37.0
# TYPE refserver_connections gauge
refserver_connections 30.0
# TYPE go_goroutines gauge
go_goroutines 12
# TYPE process_threads gauge
process_threads 4
# TYPE refserver_requests counter
refserver_requests_total{op="join"} 5.0
"""


def test_the_backends_series_are_read_from_its_exposition():
    """Prefixed process metrics count, goroutines come before threads, counters are left alone."""
    assert read_backend(EXPOSITION) == {
        "backend_rss": ("refserver_process_resident_memory_bytes", 52428800.0),
        "backend_fds": ("refserver_process_open_fds", 37.0),
        "backend_threads": ("go_goroutines", 12.0),
        "backend_connections": ("refserver_connections", 30.0),
    }
    labelled = (
        '# TYPE refserver_connections gauge\nrefserver_connections{shard="a"} 3\nrefserver_connections{shard="b"} 4\n'
    )

    assert read_backend(labelled) == {"backend_connections": ("refserver_connections", 7.0)}


def test_an_unreachable_endpoint_is_said_once_and_sampled_as_missing(caplog):
    """Scrapes of a closed port log one warning, add no sample, and the verdict says too few samples."""
    watch = Watch(Settings(0.1, None, 0.1, f"http://127.0.0.1:{free_port()}/metrics"), scrapes_backend=True)
    with caplog.at_level(logging.WARNING, logger="loadgen"):
        for second in range(3):
            watch.scrape(float(second))
    assert len([r for r in caplog.records if "--backend-metrics" in r.getMessage()]) == 1
    series = watch.summary()["series"]
    assert series["backend_fds"]["samples"] == 0 and series["backend_fds"]["verdict"] == "too_few_samples"


# --- leak checks in the SLO file ---------------------------------------------------------------


def soak_summary(**series: dict) -> dict:
    return {"soak": {"series": series}}


LEAKING = {"slope_per_hour": 80e6, "growth_percent": 12.5, "samples": 50}
FLAT = {"slope_per_hour": 1e6, "growth_percent": 0.4, "samples": 50}


def test_a_leak_check_fails_the_run_and_a_flat_series_passes():
    """slope < 50MB/h and growth < 5% judge the soak block: a leaking series fails, a flat one passes."""
    rules = slo.loads_slo('soak.generator_rss: ["slope < 50MB/h", "growth < 5%"]\n', "leaks.yaml")
    failing = slo.evaluate(rules, soak_summary(generator_rss=LEAKING))
    assert [(r.name, r.value, r.passed) for r in failing] == [
        ("soak.generator_rss slope < 50MB/h", 80.0, False),
        ("soak.generator_rss growth < 5%", 12.5, False),
    ]
    assert slo.exit_code(failing) == 1
    passing = slo.evaluate(rules, soak_summary(generator_rss=FLAT))
    assert [(r.value, r.passed) for r in passing] == [(1.0, True), (0.4, True)]


def test_leak_check_units():
    """Binary and decimal byte units, per-hour counts, and growth as a fraction all read the same figure."""
    rules = slo.loads_slo(
        'soak.backend_rss: ["slope < 100MiB/h", "growth < 0.2"]\nsoak.backend_fds: ["slope <= 10/h"]\n', "u.yaml"
    )
    results = slo.evaluate(rules, soak_summary(backend_rss={**LEAKING, "slope_per_hour": 2**20 * 50},
                                               backend_fds={**FLAT, "slope_per_hour": 12.0}))  # fmt: skip
    assert [(r.value, r.passed) for r in results] == [(50.0, True), (0.125, True), (12.0, False)]


def test_a_series_the_run_never_had_passes_and_one_too_short_fails():
    """No backend series (no --backend-metrics) is not run; a series without a fit is no samples and fails."""
    rules = slo.loads_slo('soak.backend_fds: ["growth < 5%"]\n', "s.yaml")
    [absent] = slo.evaluate(rules, soak_summary(generator_rss=FLAT))
    assert (absent.passed, absent.note) == (True, "not run")
    short = {"slope_per_hour": None, "growth_percent": None, "samples": 3}
    [too_short] = slo.evaluate(rules, soak_summary(backend_fds=short))
    assert (too_short.passed, too_short.note) == (False, "no samples")


@pytest.mark.parametrize(
    "text, error",
    [
        ('soak.generator_rss: ["slope < 50MB"]\n', "s.yaml:1: soak.generator_rss[0]: unknown unit 'MB' for a memory"),
        ('soak.backend_fds: ["slope < 5MB/h"]\n', "s.yaml:1: soak.backend_fds[0]: unknown unit 'MB/h' for a count"),
        ('soak.backend_fds: ["growth < 5s"]\n', "s.yaml:1: soak.backend_fds[0]: unknown unit 's' for a growth"),
        ('soak.backend_fds: ["p(99) < 5"]\n', "s.yaml:1: soak.backend_fds[0]: soak.backend_fds has no 'p(99)'"),
        ('soak.heap: ["slope < 5"]\n', "s.yaml:1: soak.heap: unknown figure"),
    ],
)
def test_leak_check_errors_name_file_line_and_key(text, error):
    """A leak check that cannot be read names the file, the line and the key."""
    with pytest.raises(slo.SloError) as caught:
        slo.loads_slo(text, "s.yaml")
    assert str(caught.value).startswith(error), caught.value


def test_prometheus_rules_leave_leak_checks_to_the_summary():
    """`loadgen rules` writes no rule for a trend over the whole run."""
    text = slo.rules(slo.loads_slo('soak.generator_rss: ["slope < 50MB/h"]\nmessages.lost: [count == 0]\n', "r.yaml"))
    assert "soak" not in text and "messages_lost" in text


# --- a real run --------------------------------------------------------------------------------

STABLE = "messaging: {rooms: 3, post_rate: 2, dm_rate: 0.2, read_rate: 0.2, reconnect_rate: 0}\n"


def test_the_backends_metrics_are_scraped_into_the_soak_block(backend, locust_run, write_profile, tmp_path):
    """A run with --backend-metrics fits the reference backend's RSS, fds and connections, sampled as it ran."""
    server = backend()
    users = 12
    leaks = tmp_path / "leaks.yaml"
    leaks.write_text('soak.backend_connections: ["slope < 1000000/h"]\nsoak.backend_threads: ["growth < 5%"]\n')
    run = locust_run("messaging.py", "-u", str(users), "-r", str(users), "-t", "8s", "--drain", "1",
                     "--host", server.url, "--profile", write_profile(STABLE), "--metrics-port", "0",
                     "--backend-metrics", f"http://127.0.0.1:{server.metrics_port}/metrics",
                     "--series-interval", "0.5", "--soak-warmup", "3")  # fmt: skip
    series = run.summary["soak"]["series"]
    assert run.summary["soak"]["backend_metrics"].endswith(f":{server.metrics_port}/metrics")
    assert series["backend_rss"]["metric"] == "refserver_process_resident_memory_bytes"
    assert series["backend_fds"]["metric"] == "refserver_process_open_fds"
    assert series["backend_connections"]["metric"] == "refserver_connections"
    # the reference backend exports no thread or goroutine count: a check on it has nothing to judge
    assert series["backend_threads"]["samples"] == 0 and series["backend_threads"]["metric"] is None
    for name in ("backend_rss", "backend_fds", "backend_connections", "generator_rss"):
        assert series[name]["samples"] >= soak.MIN_SAMPLES and series[name]["from_s"] >= 3, (name, series[name])
    # past the warm-up every user is connected and none reconnects: the fit is flat at the user count
    # (the clock probe may add one connection while it measures)
    connections = series["backend_connections"]
    assert users <= connections["start"] <= users + 1 and users <= connections["end"] <= users + 1, connections
    backend_rss = psutil.Process(server.process.pid).memory_info().rss
    assert 0.5 < series["backend_rss"]["end"] / backend_rss < 2, (series["backend_rss"], backend_rss)
    lines = [json.loads(line) for line in (run.results / "timeseries.jsonl").read_text().splitlines()]
    sampled = [line["soak"]["backend"] for line in lines if line["soak"]["backend"]]
    assert sampled and all(s["backend_fds"] >= s["backend_connections"] for s in sampled), sampled
    assert all(line["soak"]["rss_bytes"]["local"] > 0 for line in lines)

    checked = locust_run("messaging.py", "-u", "4", "-r", "4", "-t", "4s", "--drain", "1", "--host", server.url,
                         "--profile", write_profile(STABLE), "--metrics-port", "0", "--slo", str(leaks),
                         "--backend-metrics", f"http://127.0.0.1:{server.metrics_port}/metrics",
                         "--series-interval", "0.5", "--soak-warmup", "1")  # fmt: skip
    verdict = {check["name"]: check for check in checked.summary["slo"]["checks"]}
    assert verdict["soak.backend_connections slope < 1000000/h"]["passed"] is True, verdict
    assert verdict["soak.backend_threads growth < 5%"]["note"] == "no samples", verdict
    assert checked.returncode == 1, checked
