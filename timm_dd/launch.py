"""Process-level set-up shared by the command-line scripts (``train.py``, ``distill.py``)."""
import ctypes
import os
import signal
import sys

__all__ = ['exit_with_launcher']


def exit_with_launcher() -> bool:
    """Under ``accelerate launch`` / ``torchrun``, make this worker get SIGTERM when its launcher dies.

    Killing the launcher (even with ``kill -9``) would otherwise leave the workers running, holding GPUs and output
    folders. Linux only (``prctl(PR_SET_PDEATHSIG)``); returns whether it was set.
    """
    if 'LOCAL_RANK' not in os.environ or not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True
