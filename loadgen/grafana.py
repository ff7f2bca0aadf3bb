"""Grafana integration: push the dashboards in ``dashboards/`` and annotate runs, over Grafana's HTTP API.

Two uses, both through grafana-client and a service account token:

* ``loadgen grafana push --url URL --token-env VAR`` (:func:`push_dashboards`) creates the folder if it is
  missing and uploads every dashboard JSON file with ``overwrite`` set, so pushing again updates in place;
* :class:`Annotator` posts organisation-wide annotations tagged ``loadgen`` (run start, load stages, SLO
  breaches, end), which every loadgen dashboard shows through its tag-filtered annotation queries.

The token is read from an environment variable whose *name* the user gives, never from the command line,
and never appears in a log line or error message: every message is passed through :func:`redact`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time as _time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("loadgen.grafana")

#: The repository's generated dashboards (``python dashboards/build.py``).
DEFAULT_DASHBOARDS_DIR = Path(__file__).resolve().parent.parent / "dashboards"
DEFAULT_FOLDER = "loadgen"
DEFAULT_TIMEOUT = 10.0

#: Every annotation carries this tag; the dashboards' annotation queries filter on it.
TAG = "loadgen"
#: Kinds of annotation, each also a tag: the dashboards draw each kind in its own colour.
RUN = "run"
STAGE = "stage"
SLO_BREACH = "slo-breach"

#: ``loadgen grafana`` exit codes besides 0.
EXIT_REJECTED = 1  # Grafana answered, but refused or failed the request
EXIT_USAGE = 2  # the token's environment variable is unset or empty, or no dashboards to push
EXIT_UNREACHABLE = 3  # nothing answered at the URL

__all__ = [
    "Annotator",
    "GrafanaError",
    "GrafanaUnreachable",
    "MissingToken",
    "NoDashboards",
    "NotGrafana",
    "add_grafana_arguments",
    "grafana_command",
    "push_dashboards",
    "token_from_env",
]


class GrafanaError(Exception):
    """Grafana refused or failed a request; the message is one line and holds no token."""


class GrafanaUnreachable(GrafanaError):
    """Nothing answered at the Grafana URL (refused, unresolvable, timed out)."""


class MissingToken(GrafanaError):
    """The environment variable meant to hold the token is unset or empty."""


class NotGrafana(GrafanaError):
    """Something answered at the URL, but not as Grafana's HTTP API does."""


class NoDashboards(GrafanaError):
    """The dashboards folder holds no JSON file."""


def token_from_env(name: str) -> str:
    """The token held by environment variable ``name``; :class:`MissingToken` if it is unset or empty."""
    token = os.environ.get(name, "")
    if not token:
        raise MissingToken(f"environment variable {name} holding the Grafana token is unset or empty")
    return token


