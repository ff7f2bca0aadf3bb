"""The tree stays lint-clean and formatted, with the rules pyproject.toml sets."""

import subprocess
import sys

from tests.support import ROOT


def test_ruff_check_passes():
    """ruff finds nothing to complain about."""
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_is_clean():
    """Every file is formatted as ruff format would write it."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_backend_never_imports_the_client_side():
    """Importing the reference backend loads neither Locust, gevent nor the client modules."""
    code = (
        "import sys, loadgen.server, loadgen.cli\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('locust', 'gevent')"
        " or m in ('loadgen.transport', 'loadgen.session', 'loadgen.run')]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
