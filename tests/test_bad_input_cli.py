"""Real `locust` runs that cannot reach their backend, or cannot write their results: one clear line, no traceback.

An unreachable host (a closed port, a plain server behind ``wss://``, a certificate no one
trusts) ends the run with exit code 3, one line naming the host and the reason, and a
summary carrying the error. A full disk (``/dev/full``, which fails every write with
ENOSPC) under any result file is said once, naming the file; the run finishes and writes
the files it can.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme

from tests.support import ROOT, SCALE, free_port, run_locust

PLAIN_SERVER = """
import asyncio, sys

async def answer(reader, writer):
    await reader.read(1024)
    writer.write(b"HTTP/1.1 400 Bad Request\\r\\nContent-Length: 0\\r\\n\\r\\n")
    await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", int(sys.argv[1]))
    open(sys.argv[2], "w").write("ready")
    await server.serve_forever()

asyncio.run(main())
"""


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20 * SCALE
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the test's server did not start"
        time.sleep(0.05)


@pytest.fixture
def plain_server(tmp_path):
    """A plain TCP server on a free port that answers anything with an HTTP 400, as a web server would."""
    port, ready = free_port(), tmp_path / "plain-ready"
    process = subprocess.Popen([sys.executable, "-c", PLAIN_SERVER, str(port), str(ready)])
    _wait_for(ready, process)
    yield port
    process.terminate()
    process.wait(timeout=10 * SCALE)


@pytest.fixture
def untrusted_tls_server(tmp_path):
    """The transport tests' WebSocket peer over TLS, with a certificate from a CA nobody trusts."""
    cert = trustme.CA().issue_cert("127.0.0.1")
    certfile, keyfile, ports = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ports.json"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    command = [sys.executable, str(ROOT / "tests" / "transport" / "peer.py"), "--port-file", str(ports),
               "--certfile", str(certfile), "--keyfile", str(keyfile)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(ports, process)
    yield json.loads(ports.read_text())["wss"]
    process.terminate()
    process.wait(timeout=10 * SCALE)


def _unreachable(locust_run, host: str, reason: str):
    run = locust_run("messaging.py", "-u", "2", "-r", "2", "-t", "5s", "--metrics-port", "0", "--host", host)
    assert run.returncode == 3, run
    lines = [line for line in run.output.splitlines() if "Could not reach the backend" in line]
    assert len(lines) == 1, run
    assert f"Could not reach the backend at {host}: " in lines[0] and reason in lines[0], lines
    assert "Traceback" not in run.output, run
    assert run.summary is not None and run.summary["exit_code"] == 3
    assert reason in run.summary["error"], run.summary["error"]
    return lines[0]


def test_a_closed_port_exits_3_naming_the_host_and_the_refusal(locust_run):
    """Nothing listening: exit 3, "Connection refused" beside the host, and the summary says so."""
    _unreachable(locust_run, f"ws://127.0.0.1:{free_port()}", "Connection refused")


def test_wss_to_a_plain_server_exits_3_saying_it_does_not_speak_tls(locust_run, plain_server):
    """A wss:// URL aimed at a plain HTTP port: exit 3 and a line that says the server does not speak TLS."""
    line = _unreachable(locust_run, f"wss://127.0.0.1:{plain_server}", "TLS handshake failed")
    assert "does not speak TLS" in line and "ws://" in line, line


def test_wss_to_a_server_with_an_untrusted_certificate_exits_3_saying_why(locust_run, untrusted_tls_server):
    """A certificate from an unknown CA: exit 3 and a line that the certificate was refused and why."""
    line = _unreachable(locust_run, f"wss://127.0.0.1:{untrusted_tls_server}", "certificate was refused")
    assert "unable to get local issuer certificate" in line, line


# -- a full disk --------------------------------------------------------------------------

QUICK = ("-u", "4", "-r", "4", "-t", "3s", "--drain", "1", "--metrics-port", "0")


def _no_space(output: str, path: Path | str) -> list[str]:
    return [line for line in output.splitlines() if str(path) in line and "No space left on device" in line]


def test_a_summary_path_on_a_full_disk_is_reported_and_the_results_folder_still_gets_its_summary(tmp_path):
    """--summary /dev/full: one error line naming it and ENOSPC; the results folder's summary.json is written."""
    results = tmp_path / "results"
    command = [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "messaging.py"), "--headless",
               *QUICK, "--results", str(results), "--summary", "/dev/full"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120 * SCALE,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert len(_no_space(output, "/dev/full")) == 1, output[-3000:]
    assert "Traceback" not in output
    assert Path("/dev/full").is_char_device(), "the summary replaced the device"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["messages"]["delivered"] > 0
    assert f"Summary written to {results / 'summary.json'}" in output
    assert "/dev/full" not in output.split("Summary written to", 1)[1].splitlines()[0]


def test_a_full_disk_under_the_time_series_and_histograms_is_said_once_each_and_the_run_finishes(tmp_path):
    """Time series and histograms on /dev/full: one error each, naming the file; summary and run.json written."""
    results = tmp_path / "results"
    results.mkdir()
    for name in ("timeseries.jsonl", "histograms.json"):
        os.symlink("/dev/full", results / name)
    run = run_locust(tmp_path, "messaging.py", *QUICK, "--results", str(results), "--series-interval", "0.5")
    assert run.returncode == 0, run
    assert "Traceback" not in run.output, run
    for name in ("timeseries.jsonl", "histograms.json"):
        assert len(_no_space(run.output, results / name)) == 1, run
    assert run.summary is not None and run.summary["messages"]["delivered"] > 0
    assert (results / "summary.json").is_file() and (results / "run.json").is_file()
    assert Path("/dev/full").is_char_device()
