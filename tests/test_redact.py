"""Secrets in URLs are masked wherever a URL is shown, and the run's outputs never carry them."""

import pytest

from loadgen.redact import args_for_display, url_for_display
from tests.support import free_port


@pytest.mark.parametrize(
    "url, shown",
    [
        ("janus+ws://127.0.0.1:8188/?apisecret=S3CRET&admin_key=K3Y", "janus+ws://127.0.0.1:8188/?apisecret=***&admin_key=***"),
        ("ws://alice:hunter2@[::1]:8765/ws", "ws://alice:***@[::1]:8765/ws"),
        ("xmpp+ws://127.0.0.1:5280/xmpp-websocket?auth=plain&domain=x", "xmpp+ws://127.0.0.1:5280/xmpp-websocket?auth=plain&domain=x"),
        ("http://127.0.0.1:3000/?token=abc", "http://127.0.0.1:3000/?token=***"),
        ("ws://127.0.0.1:8765", "ws://127.0.0.1:8765"),
    ],
)  # fmt: skip
def test_passwords_and_secret_query_values_are_masked(url, shown):
    """Userinfo passwords and query values named like secrets show as ***; everything else stays."""
    assert url_for_display(url) == shown


def test_a_command_line_is_shown_with_its_urls_masked():
    """Both --host URL and --host=URL forms are masked, other arguments kept as they are."""
    argv = ["locust", "--host", "ws://u:p@127.0.0.1:1", "--grafana-url=http://127.0.0.1:3000/?api_key=Z", "-u", "5"]
    assert args_for_display(argv) == ["locust", "--host", "ws://u:***@127.0.0.1:1",
                                      "--grafana-url=http://127.0.0.1:3000/?api_key=***", "-u", "5"]  # fmt: skip


def test_an_unreachable_backend_run_leaks_no_secret(locust_run):
    """A run whose --host carries Janus secrets prints and writes the URL masked, never the secrets."""
    host = f"janus+ws://127.0.0.1:{free_port()}/?apisecret=S3CRET&admin_key=K3Y"
    run = locust_run("voiceroom.py", "-u", "1", "-t", "3s", "--host", host)
    assert run.returncode == 3, run
    assert "apisecret=***" in run.output, run
    written = "".join(path.read_text() for path in run.results.rglob("*") if path.is_file())
    assert "S3CRET" not in run.output + written and "K3Y" not in run.output + written
    assert run.summary["host"].endswith("?apisecret=***&admin_key=***")
