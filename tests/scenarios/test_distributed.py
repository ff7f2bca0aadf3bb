"""Locust's distributed mode: workers' figures merged exactly into the master's summary."""

import json
import time
import urllib.request

import pytest
from hdrh.histogram import HdrHistogram
from prometheus_client.parser import text_string_to_metric_families

from loadgen.accounting import new_histogram
from tests.scenarios.test_messaging import STABLE
from tests.scenarios.test_rooms_scenarios import BUSY_VOICE
from tests.support import SCALE, Cluster, free_port, free_ports_in_a_row, skewed_clock


@pytest.fixture
def processes():
    """--processes 2 with the master on a free port, so nothing else on 5557 can interfere."""
    port = str(free_port())
    return ("--processes", "2", "--master-bind-port", port, "--master-port", port)


def test_two_workers_merge_into_one_summary(locust_run, processes):
    """With --processes 2, the master's summary counts both workers and merges their histograms."""
    run = locust_run("messaging.py", *processes, "-u", "40", "-r", "40", "-t", "6s", "--drain", "1")
    assert run.returncode == 0, run
    summary = run.summary
    assert summary["generator"]["workers"] == 2
    assert summary["operations"]["room.join"]["count"] == 40 + summary["connections"]["reconnects"]
    assert summary["messages"]["delivered"] > 100
    assert summary["messages"]["lost"] == 0 and "partial" not in summary


def test_injected_drops_are_found_exactly_across_workers(backend, locust_run, write_profile, processes):
    """Drops injected while two workers run are all reported, lost or recovered, in the merged summary."""
    server = backend("--drop", "0.03", "--seed", "8")
    run = locust_run("messaging.py", *processes, "-u", "40", "-r", "40", "-t", "6s", "--delivery-timeout", "2",
                     "--host", server.url, "--profile", write_profile(STABLE))  # fmt: skip
    messages = run.summary["messages"]
    assert server.injected("drop") > 10
    assert messages["lost"] + messages["recovered"] == server.injected("drop"), messages
    assert run.returncode == 1, run


def test_voice_rooms_across_two_workers_have_one_host_each(locust_run, write_profile, processes):
    """Voice rooms spread over two workers join, contend for seats and merge without a refused host."""
    run = locust_run("voiceroom.py", *processes, "-u", "60", "-r", "60", "-t", "6s", "--drain", "1",
                     "--profile", write_profile(BUSY_VOICE))  # fmt: skip
    assert run.returncode == 0, run
    operations = run.summary["operations"]
    assert operations["room.join"]["failures"] == 0
    assert operations["seat.take"]["count"] > 0 and operations["seat.fanout"]["count"] > 0
    assert run.summary["generator"]["workers"] == 2
    assert run.summary["invariants"]["violations"] == 0


def test_a_skewed_worker_clock_is_measured_and_corrected(backend, write_profile, tmp_path):
    """One worker's clock runs 300 ms ahead. Its offset is measured, and every latency between the two
    workers is the 100 ms the backend adds, not 100 ms ± 300 ms."""
    server = backend("--delay-ms", "100", "--seed", "3")
    cluster = Cluster(tmp_path, "messaging.py", "-u", "40", "-r", "40", "-t", "8s", "--drain", "2",
                      "--host", server.url, "--profile", write_profile(STABLE),
                      workers=[{}, skewed_clock(0.3)])  # fmt: skip
    summary = cluster.wait()
    clocks = summary["generator"]["clock"]["processes"]
    offsets = sorted(clock["offset_ms"] for clock in clocks.values())
    assert len(offsets) == 2 and -305 <= offsets[0] <= -295 and -5 <= offsets[1] <= 5, clocks
    messages = summary["messages"]
    assert messages["cross_process"] > messages["delivered"] / 4 and messages["uncertain"] == 0, messages
    # uncorrected, the skewed worker's messages would take ~400 ms and the others' ~0
    latency = decoded(cluster.results / "histograms.json", "delivery_latency")
    assert 99_000 <= latency.get_min_value() and latency.get_max_value() < 350_000


