"""``kitebox`` entry point: the desktop app with no command (or ``kitebox gui``), the CLI otherwise.

The dispatch lives in ``app.cli.main.main`` (it parses ``--root``/``--config`` for both); Qt is imported only
when the app is requested.
"""

from __future__ import annotations

import sys


def main() -> None:
    from app.cli.main import main as cli_main

    sys.exit(cli_main())


if __name__ == "__main__":
    main()
