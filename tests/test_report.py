"""loadgen report: a real run's report opened in headless Chromium, and reports of crashed, older
and damaged results folders."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.cli import main
from tests.support import ROOT, SCALE, Backend, run_locust

RENDER = ROOT / "tests" / "report" / "render.py"
SLO = """\
delivery_latency: ["p(99) < 300ms"]
messages.sent: ["count > 1000000"]
"""
SECTIONS = ("Verdict", "Over time", "Latency distributions", "Operations", "Reproduce this run")
CHARTS = {
    "chart-users-throughput", "chart-delivery-over-time", "chart-operations-over-time", "chart-anomalies-over-time",
    "chart-generator-health", "chart-delivery-distribution", "chart-operation-distributions",
}  # fmt: skip


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A short voice-room run judged by an SLO file with one check it cannot meet."""
    tmp = tmp_path_factory.mktemp("report")
    slo = tmp / "slo.yaml"
    slo.write_text(SLO)
    server = Backend(tmp)
    try:
        done = run_locust(
            tmp, "voiceroom.py", "--host", server.url, "-u", "60", "-r", "60", "-t", "6s", "--series-interval", "1",
            "--metrics-port", "0", "--slo", str(slo), "--results", str(tmp / "run"),
        )  # fmt: skip
    finally:
        server.stop()
    assert done.returncode == 1 and done.summary is not None, done  # the SLO failed, as it should
    return tmp / "run"


def render(page: Path, shot: Path) -> dict:
    done = subprocess.run(
        [sys.executable, str(RENDER), str(page), str(shot)], capture_output=True, text=True, timeout=120 * SCALE
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_rendered(seen: dict, page: Path, shot: Path, charts: set[str]) -> None:
    assert seen["problems"] == []
    assert seen["requests"] == [page.resolve().as_uri()]  # nothing fetched: it works offline
    assert {chart["id"] for chart in seen["charts"]} == charts
    for chart in seen["charts"]:
        assert chart["width"] > 300 and chart["height"] > 100, chart
        assert chart["longest"] > 20, chart  # a data line or curve was drawn, not just axes
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_a_real_runs_report_renders_in_chromium(run_folder, tmp_path, capsys):
    """The report of a real run opens offline in headless Chromium with no error and every chart drawn."""
    assert main(["report", str(run_folder)]) == 0
    page = run_folder / "report.html"
    assert f"Report written to {page}" in capsys.readouterr().out
    seen = render(page, tmp_path / "report.png")
    assert_rendered(seen, page, tmp_path / "report.png", CHARTS)
    positions = [seen["text"].index(section) for section in SECTIONS]
    assert positions == sorted(positions), "the verdict comes first, then charts, distributions, tables, reproduction"


def test_the_verdict_names_each_check_and_by_how_much(run_folder, tmp_path):
    """The verdict says the SLO failed, which check, its value and how far it missed; the passing one its headroom."""
    page = tmp_path / "r.html"
    assert main(["report", str(run_folder), "-o", str(page)]) == 0
    text = page.read_text()
    summary = json.loads((run_folder / "summary.json").read_text())
    sent = summary["messages"]["sent"]
    assert "SLO FAILED" in text
    assert "messages.sent count &gt; 1000000" in text and f"misses by {1_000_000 - sent:,}" in text
    assert "delivery_latency p(99) &lt; 300ms" in text and "headroom" in text
    assert f"<pre>{html.escape(SLO)}</pre>" in text  # the SLO file's text, to run it again
    assert "voiceroom.py" in text and "--series-interval" in text  # the command line


def test_a_crashed_run_still_gets_a_report(run_folder, tmp_path):
    """A folder with only the time series (the run died, its last line cut) still reports, marked incomplete."""
    crashed = tmp_path / "crashed"
    shutil.copytree(run_folder, crashed)
    for name in ("summary.json", "histograms.json", "report.html"):
        (crashed / name).unlink(missing_ok=True)
    series = (crashed / "timeseries.jsonl").read_text()
    (crashed / "timeseries.jsonl").write_text(series[: len(series) - 40])
    assert main(["report", str(crashed)]) == 0
    page = crashed / "report.html"
    seen = render(page, tmp_path / "crashed.png")
    over_time = {"chart-users-throughput", "chart-delivery-over-time", "chart-operations-over-time",
                 "chart-anomalies-over-time", "chart-generator-health"}  # fmt: skip
    assert_rendered(seen, page, tmp_path / "crashed.png", over_time)
    assert "INCOMPLETE" in seen["text"] and "crashed or killed" in seen["text"]
    assert "1 unreadable line(s) skipped" in seen["text"]


def test_an_older_run_says_what_the_report_lacks(run_folder, tmp_path):
    """Without run.json and timeseries.jsonl the report keeps the verdict and distributions and says what is missing."""
    older = tmp_path / "older"
    shutil.copytree(run_folder, older)
    (older / "run.json").unlink()
    (older / "timeseries.jsonl").unlink()
    assert main(["report", str(older)]) == 0
    text = (older / "report.html").read_text()
    assert "run.json is missing" in text and "timeseries.jsonl is missing" in text
    assert 'id="chart-delivery-distribution"' in text and "SLO FAILED" in text


def test_a_saturated_generator_is_flagged(run_folder, tmp_path):
    """Intervals where the generator ran at 90 % CPU or more are shaded, listed and warned about."""
    busy = tmp_path / "busy"
    shutil.copytree(run_folder, busy)
    rows = [json.loads(line) for line in (busy / "timeseries.jsonl").read_text().splitlines()]
    rows[1]["cpu_percent"] = 97.0
    rows[2]["loop_lag_ms"] = 250.0
    (busy / "timeseries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["report", str(busy)]) == 0
    text = (busy / "report.html").read_text()
    assert f"in 2 of {len(rows)} intervals the generator" in text
    assert "Generator saturated, results suspect in these intervals" in text


def test_a_folder_that_holds_no_run_is_bad_input(tmp_path, capsys):
    """A folder with neither summary.json nor timeseries.jsonl exits 2 naming what is missing."""
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path / 'summary.json'}: missing (nor timeseries.jsonl)" in capsys.readouterr().err


def test_a_damaged_summary_is_bad_input(tmp_path, capsys):
    """A summary.json that is not JSON exits 2 naming the file and line."""
    (tmp_path / "summary.json").write_text('{\n  "scenario": \n')
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path / 'summary.json'}:3: not valid JSON" in capsys.readouterr().err