def redact(text: str, *secrets: str) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def display_url(url: str) -> str:
    """``url`` without user info, fit for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _client(url: str, token: str, timeout: float):
    from grafana_client import GrafanaApi

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GrafanaError(f"not an http(s) URL: {display_url(url)}")
    # grafana-client joins the prefix and "api" without a slash: "/grafana" must become "grafana/".
    prefix = parts.path.strip("/")
    return GrafanaApi(
        auth=token,
        host=parts.hostname,
        port=parts.port,
        protocol=parts.scheme,
        url_path_prefix=f"{prefix}/" if prefix else "",
        timeout=timeout,
    )


@contextmanager
def _grafana(url: str, token: str, timeout: float):
    """A Grafana API client whose errors become one-line, token-free :class:`GrafanaError`; closed after."""
    from grafana_client.client import GrafanaException, GrafanaUnauthorizedError
    from requests.exceptions import RequestException

    api = _client(url, token, timeout)
    where = display_url(url)
    try:
        yield api
    except GrafanaUnauthorizedError:
        raise GrafanaError(f"Grafana at {where} rejected the token (401 Unauthorized)") from None
    except GrafanaException as error:
        raise GrafanaError(redact(f"Grafana at {where} answered {_first_line(error)}", token)) from None
    except ValueError:  # a JSON decoding error: something answered, but not Grafana's API
        raise NotGrafana(f"the server at {where} does not answer as Grafana's HTTP API does") from None
    except (RequestException, OSError) as error:
        raise GrafanaUnreachable(redact(f"cannot reach Grafana at {where}: {_reason(error)}", token)) from None
    finally:
        api.client.s.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _reason(error: BaseException) -> str:
    """The innermost cause of a transport error, in one line (``Connection refused``...)."""
    text = _first_line(error)
    if "Failed to resolve" in text or "NameResolutionError" in text:
        return "unknown host"
    if "timed out" in text.lower() or "timeout" in type(error).__name__.lower():
        return "timed out"
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    return match.group(1).strip() if match else text


def _expect(answer: Any, kind: type, url: str) -> Any:
    if not isinstance(answer, kind):
        raise NotGrafana(f"the server at {display_url(url)} does not answer as Grafana's HTTP API does")
    return answer


def folder_uid(name: str) -> str:
    """A stable folder uid for a folder name: lower case, ``[a-z0-9-_]``, at most 40 characters."""
    uid = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")
    return uid[:40] or "loadgen"


def load_dashboards(directory: Path) -> list[dict[str, Any]]:
    """Every ``*.json`` dashboard model in ``directory``, by file name."""
    files = sorted(Path(directory).glob("*.json"))
    if not files:
        raise NoDashboards(f"no dashboard JSON files in {directory}")
    return [json.loads(path.read_text()) for path in files]


def push_dashboards(
    url: str,
    token: str,
    folder: str = DEFAULT_FOLDER,
    dashboards_dir: Path | str = DEFAULT_DASHBOARDS_DIR,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[str]:
    """Upload every dashboard in ``dashboards_dir`` into ``folder`` (created if absent); returns their URLs.

    The folder is found by title or by the uid :func:`folder_uid` derives from it; dashboards are posted with
    ``overwrite`` so a second push replaces the first, keeping each dashboard's uid and so its links.
    """
    dashboards = load_dashboards(Path(dashboards_dir))
    wanted = folder_uid(folder)
    pushed: list[str] = []
    with _grafana(url, token, timeout) as api:
        folders = _expect(api.folder.get_all_folders(), list, url)
        existing = [f for f in folders if f.get("title") == folder or f.get("uid") == wanted]
        if existing:
            uid = existing[0]["uid"]
        else:
            uid = _expect(api.folder.create_folder(folder, uid=wanted), dict, url)["uid"]
            log.info("created Grafana folder %s (uid %s)", folder, uid)
        for model in dashboards:
            body = {
                "dashboard": {**model, "id": None},
                "folderUid": uid,
                "overwrite": True,
                "message": "pushed by loadgen grafana push",
            }
            answer = _expect(api.dashboard.update_dashboard(body), dict, url)
            pushed.append(answer.get("url", model["uid"]))
            log.info("pushed dashboard %s (%s)", model["uid"], model.get("title", ""))
    return pushed


class Annotator:
    """Posts a run's annotations to Grafana: tagged ``loadgen``, the run's tags and a kind.

    ``Annotator(url, token, ["scenario:voiceroom", "run:20261126T0610Z"]).mark("stage 2: 500 users", [STAGE])``.
    Annotations are organisation-wide (no dashboard uid), so every dashboard filtering on the tags shows them.
    A failed post never stops a run: :meth:`mark` logs one token-free warning and returns ``None``.
    """

    def __init__(self, url: str, token: str, tags: Iterable[str] = (), *, timeout: float = 3.0) -> None:
        self.url = url
        self.tags = [TAG, *tags]
        self._token = token
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"Annotator({display_url(self.url)!r}, tags={self.tags!r})"

    def mark(self, text: str, tags: Iterable[str] = (), time: float | None = None) -> int | None:
        """Annotate ``time`` (Unix seconds, now if None); returns the annotation id, or None if Grafana failed."""
        at = round((_time.time() if time is None else time) * 1000)
        all_tags = list(dict.fromkeys([*self.tags, *tags]))
        try:
            with _grafana(self.url, self._token, self._timeout) as api:
                answer = api.annotations.add_annotation(time_from=at, time_to=at, tags=all_tags, text=text)
                answer = _expect(answer, dict, self.url)
        except GrafanaError as error:
            log.warning("Grafana annotation %r not posted: %s", text, error)
            return None
        return answer.get("id")

    def start(self, text: str = "run started", time: float | None = None) -> int | None:
        """Mark the start of the run."""
        return self.mark(text, [RUN, "start"], time)

    def stage(self, text: str, time: float | None = None) -> int | None:
        """Mark a change of load stage."""
        return self.mark(text, [STAGE], time)

    def slo_breach(self, text: str, time: float | None = None) -> int | None:
        """Mark an SLO check turning from pass to fail."""
        return self.mark(text, [SLO_BREACH], time)

    def end(self, text: str = "run ended", time: float | None = None) -> int | None:
        """Mark the end of the run."""
        return self.mark(text, [RUN, "end"], time)


def add_grafana_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``push`` subcommand to the ``loadgen grafana`` parser."""
    commands = parser.add_subparsers(dest="grafana_command", metavar="COMMAND")
    commands.required = True
    push = commands.add_parser(
        "push",
        help="upload the dashboards to a Grafana server",
        description="Create the folder if it is missing and upload every dashboard JSON file, overwriting "
        "earlier versions. Exit 2 if the token's environment variable is unset, 3 if Grafana cannot be "
        "reached, 1 if it refuses the request.",
    )
    push.add_argument("--url", required=True, help="Grafana's base URL, e.g. http://localhost:3000")
    push.add_argument(
        "--token-env",
        required=True,
        metavar="VAR",
        help="name of the environment variable holding a service account token (the token itself is never "
        "accepted on the command line)",
    )
    push.add_argument("--folder", default=DEFAULT_FOLDER, help="folder title (default: %(default)s)")
    push.add_argument(
        "--dashboards",
        type=Path,
        default=DEFAULT_DASHBOARDS_DIR,
        metavar="DIR",
        help="folder of dashboard JSON files (default: the repository's dashboards/)",
    )
    push.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per request (default: %(default)s)"
    )