def test_a_worker_killed_mid_run_is_reported_and_its_counts_kept(tmp_path):
    """A worker killed mid-run: the summary names it with when it was lost and its last counts, which
    stay in the totals, and the verdict says the results are partial."""
    slo = tmp_path / "slo.yaml"
    slo.write_text('room.join: ["p(95) < 5s"]\n')
    cluster = Cluster(tmp_path, "messaging.py", "-u", "40", "-r", "40", "-t", "14s", "--drain", "1",
                      "--slo", str(slo), workers=[{}, {}])  # fmt: skip
    time.sleep(6 * SCALE)
    cluster.workers[1].kill()
    summary = cluster.wait()
    partial = summary["partial"]
    [lost] = partial["lost_workers"]
    assert partial["missing_workers"] == [] and lost["last_counts"]["sent"] > 0
    assert lost["last_report_after_s"] <= lost["lost_after_s"] < 14
    workers = summary["workers"]
    assert {tag: w["final"] for tag, w in workers.items()} == {
        f"w{lost['index']}": False,
        f"w{1 - lost['index']}": True,
    }
    assert workers[f"w{lost['index']}"]["messages"]["sent"] == lost["last_counts"]["sent"]
    assert summary["messages"]["sent"] == sum(w["messages"]["sent"] for w in workers.values())
    assert summary["slo"]["partial"] is True and summary["slo"]["passed"] is True
    assert "PARTIAL RESULTS: worker" in cluster.log() and "PARTIAL results" in cluster.log()


def test_the_merge_equals_the_workers_own_counts_and_histograms(tmp_path, write_profile):
    """Each worker's own /metrics, read after the run, adds up to the master's summary, and the merged
    percentiles are those of the workers' histograms added together."""
    base = free_ports_in_a_row(3)
    # the master's --metrics-linger reaches the workers with its other options
    cluster = Cluster(tmp_path, "voiceroom.py", "-u", "60", "-r", "60", "-t", "8s", "--drain", "1",
                      "--profile", write_profile(BUSY_VOICE), "--metrics-port", str(base), "--metrics-linger", "10",
                      workers=[{}, {}], worker_args=("--metrics-port", str(base)))  # fmt: skip
    deadline = time.monotonic() + 120 * SCALE
    while not cluster.summary.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    own = {f"w{n}": scrape(base + n + 1) for n in range(2)}
    run_ids = {port: run_id(port) for port in (base, base + 1, base + 2)}
    summary = cluster.wait()
    assert set(run_ids.values()) == {summary["run_id"]}, run_ids
    assert summary["messages"]["cross_process"] > 0 and "partial" not in summary
    for tag, figures in summary["workers"].items():
        counters = own[tag]
        messages = {
            **counters["loadgen_messages_total"],
            "cross_process": counters["loadgen_deliveries_cross_process_total"][""],
            "uncertain": counters["loadgen_deliveries_uncertain_total"][""],
        }
        assert figures["messages"] == messages
        assert figures["operations"] == counters["loadgen_operations_total"]
    for outcome in ("sent", "delivered", "lost", "duplicated", "out_of_order", "recovered"):
        assert summary["messages"][outcome] == sum(own[tag]["loadgen_messages_total"][outcome] for tag in own)
    series = [json.loads(line) for line in (cluster.results / "timeseries.jsonl").read_text().splitlines()]
    assert max(line["workers"] for line in series) == 2
    for outcome in ("sent", "delivered"):
        assert sum(line["messages"][outcome] for line in series) == summary["messages"][outcome]
    histograms = cluster.results / "histograms.json"
    added = decoded(histograms, "delivery_latency", workers=True)
    assert summary["messages"]["delivery_latency_ms"]["p99"] == added.get_value_at_percentile(99) / 1000
    joins = decoded(histograms, "room.join", workers=True)
    assert summary["operations"]["room.join"]["p95_ms"] == joins.get_value_at_percentile(95) / 1000


def decoded(path, name: str, workers: bool = False) -> HdrHistogram:
    """A histogram of histograms.json: the merged one, or the workers' own added together."""
    data = json.loads(path.read_text())
    sources = list(data["workers"].values()) if workers else [data]
    histogram = new_histogram()
    for source in sources:
        encoded = source["delivery_latency"] if name == "delivery_latency" else source["operations"][name]
        histogram.decode_and_add(encoded.encode("ascii"))
    return histogram


def run_id(port: int) -> str:
    """The run id a process labels its metrics with."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "loadgen_run_info":
            return family.samples[0].labels["run_id"]
    raise AssertionError(f"no loadgen_run_info on port {port}")


def scrape(port: int) -> dict[str, dict[str, float]]:
    """A process's counters: sample name -> its outcome or op label (or "") -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    counters: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                label = sample.labels.get("outcome", sample.labels.get("op", ""))
                counters.setdefault(sample.name, {})[label] = sample.value
    return counters
