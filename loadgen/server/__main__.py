"""``python -m loadgen.server``: the reference backend without the ``loadgen`` command."""

import argparse
import sys

from ._cli import add_serve_arguments, serve


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadgen.server",
        description="Run the reference staging backend (protocol: docs/protocol.md).",
    )
    add_serve_arguments(parser)
    return serve(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
