"""``loadgen``: the toolkit's command line besides Locust itself."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version


def build_parser() -> argparse.ArgumentParser:
    from loadgen.grafana import add_grafana_arguments
    from loadgen.report import add_compare_arguments, add_report_arguments
    from loadgen.server import add_serve_arguments
    from loadgen.slo import add_rules_arguments
    from loadgen.webrtc import add_webrtc_arguments

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
    rules = commands.add_parser(
        "rules",
        help="write Prometheus recording and alerting rules for an SLO file",
        description="Write Prometheus recording and alerting rules for the thresholds of an SLO file "
        "(docs/slo.md), for long soaks watched by Prometheus and Alertmanager.",
    )
    add_rules_arguments(rules)
    grafana = commands.add_parser(
        "grafana",
        help="push the dashboards to Grafana",
        description="Upload the dashboards in dashboards/ into a Grafana folder (docs/grafana.md). "
        "The API token is read from the environment variable named by --token-env, never from the command line.",
    )
    add_grafana_arguments(grafana)
    report = commands.add_parser(
        "report",
        help="write a run's stress-review report: one HTML file that opens offline",
        description="Write one self-contained HTML file for a run's results folder (docs/report.md): the verdict, "
        "charts over time, latency distributions, every operation, and what it takes to run it again.",
    )
    add_report_arguments(report)
    compare = commands.add_parser(
        "compare",
        help="compare two runs and exit 1 on a regression (the gate of a grey release)",
        description="Compare a candidate run with a baseline run of the same profile (docs/report.md): every figure "
        "side by side with its difference and the noise around it, in an HTML file and a table. Exit code 0 when "
        "nothing regressed, 1 when a figure regressed, 2 for bad input.",
    )
    add_compare_arguments(compare)
    webrtc = commands.add_parser(
        "webrtc",
        help="real WebRTC publishers and listeners (aiortc) in a Janus AudioBridge or VideoRoom room",
        description="Check Janus' media plane with a few real WebRTC peers (docs/webrtc.md): publishers send a tone, "
        "listeners report the time to the first audible frame from their own join and from the publisher's, RTP "
        "packets received and lost, jitter, and every peer's ICE and connection events, as a table and a JSON file. "
        "Needs the webrtc extra: pip install -e '.[webrtc]'. Janus gathers no ICE candidates on loopback: on one "
        "machine run Janus and this command in two network namespaces joined by a veth pair (docs/webrtc.md). "
        "Exit code 0 when every listener heard audio, 1 when one did not or a peer failed, 2 for a usage error, "
        "3 when Janus cannot be reached.",
    )
    add_webrtc_arguments(webrtc)
    commands.add_parser(
        "options",
        help="list the options the toolkit adds to `locust` (Locust prints --help before reading a locustfile)",
    )
    return parser


def run_options_help() -> str:
    from loadgen.run import add_arguments

    parser = argparse.ArgumentParser(
        prog="locust -f locustfiles/<scenario>.py",
        add_help=False,
        description="Options the toolkit adds to Locust's own. They also work in Locust config files, "
        "as LOCUST_<NAME> environment variables and in the web UI's advanced options. Locust's own "
        "--profile labels a run; a value naming a YAML file is also read as the load profile.",
    )
    add_arguments(parser)
    return parser.format_help()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from loadgen.server import serve

        return serve(args)
    if args.command == "rules":
        from loadgen.slo import rules_command

        return rules_command(args)
    if args.command == "grafana":
        from loadgen.grafana import grafana_command

        return grafana_command(args)
    if args.command == "report":
        from loadgen.report import report_command

        return report_command(args)
    if args.command == "compare":
        from loadgen.report import compare_command

        return compare_command(args)
    if args.command == "webrtc":
        from loadgen.webrtc import webrtc_command

        return webrtc_command(args)
    if args.command == "options":
        sys.stdout.write(run_options_help())
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
