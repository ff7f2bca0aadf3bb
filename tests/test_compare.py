"""loadgen compare: real runs with and without an injected delay, the noise and verdict logic on
constructed histograms, tolerance files, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram

from loadgen.cli import main
from loadgen.report._compare import IMPROVED, NOT_COMPARABLE, REGRESSED, SAME, UNSURE, compare
from loadgen.report._results import Run
from loadgen.report._stats import decode, distribution
from loadgen.report._tolerance import Tolerance, load_tolerance, loads_tolerance
from tests.support import ROOT, SCALE, Backend, run_locust

RENDER = ROOT / "tests" / "report" / "render.py"
#: short voice-room runs, one time-series line a second so a few seconds give enough intervals
RUN = ("-u", "60", "-r", "60", "-t", "6s", "--series-interval", "1", "--metrics-port", "0")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two runs against one backend and one against a backend delaying every delivery by 30 ms."""
    tmp = tmp_path_factory.mktemp("compare")
    plain, delayed = Backend(tmp), Backend(tmp, "--delay-ms", "30")
    folders = {}
    try:
        for name, server in (("base", plain), ("same", plain), ("delayed", delayed)):
            folder = tmp / name
            done = run_locust(tmp, "voiceroom.py", "--host", server.url, *RUN, "--results", str(folder))
            assert done.summary is not None and done.summary["messages"]["delivered"] > 0, done
            folders[name] = folder
    finally:
        plain.stop()
        delayed.stop()
    return folders


def loadgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadgen.cli", *args], capture_output=True, text=True, timeout=120 * SCALE, cwd=ROOT
    )


def test_an_injected_delivery_delay_is_a_regression(runs):
    """A candidate whose backend delays deliveries by 30 ms exits 1 and names delivery latency."""
    done = loadgen("compare", str(runs["base"]), str(runs["delayed"]))
    assert done.returncode == 1, done.stdout + done.stderr
    regressed = [line for line in done.stdout.splitlines() if line.startswith("REGRESSED:")]
    assert regressed and "delivery_latency p(50)" in regressed[0], done.stdout
    assert f"Comparison written to {runs['delayed'] / 'compare.html'}" in done.stdout
    assert (runs["delayed"] / "compare.html").exists()


