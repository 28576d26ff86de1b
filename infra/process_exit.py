"""The one way a keel process ends: everything written, then ``os._exit`` without finalization.

Why not let Python finalize: Temporal's Rust core hands each RPC result to asyncio from one of
its tokio threads (pyo3-async-runtimes: ``loop.call_soon_threadsafe`` under the GIL). That call
lets the GIL go while it wakes the loop, and the thread needs the GIL once more afterwards to
finish. The main thread may meanwhile see the result, print, and reach interpreter finalization;
the tokio thread is then made to exit while it waits for the GIL, unwinding pyo3's GIL guard, and
CPython aborts the process (SIGABRT, exit 134) after the command's output:
``Fatal Python error: PyGILState_Release: thread state ... must be current when releasing``,
``Python runtime state: finalizing``. Known and open upstream (temporalio/sdk-python#300,
PyO3/pyo3-async-runtimes#40): the runtime's threads are process-wide and cannot be stopped or
joined from Python, so closing clients or draining the event loop does not close the window.
A process that never finalizes never races them. Whatever finalization does that matters is done
here first: waiting for non-daemon threads, the ``atexit`` handlers (logging and tracing flush
there), and flushing stdout and stderr.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

# What CPython exits with when it cannot flush stdout at shutdown (e.g. `keel ... | head -1`).
EXIT_STDOUT_LOST = 120


def exit_code_of(code: object) -> int:
    """The status ``SystemExit(code)`` ends a process with, as CPython computes it: None is 0, an
    int is itself, anything else is printed to stderr and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_process(code: int) -> NoReturn:
    # threading._shutdown is what Py_FinalizeEx runs first: it joins non-daemon threads (and
    # stops idle concurrent.futures workers), so no work in flight is cut off.
    join_threads = getattr(threading, "_shutdown", None)
    if join_threads is not None:
        join_threads()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or a closed stream: nothing left to save
            if stream is sys.stdout and code == 0:
                code = EXIT_STDOUT_LOST
    os._exit(code)
