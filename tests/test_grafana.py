"""loadgen.grafana against a recorded contract of Grafana's HTTP API, served by a stand-in on 127.0.0.1.

No Grafana server runs in CI. The stand-in answers as Grafana's documented API does (folders, dashboards/db,
annotations) and records every request, so each test asserts the exact exchange. It runs as a subprocess:
other test modules import Locust, which monkey-patches this process with gevent.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadgen.grafana import Annotator, GrafanaError, MissingToken, push_dashboards, token_from_env
from tests.support import ROOT, SCALE, free_port

TOKEN = "glsa_contract_Secret_0123456789abcdef"
DASHBOARDS = ROOT / "dashboards"
UIDS = sorted(json.loads(p.read_text())["uid"] for p in DASHBOARDS.glob("*.json"))

#: The stand-in: argv = port file, record file, expected token, JSON list of existing folders, mode.
STAND_IN = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port_file, record_file, token, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[5]
folders = json.loads(sys.argv[4])
next_id = [100]

class Grafana(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with open(record_file, "a") as record:
            record.write(json.dumps({
                "method": self.command, "path": self.path, "body": body,
                "authorization": self.headers.get("Authorization"), "content_type": self.headers.get("Content-Type"),
            }) + "\n")
        if mode == "not-grafana":  # some other web server at the URL
            page = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            return self.wfile.write(page)
        if self.headers.get("Authorization") != "Bearer " + token:
            return self.answer(401, {"message": "Unauthorized"})
        if mode == "forbidden":  # a server that echoes the credentials it got
            return self.answer(403, {"message": "access denied for " + self.headers.get("Authorization")})
        next_id[0] += 1
        path = self.path.split("?")[0]
        if (self.command, path) == ("GET", "/api/folders"):
            return self.answer(200, folders)
        if (self.command, path) == ("POST", "/api/folders"):
            return self.answer(200, {"id": next_id[0], "uid": body["uid"], "title": body["title"],
                                     "url": "/dashboards/f/" + body["uid"] + "/", "version": 1})
        if (self.command, path) == ("POST", "/api/dashboards/db"):
            uid = body["dashboard"]["uid"]
            return self.answer(200, {"id": next_id[0], "uid": uid, "url": "/d/" + uid + "/x", "status": "success",
                                     "version": 1, "slug": "x"})
        if (self.command, path) == ("POST", "/api/annotations"):
            return self.answer(200, {"message": "Annotation added", "id": next_id[0]})
        return self.answer(404, {"message": "Not found"})

    do_GET = do_POST = do_PUT = do_DELETE = handle_any

server = ThreadingHTTPServer(("127.0.0.1", 0), Grafana)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os; os.replace(port_file + ".tmp", port_file)
server.serve_forever()
"""