def grafana_command(args: argparse.Namespace) -> int:
    """Run ``loadgen grafana <command>``; returns the exit code."""
    if args.grafana_command != "push":
        return EXIT_USAGE
    prog = "loadgen grafana push"
    try:
        token = token_from_env(args.token_env)
    except MissingToken as error:
        sys.stderr.write(f"{prog}: error: {error}\n")
        return EXIT_USAGE
    try:
        load_dashboards(args.dashboards)
    except NoDashboards as error:
        sys.stderr.write(f"{prog}: error: {error}\n")
        return EXIT_USAGE
    try:
        urls = push_dashboards(args.url, token, args.folder, args.dashboards, timeout=args.timeout)
    except GrafanaUnreachable as error:
        sys.stderr.write(f"{prog}: error: {redact(str(error), token)}\n")
        return EXIT_UNREACHABLE
    except GrafanaError as error:
        sys.stderr.write(f"{prog}: error: {redact(str(error), token)}\n")
        return EXIT_REJECTED
    sys.stdout.write(f"pushed {len(urls)} dashboards to folder {args.folder!r} at {display_url(args.url)}\n")
    for url in urls:
        sys.stdout.write(f"  {url}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadgen.grafana push ...``: the same as ``loadgen grafana push ...``."""
    parser = argparse.ArgumentParser(prog="loadgen grafana", description="Grafana dashboards and annotations.")
    add_grafana_arguments(parser)
    return grafana_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
