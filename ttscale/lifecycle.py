"""How a ttscale process ends: SIGTERM takes Ctrl-C's path, and no child process outlives it.

* SIGINT (Ctrl-C) and SIGTERM (`kill PID`, a service manager, a CI runner's timeout) end a run
  the same way: the running work is cancelled at its next `await`, every `finally` runs (the
  engine is shut down, finished problems are already on disk), and the command says how to
  resume. Exit status 130 for SIGINT, 143 for SIGTERM (128 + the signal, as shells report them).
* A process started with SIGINT ignored keeps ignoring it. POSIX asks this of every program (a
  launcher that ignores SIGINT, such as a background job of a non-interactive shell or nohup,
  wants its children immune to the terminal's Ctrl-C), and Python follows it: it installs its
  KeyboardInterrupt handler only where SIGINT is at its default. SIGTERM always works.
* Whatever ends the command (either signal, an exception, a normal exit), `end_children` runs
  last and ends every descendant process still alive: the vLLM EngineCore and its workers, a Ray
  cluster this process started. Their normal shutdown comes first; this is the backstop for a
  shutdown that was cut short. Only SIGKILL of ttscale itself escapes it.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Coroutine, TypeVar

import psutil

INTERRUPTED_EXIT = 128 + signal.SIGINT  # 130
TERMINATED_EXIT = 128 + signal.SIGTERM  # 143
CHILDREN_GRACE_S = 10  # how long descendants get to exit after SIGTERM before SIGKILL

T = TypeVar("T")


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt: `except Exception` must not swallow it."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises Terminated in the main thread (outside `run`'s event loop)."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, where SIGTERM cancels the work as Ctrl-C does, then raises Terminated.

    asyncio.run already turns Ctrl-C into a cancellation of the main task followed by
    KeyboardInterrupt; this gives SIGTERM the same path, so a cancellation lands at an `await`
    (never in the middle of writing a record) and the coroutine's `finally` blocks shut down
    what it started.
    """
    return asyncio.run(_cancelled_by_sigterm(coroutine))


async def _cancelled_by_sigterm(coroutine: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    received: list[int] = []

    def on_sigterm() -> None:
        received.append(signal.SIGTERM)
        main_task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await coroutine
    except asyncio.CancelledError:
        if received:
            raise Terminated() from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)  # leaves SIGTERM at its default: put ours back
        raise_on_sigterm()


def end_children(grace_s: float = CHILDREN_GRACE_S) -> list[int]:
    """SIGTERM every descendant of this process still alive, then SIGKILL those left after grace_s.

    The whole tree is listed first: a worker whose parent (the EngineCore) dies first is
    re-parented away from us, so it must be known before anything is signalled. Returns the
    pids that were still alive, for the caller to mention.
    """
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return [child.pid for child in children]
