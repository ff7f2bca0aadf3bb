"""Dashboards and SLO rules against a real Prometheus scraping real runs of every scenario.

One reference backend (with bugs on, so invariant series exist) serves a run of every
scenario, each with an SLO file: voice rooms as a distributed run (a master and two worker
processes), the others standalone. Debian's Prometheus scrapes every process each second.
While they run, every PromQL expression of every dashboard and of the rules `loadgen rules`
writes must return data; when the distributed run is over, the workers' last scraped counters
must add up to its summary.
"""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.scenarios.test_rooms_scenarios import BUSY_LIVE, BUSY_VOICE
from tests.support import ROOT, SCALE, free_port, free_ports_in_a_row

sys.path.insert(0, str(ROOT / "dashboards"))
import build  # noqa: E402  (the dashboards' own generator, not a package)

# few callees, many callers: busy callees (a panel of their own) are certain within seconds
CROWDED_CALLS = "call1v1:\n  callee_share: 0.2\n  call_rate: 1\n  talk_mean: 3\n"
#: the room runs carry audio, so that the dashboards' audio rows have series
AUDIO = "media: {rooms: 2, decode_share: 0.5}\n"
STANDALONE = {"livestream.py": BUSY_LIVE + AUDIO, "call1v1.py": CROWDED_CALLS, "messaging.py": ""}
COMPARISON = re.compile(r"^(?P<figure>.*?)\s*(>=|<=|!=|==|>|<)\s*[-+0-9.e]+$", re.S)


def query(port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@dataclass
class DistributedRun:
    """The voice-room run of a master and two workers; its processes serve metrics on base, base+1, base+2."""

    process: subprocess.Popen
    metrics_base: int
    summary: Path

    @property
    def worker_instances(self) -> str:
        return f"127.0.0.1:({self.metrics_base + 1}|{self.metrics_base + 2})"


@dataclass
class Scraped:
    prometheus_port: int
    distributed: DistributedRun


def start_locust(tmp_path, locustfile: str, profile: str, *args: str, log_name: str, logs: list):
    profile_path = tmp_path / f"{log_name}.yaml"
    profile_path.write_text(profile or "messaging:\n  rooms: 4\n")
    command = [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / locustfile), "--headless",
               "--profile", str(profile_path), "--results", str(tmp_path / log_name), *args]  # fmt: skip
    logs.append(open(tmp_path / f"{log_name}.log", "wb"))
    return subprocess.Popen(command, cwd=tmp_path, stdout=logs[-1], stderr=subprocess.STDOUT)


