"""Finding a state root's helpers by their command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.runtime.helper import helper_pids
from tests.support.procs import children

# Stands for a helper's bootstrap: a process that forks a child which never names itself (a monitor in its
# first microseconds looks like this to /proc) and waits.
_FORKING = "import os,sys,time\nif os.fork()==0:\n    print(os.getpid(),flush=True)\ntime.sleep(60)\n"


def test_a_helpers_fork_not_named_yet_is_not_a_helper(tmp_path: Path) -> None:
    helper = subprocess.Popen([sys.executable, "-c", _FORKING, "fd", "project", str(tmp_path), "sock"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert helper.stdout is not None
        fork = int(helper.stdout.readline())
        deadline = time.monotonic() + 10
        while fork not in children(helper.pid):
            assert time.monotonic() < deadline, "the fork did not appear"
            time.sleep(0.01)
        assert helper_pids(tmp_path, bootstrap=_FORKING) == [helper.pid]
        assert helper_pids(tmp_path / "elsewhere", bootstrap=_FORKING) == []
    finally:
        for pid in (*children(helper.pid), helper.pid):
            os.kill(pid, signal.SIGKILL)
        helper.wait()
        if helper.stdout is not None:
            helper.stdout.close()
