"""The quiet console: what the engine and libraries print (from this process or a child) goes to
the log; ttscale's own consoles and warnings stay on the terminal. Run in a fresh interpreter,
whose stdout and stderr are real file descriptors as in a terminal (pytest replaces them)."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import logging, os, subprocess, sys, warnings
    from pathlib import Path
    from rich.console import Console
    from ttscale.quiet import output_to_log

    out, err = Console(), Console(stderr=True)
    with output_to_log(Path(sys.argv[1]), out, err):
        os.write(2, b"Triton is installed, but doesn't include CPU backend.\\n")  # C-level, like torch
        warnings.warn("deprecated", FutureWarning)
        subprocess.run([sys.executable, "-c", "import sys; print('Loading: 100%|#| 1/1 [00:02<00:00, 2.5it/s]', file=sys.stderr); print('child stdout')"], check=True)
        print("print() from a library")
        out.print("ttscale progress line")
        err.print("ttscale error line")
        logging.getLogger("ttscale.backends.vllm").warning("Memory is short: 1.00 of 2.00 GiB")
    print("ttscale after the run")
    print("stderr after the run", file=sys.stderr)
""")


def test_library_and_child_output_goes_to_the_log_and_ours_stays(tmp_path):
    log_path = tmp_path / "run" / "engine.log"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(log_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    log = log_path.read_text()
    for noise in ("Triton", "FutureWarning", "it/s]", "child stdout", "print() from a library"):
        assert noise in log
        assert noise not in done.stdout + done.stderr
    assert "ttscale progress line" in done.stdout and "ttscale after the run" in done.stdout
    assert "ttscale error line" in done.stderr and "Memory is short" in done.stderr
    assert "stderr after the run" in done.stderr  # the terminal is back afterwards
    assert "ttscale progress line" not in log and "Memory is short" not in log
