"""``loadgen``: the toolkit's command line besides Locust itself."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version


def build_parser() -> argparse.ArgumentParser:
    from loadgen.server import add_serve_arguments

    parser = argparse.ArgumentParser(
        prog="loadgen",
        description="Load and soak testing for IM/RTC backends. Runs themselves start with "
        "`locust -f locustfiles/<scenario>.py`; this command holds the tools around them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('loadgen')}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    serve = commands.add_parser(
        "serve",
        help="run the reference backend (with optional fault injection)",
        description="Run the reference backend: rooms, direct messages, receipts, history, clock sync, "
        "speaking the protocol in docs/protocol.md. Fault flags make it misbehave on purpose and "
        "count every injected fault in refserver_injected_faults_total{kind}.",
    )
    add_serve_arguments(serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from loadgen.server import serve

        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
