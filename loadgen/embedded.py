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
# How often waits for the backend look again; each look is a greenlet switch under Locust.
_POLL_S = 0.02


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
    """A reference backend on a free loopback port, owned by this process.

    Its room and inbox history is kept on disk in ``store`` (``--store``), a folder of its
    own, so ``restart`` loses no acknowledged message; seats, PKs, calls and sessions start
    empty after a restart. Waits poll with ``time.sleep``, which Locust's monkey-patching
    turns into a greenlet switch, so ``restart`` from a greenlet does not stall the others.
    """

    def __init__(
        self, extra_args: list[str] | None = None, start_timeout: float = 20.0, stop_timeout: float = 10.0
    ) -> None:
        self.extra_args = extra_args or []
        self.start_timeout = start_timeout
        # A graceful stop waits up to 5 s for outboxes to drain, then for closing handshakes.
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="loadgen-backend-")
        self.log_path = Path(self._dir.name) / "backend.log"
        self.store = Path(self._dir.name) / "store"
        self._port_file = Path(self._dir.name) / "port"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> str:
        """Start on a free port and wait until it listens; its URL."""
        self._launch(0, truncate_log=True)
        # a run that stops on a usage error exits through sys.exit, past the quit event
        atexit.register(self.close)
        self.port = self._wait_listening()
        return self.url

    def restart(self, hard: bool) -> None:
        """Stop the backend and start it again on the same port, returning once it listens.

        ``hard`` kills it (SIGKILL); otherwise SIGTERM lets it write what is queued and close
        every connection with code 1012, and one that has not exited after ``stop_timeout``
        is killed. ``BackendStartError``, with the end of its log, if it does not listen again
        within ``start_timeout``.
        """
        process, port = self.process, self.port
        if process is None or port is None:
            raise RuntimeError("the embedded reference backend is not started")
        left = time.monotonic()
        if hard:
            process.kill()
        else:
            process.terminate()
        if not _exited(process, self.stop_timeout):
            log.warning("the embedded reference backend ignored SIGTERM for %g s: killing it", self.stop_timeout)
            process.kill()
            _exited(process, self.stop_timeout)
        self._launch(port)
        self._wait_listening()
        log.info(
            "Restarted the reference backend (%s) on port %d: away %.2f s",
            "SIGKILL" if hard else "SIGTERM",
            port,
            time.monotonic() - left,
        )

    def _launch(self, port: int, truncate_log: bool = False) -> None:
        # A backend killed outright leaves its port file behind.
        self._port_file.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "loadgen.server",
            "--host", "127.0.0.1", "--port", str(port), "--port-file", str(self._port_file),
            "--store", str(self.store),
            *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path, "wb" if truncate_log else "ab") as log_file:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent_hook(),
            )

    def _wait_listening(self) -> int:
        """The port the just launched backend listens on, once its port file says so."""
        process = self.process
        assert process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._port_file.exists():
                return int(self._port_file.read_text())
            if process.poll() is not None:
                break
            time.sleep(_POLL_S)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        raise BackendStartError(f"the embedded reference backend did not start:\n{tail}")

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            if not _exited(process, self.stop_timeout):
                process.kill()
                _exited(process, self.stop_timeout)
        self.process = None

    def close(self) -> None:
        self.stop()
        if os.path.isdir(self._dir.name):
            self._dir.cleanup()


def _exited(process: subprocess.Popen, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``process`` to exit; whether it did."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True
