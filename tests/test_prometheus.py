"""Dashboards and SLO rules against a real Prometheus scraping real runs of every scenario.

One reference backend (with bugs on, so invariant series exist) serves four locust processes,
one per scenario, each with an SLO file; Debian's Prometheus scrapes them all every second.
While they run, every PromQL expression of every dashboard and of the rules `loadgen rules`
writes must return data.
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

import pytest
import yaml

from tests.scenarios.test_rooms_scenarios import BUSY_LIVE, BUSY_VOICE
from tests.support import ROOT, SCALE, free_port

sys.path.insert(0, str(ROOT / "dashboards"))
import build  # noqa: E402  (the dashboards' own generator, not a package)

# few callees, many callers: busy callees (a panel of their own) are certain within seconds
CROWDED_CALLS = "call1v1:\n  callee_share: 0.2\n  call_rate: 1\n  talk_mean: 3\n"
SCENARIOS = {"voiceroom.py": BUSY_VOICE, "livestream.py": BUSY_LIVE, "call1v1.py": CROWDED_CALLS, "messaging.py": ""}
COMPARISON = re.compile(r"^(?P<figure>.*?)\s*(>=|<=|!=|==|>|<)\s*[-+0-9.e]+$", re.S)


def query(port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.fixture
def scraped_runs(tmp_path, backend):
    """Four scenario runs, a backend with bugs, and Prometheus scraping them; yields the Prometheus port."""
    assert shutil.which("prometheus"), "Debian's prometheus is missing: run scripts/test-deps"
    server = backend("--bug", "seat-double-grant", "0.3", "--bug", "pk-score-skew", "0.3", "--seed", "9")
    review = ROOT / "locustfiles" / "slo" / "review.yaml"
    rules = tmp_path / "rules.yml"
    subprocess.run([sys.executable, "-m", "loadgen.cli", "rules", str(review), "-o", str(rules)], check=True, cwd=ROOT)
    # the runs' own SLO must not abort them (the backend breaks invariants on purpose here)
    slo = tmp_path / "slo.yaml"
    slo.write_text('room.join: ["p(95) < 600ms"]\ninvariants.violations: ["count == 0"]\n')
    targets, runs, logs = [f"127.0.0.1:{server.metrics_port}"], [], []
    for locustfile, profile in SCENARIOS.items():
        port = free_port()
        targets.append(f"127.0.0.1:{port}")
        profile_path = tmp_path / f"{locustfile}.yaml"
        profile_path.write_text(profile or "messaging:\n  rooms: 4\n")
        command = [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / locustfile), "--headless",
                   "-u", "30", "-r", "30", "-t", "60s", "--host", server.url, "--profile", str(profile_path),
                   "--metrics-port", str(port), "--slo", str(slo), "--results", str(tmp_path / locustfile)]  # fmt: skip
        logs.append(open(tmp_path / f"{locustfile}.log", "wb"))
        runs.append(subprocess.Popen(command, cwd=tmp_path, stdout=logs[-1], stderr=subprocess.STDOUT))
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
        yield prometheus_port
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


def test_every_dashboard_and_rule_expression_returns_data(scraped_runs, tmp_path):
    """Every dashboard query and every rule expression returns series from real scrapes of real runs."""
    # rare events (a PK, a busy callee) may take a while on a loaded machine: look again, within bounds
    deadline = time.monotonic() + 40 * SCALE
    empty = expressions_without_data(scraped_runs, tmp_path / "rules.yml")
    while empty and time.monotonic() < deadline:
        time.sleep(3)
        empty = expressions_without_data(scraped_runs, tmp_path / "rules.yml")
    assert not empty, "expressions without data:\n" + "\n".join(empty)