def test_two_runs_against_the_same_backend_are_no_regression(runs):
    """Two runs of one profile against one backend exit 0."""
    done = loadgen("compare", str(runs["base"]), str(runs["same"]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No regression." in done.stdout
    assert "WARNING" not in done.stderr


def test_the_comparison_renders_in_chromium(runs, tmp_path, capsys):
    """The comparison opens in headless Chromium with no error, every chart drawn, and the verdict shown."""
    output = tmp_path / "cmp.html"
    assert main(["compare", str(runs["base"]), str(runs["delayed"]), "-o", str(output)]) == 1
    shot = tmp_path / "compare.png"
    done = subprocess.run(
        [sys.executable, str(RENDER), str(output), str(shot)], capture_output=True, text=True, timeout=120 * SCALE
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["problems"] == []
    assert seen["requests"] == [output.resolve().as_uri()]  # nothing fetched: it works offline
    ids = {chart["id"] for chart in seen["charts"]}
    assert {"chart-delivery-overlay", "chart-delivery-curves", "chart-operation-curves"} <= ids
    for chart in seen["charts"]:
        assert chart["width"] > 300 and chart["height"] > 100, chart
        assert chart["longest"] > 20, chart
    assert "REGRESSED" in seen["text"] and "delivery_latency p(99)" in seen["text"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_runs_of_different_profiles_are_compared_with_a_loud_warning(runs, tmp_path, capsys):
    """A candidate run with another profile and load is still compared, with a warning on stderr and in the page."""
    other = tmp_path / "other"
    shutil.copytree(runs["same"], other)
    info = json.loads((other / "run.json").read_text())
    info["profile"] = {"path": "locustfiles/profiles/review.yaml", "text": "rooms: 5\n"}
    info["options"]["num_users"] = 500
    (other / "run.json").write_text(json.dumps(info))
    assert main(["compare", str(runs["base"]), str(other)]) == 0
    err = capsys.readouterr().err
    assert "WARNING: different profiles" in err
    assert "WARNING: different load: num_users 60 in the baseline, 500 in the candidate" in err
    assert "different profiles" in (other / "compare.html").read_text()


def test_a_tolerance_file_decides_how_much_worse_is_allowed(runs, tmp_path, capsys):
    """With delivery latency allowed 50 ms worse, the 30 ms delay is no regression."""
    tolerance = tmp_path / "tolerance.yaml"
    tolerance.write_text("delivery_latency: 50ms\n")
    code = main(["compare", str(runs["base"]), str(runs["delayed"]), "--tolerance", str(tolerance)])
    assert code == 0, capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("latency: 20% or 5ms\nroom.jion p(99): 5\n", ":2: room.jion p(99): cannot read '5'"),
        ("latency: 20%\ndelivery_latncy: 5ms\n", ":2: delivery_latncy: unknown figure"),
        ("errors: 5\n", ":1: errors: a bare rate is a fraction from 0 to 1"),
        ("invariants.violations: some\n", ":1: invariants.violations: must be a count"),
        ("latency: 5ms\nlatency: 6ms\n", ":2: latency: given twice"),
        ("delivery_latency p(99.9): 5ms\n", ":1: delivery_latency p(99.9): compare judges p(50), p(95), p(99)"),
        ("latency: [5ms\n", ":2: not valid YAML"),
    ],
)
def test_tolerance_mistakes_are_bad_input_naming_file_line_and_key(text, where, tmp_path, capsys):
    """A wrong tolerance file exits 2 before reading any run, naming file, line and key."""
    path = tmp_path / "tolerance.yaml"
    path.write_text(text)
    assert main(["compare", str(tmp_path), str(tmp_path), "--tolerance", str(path)]) == 2
    assert f"{path}{where}" in capsys.readouterr().err


def test_a_folder_without_a_summary_is_bad_input(runs, tmp_path, capsys):
    """A folder with no summary.json (or none at all) exits 2 naming the file."""
    assert main(["compare", str(runs["base"]), str(tmp_path)]) == 2
    assert f"{tmp_path / 'summary.json'}: missing" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nowhere"), str(runs["base"])]) == 2
    assert "no such results folder" in capsys.readouterr().err


def test_the_example_tolerance_file_reads():
    """locustfiles/tolerance.yaml is a valid tolerance file."""
    tolerance = load_tolerance(ROOT / "locustfiles" / "tolerance.yaml")
    assert tolerance.latency("delivery_latency", "p(99)").allowed(100.0) > 0


# --- the statistics, on constructed histograms -----------------------------------------------


def encode(values_ms: np.ndarray) -> str:
    histogram = HdrHistogram(1, 3_600_000_000, 3)
    for value in values_ms:
        histogram.record_value(max(1, int(value * 1000)))
    return histogram.encode().decode("ascii")


def synthetic(latencies_ms: np.ndarray, intervals: int = 10, violations: int = 0) -> Run:
    """A run whose deliveries took ``latencies_ms``, spread evenly over ``intervals`` intervals."""
    series = []
    for index, chunk in enumerate(np.array_split(latencies_ms, intervals)):
        p50, p95, p99 = (float(np.percentile(chunk, p)) for p in (50, 95, 99))
        series.append({
            "t": float(index + 1), "interval_s": 1.0, "users": 10,
            "messages": {"sent": len(chunk), "delivered": len(chunk), "lost": 0},
            "delivery_ms": {"count": len(chunk), "p50": p50, "p95": p95, "p99": p99, "max": float(chunk.max())},
            "operations": {}, "violations": 0,
        })  # fmt: skip
    summary = {
        "scenario": "voiceroom", "run_id": "x", "duration_s": float(intervals), "users_peak": 10,
        "messages": {"sent": len(latencies_ms), "delivered": len(latencies_ms), "lost": 0},
        "operations": {}, "invariants": {"violations": violations},
    }  # fmt: skip
    histograms = {"delivery_latency": encode(latencies_ms), "operations": {}}
    return Run(Path("synthetic"), summary, histograms, None, series)


def verdicts(base: Run, cand: Run, tolerance: Tolerance | None = None) -> dict[str, str]:
    result = compare(base, cand, tolerance or Tolerance())
    return {row.figure: row.verdict for row in result.rows}


def loopback(seed: int, n: int = 4000, shift_ms: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(mean=0.7, sigma=0.5, size=n) + shift_ms


def test_percentiles_are_hdrhistograms_own():
    """A distribution's percentiles are exactly those HdrHistogram reports."""
    text = encode(loopback(1))
    histogram = HdrHistogram.decode(text.encode("ascii"))
    found = distribution(histogram)
    for p in (0.1, 50, 90, 95, 99, 99.9, 100):
        assert found.percentile(p) == histogram.get_value_at_percentile(p)


def test_a_30ms_shift_is_a_regression_and_a_fresh_sample_is_not():
    """+30 ms on every delivery regresses every percentile; another sample of the same process does not."""
    base = synthetic(loopback(1))
    shifted = verdicts(base, synthetic(loopback(2, shift_ms=30)))
    assert [shifted[f"delivery_latency p({p})"] for p in (50, 95, 99)] == [REGRESSED] * 3
    again = verdicts(base, synthetic(loopback(2)))
    assert [again[f"delivery_latency p({p})"] for p in (50, 95, 99)] == [SAME] * 3


def test_jitter_of_a_millisecond_is_within_tolerance_though_beyond_noise():
    """1 ms more on loopback latencies of a few ms is real but within the default 5 ms floor."""
    result = compare(synthetic(loopback(1)), synthetic(loopback(2, shift_ms=1)), Tolerance())
    [row] = [r for r in result.rows if r.figure == "delivery_latency p(50)"]
    assert row.verdict == SAME and row.note == "within tolerance, beyond noise"
    assert row.interval.low > 0


def test_a_faster_candidate_is_an_improvement():
    """Latencies 30 ms lower are an improvement, not a regression."""
    found = verdicts(synthetic(loopback(1, shift_ms=30)), synthetic(loopback(2)))
    assert found["delivery_latency p(50)"] == IMPROVED


def test_a_shift_in_too_few_intervals_is_unsure():
    """Samples that all came in one interval cannot be told from noise: unsure, never regressed."""
    found = verdicts(synthetic(loopback(1), intervals=1), synthetic(loopback(2, shift_ms=30), intervals=1))
    assert found["delivery_latency p(50)"] == UNSURE


def test_one_slow_interval_is_noise_not_a_regression():
    """A candidate slow in a single interval out of ten swings its p99, but within the noise over time."""
    slow = loopback(2)
    slow[-400:] += 25  # the last of ten intervals, e.g. everyone logging out at once
    found = verdicts(synthetic(loopback(1)), synthetic(slow))
    assert found["delivery_latency p(99)"] == SAME


def test_invariant_violations_may_not_grow_from_zero():
    """A single broken invariant where the baseline had none regresses; the tolerance can allow some."""
    base, cand = synthetic(loopback(1)), synthetic(loopback(2), violations=1)
    assert verdicts(base, cand)["invariants.violations count"] == REGRESSED
    allowing = loads_tolerance("invariants.violations: 2\n", "t.yaml")
    assert verdicts(base, cand, allowing)["invariants.violations count"] == SAME


def test_tolerance_precedence_is_percentile_then_figure_then_latency():
    """One percentile's own allowance beats its figure's, which beats the default for every latency."""
    tolerance = loads_tolerance("latency: 1ms\ndelivery_latency: 40ms\ndelivery_latency p(99): ignore\n", "t.yaml")
    found = verdicts(synthetic(loopback(1)), synthetic(loopback(2, shift_ms=30)), tolerance)
    assert found["delivery_latency p(50)"] == SAME
    assert found["delivery_latency p(99)"] == "ignored"


def test_an_operation_in_one_run_only_is_not_comparable():
    """An operation only the candidate performed has no baseline: not comparable, and no regression."""
    base, cand = synthetic(loopback(1)), synthetic(loopback(2))
    cand.summary["operations"]["seat.take"] = {"count": 10, "failures": 0, "p50_ms": 1, "p95_ms": 2, "p99_ms": 3}
    cand.histograms["operations"]["seat.take"] = encode(np.full(10, 1.0))
    result = compare(base, cand, Tolerance())
    row = next(r for r in result.rows if r.figure == "seat.take p(99)")
    assert row.verdict == NOT_COMPARABLE and row.note == "never performed in the baseline"
    assert not result.regressed
    assert decode(cand.histograms["operations"]["seat.take"]).total == 10