class StandIn:
    """The recording stand-in for Grafana, as a subprocess."""

    def __init__(self, tmp: Path, folders: list[dict] | None = None, mode: str = "normal") -> None:
        self.record = tmp / "requests.jsonl"
        port_file = tmp / "grafana.port"
        args = [str(port_file), str(self.record), TOKEN, json.dumps(folders or []), mode]
        self.process = subprocess.Popen([sys.executable, "-c", STAND_IN, *args])
        deadline = time.monotonic() + 10 * SCALE
        while not port_file.exists():
            assert self.process.poll() is None, "the Grafana stand-in exited"
            assert time.monotonic() < deadline, "the Grafana stand-in did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port_file.read_text()}"

    def requests(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def grafana(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    started: list[StandIn] = []

    def start(**kwargs) -> StandIn:
        stand_in = StandIn(tmp_path, **kwargs)
        started.append(stand_in)
        return stand_in

    yield start
    for stand_in in started:
        stand_in.stop()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", **(env or {})}
    command = [sys.executable, "-m", "loadgen.grafana", *args]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60 * SCALE)


def test_push_creates_the_missing_folder_then_overwrites_every_dashboard_into_it(grafana):
    """A push lists folders, creates the absent one with a stable uid, and posts each dashboard with overwrite."""
    stand_in = grafana()
    urls = push_dashboards(stand_in.url, TOKEN, folder="Load Tests", dashboards_dir=DASHBOARDS)
    exchange = stand_in.requests()
    assert [(r["method"], r["path"]) for r in exchange] == [
        ("GET", "/api/folders"),
        ("POST", "/api/folders"),
        *[("POST", "/api/dashboards/db")] * len(UIDS),
    ]
    assert {r["authorization"] for r in exchange} == {f"Bearer {TOKEN}"}
    assert exchange[1]["body"] == {"title": "Load Tests", "uid": "load-tests"}
    posted = [r["body"] for r in exchange[2:]]
    assert [b["dashboard"]["uid"] for b in posted] == UIDS
    assert all(b["overwrite"] is True and b["folderUid"] == "load-tests" for b in posted)
    assert all(b["dashboard"]["id"] is None and b["dashboard"]["panels"] for b in posted)
    assert all(r["content_type"].startswith("application/json") for r in exchange[1:])
    assert urls == [f"/d/{uid}/x" for uid in UIDS]


def test_push_reuses_a_folder_found_by_title_and_keeps_its_uid(grafana):
    """An existing folder with the requested title is used as it is, never created again."""
    stand_in = grafana(folders=[{"id": 3, "uid": "abc123", "title": "loadgen"}, {"id": 4, "uid": "x", "title": "y"}])
    push_dashboards(stand_in.url, TOKEN, dashboards_dir=DASHBOARDS)
    exchange = stand_in.requests()
    assert [(r["method"], r["path"]) for r in exchange][:2] == [("GET", "/api/folders"), ("POST", "/api/dashboards/db")]
    assert {r["body"]["folderUid"] for r in exchange[1:]} == {"abc123"}


def test_push_under_a_path_prefix_reaches_the_api_beneath_it(grafana, tmp_path):
    """A Grafana served under /grafana gets its requests at /grafana/api/..."""
    stand_in = grafana()
    with pytest.raises(GrafanaError, match=r"answered Client Error 404"):
        push_dashboards(stand_in.url + "/grafana/", TOKEN, dashboards_dir=DASHBOARDS)
    assert stand_in.requests()[0]["path"] == "/grafana/api/folders"


def test_annotator_posts_tagged_point_annotations_at_the_given_time(grafana):
    """Each mark posts the text at the time in milliseconds, tagged loadgen, the run's tags and its kind."""
    stand_in = grafana()
    annotator = Annotator(stand_in.url, TOKEN, ["scenario:voiceroom", "run:r42"])
    assert annotator.start(time=1_700_000_000.25) is not None
    assert annotator.stage("stage 2: 500 users", time=1_700_000_060) is not None
    assert annotator.slo_breach("delivery p99 1.3 s > 1 s", time=1_700_000_090.5) is not None
    assert annotator.end(time=1_700_000_120) is not None
    exchange = stand_in.requests()
    assert [(r["method"], r["path"], r["authorization"]) for r in exchange] == [
        ("POST", "/api/annotations", f"Bearer {TOKEN}")
    ] * 4
    run_tags = ["loadgen", "scenario:voiceroom", "run:r42"]
    assert [(r["body"]["text"], r["body"]["time"], r["body"]["timeEnd"], r["body"]["tags"]) for r in exchange] == [
        ("run started", 1_700_000_000_250, 1_700_000_000_250, [*run_tags, "run", "start"]),
        ("stage 2: 500 users", 1_700_000_060_000, 1_700_000_060_000, [*run_tags, "stage"]),
        ("delivery p99 1.3 s > 1 s", 1_700_000_090_500, 1_700_000_090_500, [*run_tags, "slo-breach"]),
        ("run ended", 1_700_000_120_000, 1_700_000_120_000, [*run_tags, "run", "end"]),
    ]
    assert all("dashboardUID" not in r["body"] for r in exchange)


def test_annotator_without_a_time_marks_now(grafana):
    """A mark without a time is stamped with the current time."""
    stand_in = grafana()
    before = time.time() * 1000
    Annotator(stand_in.url, TOKEN).mark("hello", ["stage"])
    (request,) = stand_in.requests()
    assert before - 1 <= request["body"]["time"] <= time.time() * 1000 + 1
    assert request["body"]["tags"] == ["loadgen", "stage"]


def test_a_failed_annotation_warns_without_the_token_and_never_raises(grafana, caplog):
    """When Grafana refuses an annotation, mark returns None and logs one warning that holds no token."""
    stand_in = grafana(mode="forbidden")
    with caplog.at_level(logging.WARNING, logger="loadgen.grafana"):
        assert Annotator(stand_in.url, TOKEN).mark("run started") is None
    (record,) = caplog.records
    assert "403" in record.getMessage() and "***" in record.getMessage()
    assert TOKEN not in caplog.text


def test_an_unreachable_grafana_is_reported_as_such(tmp_path):
    """A push to a port nobody listens on fails with a one-line 'cannot reach' error."""
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(GrafanaError, match=r"^cannot reach Grafana at http://127\.0\.0\.1:\d+: ") as caught:
        push_dashboards(url, TOKEN, dashboards_dir=DASHBOARDS)
    assert "\n" not in str(caught.value)


def test_the_token_comes_from_the_named_environment_variable(monkeypatch):
    """token_from_env reads the variable it is given and refuses an unset or empty one, naming it."""
    monkeypatch.setenv("MY_GRAFANA_TOKEN", TOKEN)
    assert token_from_env("MY_GRAFANA_TOKEN") == TOKEN
    monkeypatch.setenv("MY_GRAFANA_TOKEN", "")
    with pytest.raises(MissingToken, match="MY_GRAFANA_TOKEN"):
        token_from_env("MY_GRAFANA_TOKEN")


def test_cli_push_uploads_every_dashboard_and_never_prints_the_token(grafana):
    """`loadgen grafana push` exits 0, lists the pushed dashboards, and its output never holds the token."""
    stand_in = grafana()
    done = cli("push", "--url", stand_in.url, "--token-env", "GF_TOKEN", env={"GF_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    assert f"pushed {len(UIDS)} dashboards to folder 'loadgen'" in done.stdout
    assert TOKEN not in done.stdout + done.stderr
    posted = [r for r in stand_in.requests() if r["path"] == "/api/dashboards/db"]
    assert sorted(r["body"]["dashboard"]["uid"] for r in posted) == UIDS


def test_cli_push_exits_2_when_the_token_variable_is_unset(grafana):
    """Without the named environment variable the push stops before any request, exit 2, naming the variable."""
    stand_in = grafana()
    env = {k: v for k, v in os.environ.items() if k != "GF_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "loadgen.grafana", "push", "--url", stand_in.url, "--token-env", "GF_TOKEN"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60 * SCALE,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "loadgen grafana push: error: environment variable GF_TOKEN holding the Grafana token is unset or empty\n"
    )
    assert stand_in.requests() == []


def test_cli_push_exits_3_with_one_line_when_grafana_cannot_be_reached():
    """A URL nobody answers makes the push exit 3 with a single clear line on stderr and no token."""
    url = f"http://127.0.0.1:{free_port()}"
    done = cli("push", "--url", url, "--token-env", "GF_TOKEN", env={"GF_TOKEN": TOKEN})
    assert done.returncode == 3
    assert done.stderr.startswith(f"loadgen grafana push: error: cannot reach Grafana at {url}: ")
    assert done.stderr.count("\n") == 1 and done.stdout == ""
    assert TOKEN not in done.stderr


def test_cli_push_exits_1_and_redacts_a_token_the_server_echoes(grafana):
    """When Grafana refuses the push and echoes the credentials, the error line shows *** instead of the token."""
    stand_in = grafana(mode="forbidden")
    done = cli("push", "--url", stand_in.url, "--token-env", "GF_TOKEN", env={"GF_TOKEN": TOKEN})
    assert done.returncode == 1
    assert done.stderr == (
        f"loadgen grafana push: error: Grafana at {stand_in.url} answered Client Error 403: "
        "access denied for Bearer ***\n"
    )
    assert TOKEN not in done.stdout + done.stderr


def test_cli_push_reports_a_rejected_token(grafana):
    """A token Grafana does not accept makes the push exit 1 saying the token was rejected."""
    stand_in = grafana()
    done = cli("push", "--url", stand_in.url, "--token-env", "GF_TOKEN", env={"GF_TOKEN": "wrong-token"})
    assert done.returncode == 1
    assert (
        done.stderr == f"loadgen grafana push: error: Grafana at {stand_in.url} rejected the token (401 Unauthorized)\n"
    )
    assert "wrong-token" not in done.stderr


def test_cli_push_exits_1_when_the_url_is_some_other_web_server(grafana):
    """A server that answers but not with Grafana's JSON makes the push exit 1 saying so, after one request."""
    stand_in = grafana(mode="not-grafana")
    done = cli("push", "--url", stand_in.url, "--token-env", "GF_TOKEN", env={"GF_TOKEN": TOKEN})
    assert done.returncode == 1
    assert done.stderr == (
        f"loadgen grafana push: error: the server at {stand_in.url} does not answer as Grafana's HTTP API does\n"
    )
    assert [r["path"] for r in stand_in.requests()] == ["/api/folders"]


def test_a_run_with_grafana_url_marks_its_start_and_end(grafana, locust_run, monkeypatch):
    """A run given --grafana-url posts tagged start, stage and end annotations with the token from the environment."""
    stand_in = grafana()
    monkeypatch.setenv("LOADGEN_TEST_GRAFANA", TOKEN)
    run = locust_run("messaging.py", "-u", "5", "-r", "5", "-t", "2s", "--drain", "0.5",
                     "--grafana-url", stand_in.url, "--grafana-token-env", "LOADGEN_TEST_GRAFANA")  # fmt: skip
    assert run.returncode == 0, run
    posted = [r for r in stand_in.requests() if r["path"] == "/api/annotations"]
    texts = [r["body"]["text"] for r in posted]
    assert any("started" in text for text in texts) and any("ended, exit code 0" in text for text in texts), texts
    run_tag = f"run:{run.summary['run_id']}"
    assert all({"loadgen", run_tag} <= set(r["body"]["tags"]) for r in posted)
    kinds = [next(t for t in r["body"]["tags"] if t in ("run", "stage", "slo-breach")) for r in posted]
    assert kinds.count("run") == 2 and "stage" in kinds, kinds
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in posted)
    assert TOKEN not in run.output
