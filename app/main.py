"""``kitebox`` entry point: the desktop app with no command (or ``kitebox gui``), the CLI otherwise.

A CLI command first goes to the state root's warm template (:mod:`app.forkclient`: a fork of a process that
has everything imported runs it, which saves most of a short command's time); when none can run it, the
dispatch in ``app.cli.main.main`` runs it here. Qt is imported only when the app is requested.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from app.forkclient import run

    code = run(sys.argv[1:])
    if code is not None:
        # Run by the template: this process holds nothing to flush or close, and the interpreter's own
        # finalisation would add ~2 ms to every command.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code & 0xFF)
    from app.cli.main import main as cli_main

    sys.exit(cli_main())


if __name__ == "__main__":
    main()
