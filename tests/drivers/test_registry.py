"""Which driver a --host URL (or --driver) picks, and the URL it connects to."""

import pytest

from loadgen import drivers
from loadgen.drivers.base import parent_stream, sender_stream
from loadgen.drivers.reference import ReferenceDriver


class TeamDriver(ReferenceDriver):
    """A team's own driver, set on its locustfile's user class."""


def test_plain_websocket_urls_keep_the_locustfiles_driver():
    assert drivers.choose("ws://127.0.0.1:8765", TeamDriver) is TeamDriver
    assert drivers.choose("wss://staging.example/ws", ReferenceDriver) is ReferenceDriver


@pytest.mark.parametrize("scheme, name", [("xmpp+ws", "xmpp"), ("xmpp+wss", "xmpp"), ("janus+ws", "janus"),
                                          ("janus+wss", "janus")])  # fmt: skip
def test_a_scheme_names_its_driver_and_the_connection_drops_the_prefix(scheme, name):
    driver = drivers.choose(f"{scheme}://127.0.0.1:5280/path", ReferenceDriver)
    assert driver is drivers.load(name)
    _factory, url = driver.configure(f"{scheme}://127.0.0.1:5280/path")
    assert url.startswith(scheme.split("+")[1] + "://127.0.0.1:5280/path")


def test_driver_option_overrides_the_scheme():
    assert drivers.choose("ws://127.0.0.1:8188", ReferenceDriver, "janus") is drivers.load("janus")


def test_unknown_names_and_schemes_are_named_in_the_error():
    with pytest.raises(drivers.UnknownDriver, match="'mqtt'"):
        drivers.choose("ws://h", ReferenceDriver, "mqtt")
    with pytest.raises(drivers.UnknownDriver, match="'http'"):
        drivers.choose("http://h", ReferenceDriver)


def test_sender_streams_name_their_room():
    stream = sender_stream("chat-3", "w1-u7")
    assert parent_stream(stream) == "chat-3" and parent_stream("chat-3") == "chat-3"


def test_a_bad_driver_or_url_option_stops_the_run_with_exit_2(locust_run):
    """An unknown --driver, or an option the driver does not know in the URL, is a usage error naming it."""
    for args, said in ((("--driver", "mqtt"), "--driver: no driver named 'mqtt'"),
                       (("--host", "xmpp+ws://127.0.0.1:1/xmpp-websocket?auth=sasl"), "auth")):  # fmt: skip
        run = locust_run("messaging.py", "-u", "1", "-t", "2s", "--metrics-port", "0", *args)
        assert run.returncode == 2 and said in run.output, run
