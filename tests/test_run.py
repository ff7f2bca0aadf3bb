"""The toolkit as a Locust library user runs it: one Environment, tests started and stopped in-process."""

import json

import gevent
from locust.env import Environment
from locust.event import Events

from loadgen.run import OPTIONS, install
from loadgen.scenarios.messaging import ChatUser
from tests.support import ROOT


def test_each_test_of_a_process_gets_fresh_figures_and_its_own_summary(tmp_path, monkeypatch):
    """Stopping a test and starting another (as the web UI does) writes two summaries with separate counts."""
    monkeypatch.chdir(tmp_path)
    environment = Environment(user_classes=[ChatUser], events=Events())
    install(environment.events, scenario="messaging")
    runner = environment.create_local_runner()
    environment.events.init.fire(environment=environment, runner=runner, web_ui=None)
    try:
        assert environment.host.startswith("ws://127.0.0.1:")
        for _ in range(2):
            runner.start(10, spawn_rate=10)
            gevent.sleep(2.5)
            runner.stop()
            gevent.sleep(1.1)  # results folders are named by the second a test started
    finally:
        runner.quit()
        environment.events.quit.fire(exit_code=0)
    summaries = sorted((tmp_path / "results").glob("*-messaging/summary.json"))
    assert len(summaries) == 2
    first, second = (json.loads(path.read_text()) for path in summaries)
    for summary in (first, second):
        assert summary["messages"]["sent"] > 0
        assert summary["operations"]["room.join"]["count"] == 10 + summary["connections"]["reconnects"]
        assert summary["messages"]["lost"] == 0
    assert environment.loadgen.backend is None


def test_the_readme_lists_every_option_the_toolkit_adds():
    """README's option table names every flag of loadgen.run.OPTIONS, and nothing else."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Options added to Locust") :].split("\n\n")[1]
    listed = {line.split("`")[1].split()[0] for line in table.splitlines()[2:]}
    assert listed == {flag for flag, _ in OPTIONS} | {"--profile"}