@pytest.fixture
def scraped_runs(tmp_path, backend):
    """Every scenario running, a backend with bugs, and Prometheus scraping them all."""
    assert shutil.which("prometheus"), "Debian's prometheus is missing: run scripts/test-deps"
    server = backend("--bug", "seat-double-grant", "0.3", "--bug", "pk-score-skew", "0.3", "--seed", "9")
    review = ROOT / "locustfiles" / "slo" / "review.yaml"
    rules = tmp_path / "rules.yml"
    subprocess.run([sys.executable, "-m", "loadgen.cli", "rules", str(review), "-o", str(rules)], check=True, cwd=ROOT)
    # the runs' own SLO must not abort them (the backend breaks invariants on purpose here)
    slo = tmp_path / "slo.yaml"
    slo.write_text('room.join: ["p(95) < 600ms"]\ninvariants.violations: ["count == 0"]\n')
    common = ("--host", server.url, "--slo", str(slo), "-r", "40")
    targets, runs, logs = [f"127.0.0.1:{server.metrics_port}"], [], []
    for locustfile, profile in STANDALONE.items():
        port = free_port()
        targets.append(f"127.0.0.1:{port}")
        runs.append(start_locust(tmp_path, locustfile, profile, *common, "-u", "30", "-t", "60s",
                                 "--metrics-port", str(port), log_name=locustfile, logs=logs))  # fmt: skip
    base, master_port = free_ports_in_a_row(3), str(free_port())
    targets += [f"127.0.0.1:{port}" for port in (base, base + 1, base + 2)]
    flags = ("-u", "40", "-t", "30s", "--processes", "2", "--master-bind-port", master_port,
             "--master-port", master_port, "--metrics-port", str(base), "--metrics-linger", "3",
             "--summary", str(tmp_path / "d.json"))  # fmt: skip
    process = start_locust(tmp_path, "voiceroom.py", BUSY_VOICE + AUDIO, *common, *flags, log_name="distributed",
                           logs=logs)  # fmt: skip
    distributed = DistributedRun(process, base, tmp_path / "d.json")
    runs.append(distributed.process)
    prometheus_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{rules}']\n"
        f"scrape_configs:\n  - job_name: loadgen\n    static_configs:\n      - targets: {json.dumps(targets)}\n"
    )
    logs.append(open(tmp_path / "prometheus.log", "wb"))
    prometheus_command = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ]
    prometheus = subprocess.Popen(prometheus_command, stdout=logs[-1], stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30 * SCALE
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{prometheus_port}/-/ready", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(10 * SCALE)  # a few scrapes before the first look
        yield Scraped(prometheus_port, distributed)
    finally:
        for process in runs:
            process.send_signal(signal.SIGTERM)
        for process in runs:
            process.wait(timeout=60 * SCALE)
        prometheus.terminate()
        prometheus.wait(timeout=30)
        for log in logs:
            log.close()


def expressions_without_data(port: int, rules_file) -> list[str]:
    empty = []
    for dashboard, panel, expr in build.all_queries():
        concrete = expr.replace("$__rate_interval", "1m").replace("$scenario", ".*").replace("$run_id", ".*")
        if not query(port, concrete):
            empty.append(f"{dashboard} / {panel}: {concrete}")
    for rule in yaml.safe_load(rules_file.read_text())["groups"][0]["rules"]:
        expr = rule["expr"]
        if "alert" in rule:
            # an alert is silent while its SLO holds; its figure must still be there
            expr = COMPARISON.match(expr.strip()).group("figure")
        if not query(port, expr):
            empty.append(f"rule {rule.get('record') or rule.get('alert')}: {expr}")
    return empty


def last_values(port: int, metric: str, instances: str, by: str) -> Counter:
    """The last scraped value of ``metric`` per ``by`` label, summed over the matching instances."""
    totals: Counter = Counter()
    for series in query(port, f'last_over_time({metric}{{instance=~"{instances}"}}[10m])'):
        totals[series["metric"][by]] += float(series["value"][1])
    return totals


def test_dashboards_rules_and_worker_counters_against_real_scrapes(scraped_runs, tmp_path):
    """Every dashboard query and rule expression returns series from real scrapes of real runs, standalone
    and distributed; the distributed run's workers, summed, scraped last, count what its summary counts."""
    port, distributed = scraped_runs.prometheus_port, scraped_runs.distributed
    # rare events (a PK, a busy callee) may take a while on a loaded machine: look again, within bounds
    deadline = time.monotonic() + 40 * SCALE
    empty = expressions_without_data(port, tmp_path / "rules.yml")
    while empty and time.monotonic() < deadline:
        time.sleep(3)
        empty = expressions_without_data(port, tmp_path / "rules.yml")
    assert not empty, "expressions without data:\n" + "\n".join(empty)

    # an invariant broken on purpose fails the SLO, so the distributed run exits 1, summary written
    assert distributed.process.wait(timeout=90 * SCALE) == 1
    summary = json.loads(distributed.summary.read_text())
    assert summary["generator"]["workers"] == 2 and "partial" not in summary
    workers = distributed.worker_instances
    messages = last_values(port, "loadgen_messages_total", workers, by="outcome")
    assert messages["delivered"] > 0
    assert messages == Counter({outcome: summary["messages"][outcome] for outcome in messages})
    operations = last_values(port, "loadgen_operations_total", workers, by="op")
    assert operations == Counter({op: figures["count"] for op, figures in summary["operations"].items()})
    failures = last_values(port, "loadgen_operation_failures_total", workers, by="op")
    assert failures == Counter({op: figures["failures"] for op, figures in summary["operations"].items()})
    # the master serves the same run merged: reading it alone gives the summary too
    master = last_values(port, "loadgen_messages_total", f"127.0.0.1:{distributed.metrics_base}", by="outcome")
    assert master == messages
