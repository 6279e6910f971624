"""A quiet console: the engine's and the libraries' output goes to a log file, ttscale's stays.

vLLM, triton, transformers and safetensors write to the process's stdout and stderr: progress
bars, "Triton is installed, but doesn't include CPU backend", FutureWarnings, NUMA notes. The
engine core runs in a child process that inherits file descriptors 1 and 2, so redirecting the
Python objects would not reach it. Instead the descriptors themselves point at the log for the
duration, and ttscale's own consoles write to copies of the terminal's descriptors.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.logging import RichHandler


@contextmanager
def output_to_log(log_path: Path, out: Console, err: Console) -> Iterator[None]:
    """Send fds 1 and 2 (this process and its children) to `log_path`; `out` and `err` keep the
    terminal, and so do ttscale's own log lines (its warnings, e.g. "Memory is short")."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    terminal_out = os.fdopen(os.dup(1), "w", buffering=1)
    terminal_err = os.fdopen(os.dup(2), "w", buffering=1)
    old_files = out.file, err.file
    out.file, err.file = terminal_out, terminal_err
    handler = RichHandler(console=err, show_time=False, show_path=False)
    ours = logging.getLogger("ttscale")
    ours.addHandler(handler)
    ours.propagate = False  # the libraries' root handlers write to the log, not to us
    with open(log_path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(terminal_out.fileno(), 1)
            os.dup2(terminal_err.fileno(), 2)
            ours.removeHandler(handler)
            ours.propagate = True
            out.file, err.file = old_files
            terminal_out.close()
            terminal_err.close()
