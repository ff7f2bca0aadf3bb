"""SLO files deciding real runs: pass, fail, stop early, and bad files refused."""

from tests.scenarios.test_rooms_scenarios import BUSY_VOICE

RUN = ("-u", "40", "-r", "40", "-t", "5s", "--drain", "1")


def test_impossible_slo_fails_the_run_and_names_the_check(locust_run, write_profile):
    """A delivery p99 no backend can meet exits 1 and names the failed check in the log and the summary."""
    slo = write_profile('delivery_latency: ["p(99) < 0.001ms"]\n', "slo.yaml")
    run = locust_run("voiceroom.py", *RUN, "--slo", slo, "--profile", write_profile(BUSY_VOICE))
    assert run.returncode == 1, run
    assert "delivery_latency p(99) < 0.001ms" in run.output and "FAIL" in run.output
    block = run.summary["slo"]
    assert block["passed"] is False and block["checks"][0]["passed"] is False
    assert block["checks"][0]["value"] > 0.001


def test_passing_slo_decides_exit_0_even_with_refusals(locust_run, write_profile):
    """A met SLO exits 0, with every check in the summary's slo block."""
    slo = write_profile('room.join: ["p(95) < 5s"]\ninvariants.violations: ["count == 0"]\n', "slo.yaml")
    run = locust_run("voiceroom.py", *RUN, "--slo", slo, "--profile", write_profile(BUSY_VOICE))
    assert run.returncode == 0, run
    names = [check["name"] for check in run.summary["slo"]["checks"]]
    assert run.summary["slo"]["passed"] is True
    assert names == ["room.join p(95) < 5s", "invariants.violations count == 0", "generator.valid"], names


def test_abort_on_fail_stops_the_run_early(backend, locust_run, write_profile):
    """A failed abort_on_fail check past its grace stops the run long before its time limit."""
    server = backend("--bug", "seat-double-grant", "1", "--seed", "2")
    slo = write_profile(
        "invariants.violations:\n  - threshold: count == 0\n    abort_on_fail: true\n    grace: 1s\n", "slo.yaml"
    )
    run = locust_run("voiceroom.py", "-u", "40", "-r", "40", "-t", "60s", "--drain", "1", "--host", server.url,
                     "--slo", slo, "--profile", write_profile(BUSY_VOICE))  # fmt: skip
    assert run.returncode == 1, run
    assert run.summary["duration_s"] < 30
    assert run.summary["aborted"].startswith("SLO breached: invariants.violations")


def test_bad_slo_file_exits_2_naming_file_line_and_key(locust_run, write_profile):
    """An SLO file with a bad condition stops the run before it starts, naming file, line and key."""
    slo = write_profile('room.join: ["p(95) < 600ms"]\nmessages.lost: ["count === 0"]\n', "bad.yaml")
    run = locust_run("voiceroom.py", *RUN, "--slo", slo, timeout=60)
    assert run.returncode == 2, run
    assert f"{slo}:2: messages.lost" in run.output
    assert "Traceback" not in run.output
