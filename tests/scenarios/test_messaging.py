"""The messaging locustfile end to end: real `locust` runs against a real reference backend.

Every fault test keeps room membership stable (no voluntary reconnects), which is when the
toolkit's counts must equal the backend's injected counts exactly.
"""

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.support import ROOT, SCALE, free_port

STABLE = """
messaging:
  rooms: 5
  post_rate: 4
  dm_rate: 0.5
  read_rate: 0.5
  reconnect_rate: 0
"""

RUN = ("-u", "40", "-r", "40", "-t", "6s", "--delivery-timeout", "2")


def messages(run):
    return run.summary["messages"]


def test_clean_run_on_the_embedded_backend(locust_run):
    """Without --host the embedded backend starts and a clean run reports no anomaly and exits 0."""
    run = locust_run("messaging.py", "-u", "40", "-r", "40", "-t", "5s", "--drain", "1")
    assert run.returncode == 0, run
    assert "No --host given: started the reference backend at ws://127.0.0.1:" in run.output
    m = messages(run)
    assert m["delivered"] > 100, run
    assert (m["lost"], m["duplicated"], m["out_of_order"]) == (0, 0, 0)
    ops = run.summary["operations"]
    assert ops["room.join"]["count"] >= 40 and ops["room.join"]["failures"] == 0
    assert ops["msg.send"]["count"] > 0 and ops["ws.connect"]["count"] >= 40
    lat = m["delivery_latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert run.summary["users_peak"] == 40
    assert "End-to-end delivery (messaging" in run.output
    assert "msg.deliver" in run.output
    assert "by the bench's figures" not in run.output, "a light run warned of overload"


def test_a_load_beyond_one_core_is_warned_of_with_the_figures_behind_it(locust_run, write_profile):
    """50 users in one room posting 100/s: 5,000 posts/s, each pushed to 49 others: 245,000 deliveries/s."""
    profile = write_profile(
        "messaging: {rooms: 1, rooms_per_user: 1, post_rate: 100, dm_rate: 0, read_rate: 0, reconnect_rate: 0}\n"
    )
    run = locust_run("messaging.py", "--profile", profile, "-u", "50", "-r", "50", "-t", "4s", "--drain", "1")
    assert "users ask for about 5,000 operations/s and 245,000 room deliveries/s: 1.8 cores" in run.output, run
    assert "--processes 3" in run.output, run


@pytest.mark.parametrize(
    "flag, kind, reported",
    [
        ("--drop", "drop", "lost"),
        ("--duplicate", "duplicate", "duplicated"),
        ("--reorder", "reorder", "out_of_order"),
    ],
)
def test_injected_faults_are_reported_exactly(backend, locust_run, write_profile, flag, kind, reported):
    """Lost, duplicated and out-of-order counts equal the faults the backend injected."""
    server = backend(flag, "0.03", "--seed", "7")
    run = locust_run("messaging.py", *RUN, "--host", server.url, "--profile", write_profile(STABLE))
    injected = server.injected(kind)
    m = messages(run)
    assert injected > 10, run
    assert m[reported] == injected, (m, run)
    others = {"lost", "duplicated", "out_of_order"} - {reported}
    assert all(m[name] == 0 for name in others), m
    assert run.returncode == 1, run
    assert f"msg.{reported}" in run.output


def test_drops_with_reconnects_are_lost_or_recovered(backend, locust_run, write_profile):
    """With users reconnecting and syncing history, lost plus recovered equals injected drops."""
    server = backend("--drop", "0.02", "--seed", "3")
    churn = STABLE.replace("reconnect_rate: 0", "reconnect_rate: 0.3")
    run = locust_run("messaging.py", *RUN, "--host", server.url, "--profile", write_profile(churn))
    m = messages(run)
    assert run.summary["connections"]["reconnects"] > 10, run
    assert m["recovered"] > 0, m
    assert m["lost"] + m["recovered"] == server.injected("drop"), m


def test_cut_connections_are_counted_and_mended(backend, locust_run, write_profile):
    """Connections the backend aborts are counted as dropped, reconnected, and lose nothing."""
    server = backend("--disconnect-rate", "0.02", "--seed", "5")
    run = locust_run("messaging.py", *RUN, "--host", server.url, "--profile", write_profile(STABLE))
    injected = server.injected("disconnect")
    assert injected > 3, run
    connections = run.summary["connections"]
    assert connections["dropped"] == injected, connections
    assert connections["reconnects"] >= injected
    assert messages(run)["lost"] == 0


def test_injected_delay_moves_p50_by_that_delay(backend, locust_run, write_profile):
    """A 50 ms delay on every delivery moves the reported median latency by 50 ms ± 5 ms."""
    profile = write_profile(STABLE)
    plain = backend("--seed", "1")
    base = locust_run("messaging.py", *RUN, "--host", plain.url, "--profile", profile)
    plain.stop()
    slow = backend("--delay-ms", "50", "--seed", "1")
    delayed = locust_run("messaging.py", *RUN, "--host", slow.url, "--profile", profile)
    shift = messages(delayed)["delivery_latency_ms"]["p50"] - messages(base)["delivery_latency_ms"]["p50"]
    assert 45 <= shift <= 55, (shift, base.summary["messages"], delayed.summary["messages"])
    assert messages(delayed)["lost"] == 0 and messages(delayed)["out_of_order"] == 0


def test_exit_code_on_error_is_honoured(backend, locust_run, write_profile):
    """Recorded failures exit with Locust's --exit-code-on-error value."""
    server = backend("--duplicate", "0.05", "--seed", "2")
    run = locust_run(
        "messaging.py",
        *RUN,
        "--host",
        server.url,
        "--profile",
        write_profile(STABLE),
        "--exit-code-on-error",
        "7",
    )
    assert run.returncode == 7, run
    assert run.summary["exit_code"] == 7


def test_unreachable_backend_exits_3_with_one_clear_line(locust_run, tmp_path):
    """A host nobody listens on ends the run at once with exit code 3 and a summary saying why."""
    run = locust_run("messaging.py", "-u", "10", "-r", "10", "-t", "5s", "--host", "ws://127.0.0.1:1", timeout=60)
    assert run.returncode == 3, run
    lines = [line for line in run.output.splitlines() if "Could not reach the backend at ws://127.0.0.1:1" in line]
    assert len(lines) == 1, run
    assert "Traceback" not in run.output
    assert run.summary["exit_code"] == 3 and "could not reach" in run.summary["error"]


def test_bad_profile_exits_2_naming_file_line_and_key(locust_run, write_profile):
    """A profile with a bad value stops the run before it starts, naming file, line and key."""
    path = write_profile("messaging:\n  rooms: 3\n  post_rate: fast\n")
    run = locust_run("messaging.py", "-u", "1", "-t", "2s", "--profile", path, timeout=60)
    assert run.returncode == 2, run
    assert f"{path}:3: messaging.post_rate: must be a float" in run.output
    assert "Traceback" not in run.output


def test_options_are_listed_by_loadgen_options():
    """`loadgen options` lists every option the toolkit adds to locust, since Locust's --help cannot."""
    done = subprocess.run(
        [sys.executable, "-m", "loadgen.cli", "options"],
        capture_output=True,
        text=True,
        timeout=60 * SCALE,
    )
    for option in ("--summary", "--results", "--delivery-timeout", "--drain", "--request-timeout"):
        assert option in done.stdout


def test_options_work_from_the_environment(locust_run, tmp_path, monkeypatch):
    """A toolkit option set as LOCUST_<NAME> takes effect like its flag."""
    monkeypatch.setenv("LOCUST_DELIVERY_TIMEOUT", "1.25")
    run = locust_run("messaging.py", "-u", "5", "-r", "5", "-t", "2s", "--drain", "0.5")
    assert run.returncode == 0, run
    assert run.summary["messages"]["delivery_timeout_s"] == 1.25


def test_options_work_from_a_config_file(tmp_path):
    """Options set in a Locust config file take effect like command-line flags."""
    config = tmp_path / "run.conf"
    summary = tmp_path / "from-config.json"
    config.write_text(
        "headless = true\nusers = 10\nspawn-rate = 10\nrun-time = 2s\n"
        f"summary = {summary}\ndelivery-timeout = 1.5\ndrain = 0.5\nresults = {tmp_path / 'r'}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "messaging.py"), "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90 * SCALE,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(summary.read_text())["messages"]["delivery_timeout_s"] == 1.5


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_still_writes_results(tmp_path, sig):
    """SIGTERM or Ctrl-C during a run drains briefly, writes the summary marked interrupted, and exits saying so."""
    summary = tmp_path / "s.json"
    metrics_port = free_port()
    locustfile = str(ROOT / "locustfiles" / "messaging.py")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            locustfile,
            "--headless",
            "-u",
            "20",
            "-r",
            "20",
            "-t",
            "60s",
            "--summary",
            str(summary),
            "--results",
            str(tmp_path / "r"),
            "--metrics-port",
            str(metrics_port),
        ],  # fmt: skip
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30 * SCALE
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        if "All users spawned" in line:
            break
    time.sleep(2)
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    process.send_signal(sig)
    output, _ = process.communicate(timeout=60 * SCALE)
    assert summary.exists(), output
    data = json.loads(summary.read_text())
    assert data["interrupted"] is True
    # as a shell reports the signal: 130 for Ctrl-C, 143 for SIGTERM
    assert process.returncode == data["exit_code"] == 128 + sig, output[-3000:]
    assert 'loadgen_messages_total{outcome="delivered",scenario="messaging"}' in scraped
    assert data["messages"]["delivered"] > 0
    assert (tmp_path / "r" / "summary.json").exists()
