"""The embedded reference backend: started in its own process when a run has no ``--host``.

A separate process, not a thread: the backend is asyncio and the generator is gevent, and
sharing one interpreter would make each steal the other's core.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("loadgen.embedded")


class BackendStartError(RuntimeError):
    pass


#: prctl's option that sends the child a signal when its parent dies
PR_SET_PDEATHSIG = 1


def _die_with_parent_hook():
    """What the child runs before exec so that a generator killed outright (SIGKILL) takes its backend with it.

    libc is looked up here, in the parent: between fork and exec the child may do no more than
    the one call (a library search there would spawn a process of its own).
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return die_with_parent


class EmbeddedBackend:
    """A reference backend on a free loopback port, owned by this process."""

    def __init__(self, extra_args: list[str] | None = None, start_timeout: float = 20.0) -> None:
        self.extra_args = extra_args or []
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="loadgen-backend-")
        self.log_path = Path(self._dir.name) / "backend.log"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> str:
        port_file = Path(self._dir.name) / "port"
        command = [
            sys.executable, "-m", "loadgen.server",
            "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
            *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent_hook(),
            )
        # a run that stops on a usage error exits through sys.exit, past the quit event
        atexit.register(self.close)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if port_file.exists():
                self.port = int(port_file.read_text())
                return self.url
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        raise BackendStartError(f"the embedded reference backend did not start:\n{tail}")

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        if os.path.isdir(self._dir.name):
            self._dir.cleanup()
