"""Child processes that end with their parent (``dvc add`` under `metarec data fetch`, ``pip
download`` of the default dataset).

:func:`run_child` is :func:`subprocess.run` with two guarantees:

- an exception in this process while the child runs (KeyboardInterrupt from Ctrl-C, or from
  SIGTERM, which the CLI turns into one) terminates the child before it propagates;
- on Linux the child starts as a tiny Python program (:data:`TIE_TO_PARENT`) that asks the
  kernel (``prctl(PR_SET_PDEATHSIG, SIGTERM)``) to terminate it when its parent dies and then
  execs the command (the setting survives exec), so even a parent killed with SIGKILL leaves no
  child behind. It imports nothing of metarec, so it works whatever the child's sys.path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence

STOP_GRACE_S = 5.0
# argv: <parent pid> <command...>. PR_SET_PDEATHSIG is 1 (<linux/prctl.h>); if the parent died
# before the request took effect, exit instead of running the command orphaned.
TIE_TO_PARENT = """\
import ctypes, os, signal, sys
parent, cmd = int(sys.argv[1]), sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG) failed: errno %d" % ctypes.get_errno())
if os.getppid() != parent:
    sys.exit(143)
os.execvp(cmd[0], cmd)
"""


def _wrapped(cmd: Sequence[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return list(cmd)
    return [sys.executable, "-c", TIE_TO_PARENT, str(os.getpid()), *cmd]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after a grace period; waits for the child to be gone."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_child(cmd: Sequence[str], *, cwd: str | os.PathLike | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion, capturing text stdout/stderr; see the module docstring."""
    proc = subprocess.Popen(_wrapped(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate()
    except BaseException:
        stop(proc)
        raise
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)
