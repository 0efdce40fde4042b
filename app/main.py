"""``kitebox`` entry point: the desktop app with no arguments (once it lands), the CLI otherwise."""

from __future__ import annotations

import sys


def main() -> None:
    from app.cli.main import main as cli_main

    sys.exit(cli_main())


if __name__ == "__main__":
    main()
