"""``loadgen report`` and ``loadgen compare``: the stress review as one self-contained HTML file.

``loadgen report RUN`` writes ``RUN/report.html`` for one results folder: the verdict first, then
charts over time, latency distributions, the operations and how to reproduce the run.
``loadgen compare BASE CAND`` writes ``CAND/compare.html`` with every figure of both runs, the
difference, the noise around it and a verdict, and exits 1 when a figure regressed: the gate of a
grey release. Charts are matplotlib SVG inline in the page: no script, nothing fetched, it opens
offline and prints. docs/report.md is the reference.

Importing this package stays light; the plotting and statistics modules load when a command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = [
    "BAD_INPUT",
    "NO_REGRESSION",
    "REGRESSION",
    "add_compare_arguments",
    "add_report_arguments",
    "compare_command",
    "report_command",
]

#: exit codes of ``loadgen compare``
NO_REGRESSION, REGRESSION, BAD_INPUT = 0, 1, 2


def add_report_arguments(parser) -> None:
    """The arguments of ``loadgen report RUN [-o FILE]``."""
    parser.add_argument("run", metavar="RUN", help="a run's results folder (the one --results named)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the HTML here (default: RUN/report.html)")


def add_compare_arguments(parser) -> None:
    """The arguments of ``loadgen compare BASE CANDIDATE [--tolerance FILE] [-o FILE]``."""
    parser.add_argument("baseline", metavar="BASE", help="the baseline run's results folder (the old build)")
    parser.add_argument("candidate", metavar="CANDIDATE", help="the candidate run's results folder (the new build)")
    parser.add_argument(
        "--tolerance",
        metavar="FILE",
        help="YAML saying how much worse each figure may get before it has regressed "
        "(docs/report.md; example: locustfiles/tolerance.yaml)",
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write the HTML here (default: CANDIDATE/compare.html)")


def _bad_input(command: str, exc: Exception) -> int:
    """Say what is wrong, naming the file, and return the bad-input exit code."""
    # ResultsError and ToleranceError are ValueErrors whose message names the file; an OSError
    # here comes from writing the HTML
    if isinstance(exc, OSError):
        message = f"{exc.filename}: cannot write: {exc.strerror}"
    else:
        message = str(exc)
    sys.stderr.write(f"loadgen {command}: {message}\n")
    return BAD_INPUT


def report_command(args) -> int:
    """Run ``loadgen report``: 0 when written, 2 when the folder cannot make a report."""
    from loadgen.report._results import ResultsError, load_run
    from loadgen.report._single import write_report

    try:
        run = load_run(args.run)
        output = Path(args.output) if args.output else run.path / "report.html"
        write_report(run, output)
    except (ResultsError, OSError) as exc:
        return _bad_input("report", exc)
    for note in run.notes:
        sys.stderr.write(f"loadgen report: {note}\n")
    sys.stdout.write(f"Report written to {output}\n")
    return 0


def compare_command(args) -> int:
    """Run ``loadgen compare``: 0 no regression, 1 a regression, 2 bad input (message names the file)."""
    from loadgen.report._compare import compare, verdict_table, write_compare
    from loadgen.report._results import ResultsError, load_run
    from loadgen.report._tolerance import Tolerance, ToleranceError, load_tolerance

    try:
        tolerance = load_tolerance(args.tolerance) if args.tolerance else Tolerance()
        baseline = load_run(args.baseline, need_summary=True)
        candidate = load_run(args.candidate, need_summary=True)
        result = compare(baseline, candidate, tolerance)
        output = Path(args.output) if args.output else candidate.path / "compare.html"
        write_compare(result, output)
    except (ResultsError, ToleranceError, OSError) as exc:
        return _bad_input("compare", exc)
    for warning in result.warnings:
        sys.stderr.write(f"loadgen compare: WARNING: {warning}\n")
    sys.stdout.write(verdict_table(result))
    sys.stdout.write(f"Comparison written to {output}\n")
    return REGRESSION if result.regressed else NO_REGRESSION
