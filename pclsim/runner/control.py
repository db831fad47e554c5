"""The sweep's control: progress lines, a Ctrl-C that stops Tune gracefully, errors out of Ray's wrappers.

Used by every stage of `pclsim sweep` (pclsim.runner: sweep, cluster, trials, finish).
"""

from __future__ import annotations

import os
import re
import sys
import time

from ..errors import PclsimError

__all__ = ["say", "stage", "interrupted", "fit_catching_sigint", "DETERMINISTIC", "root_cause",
           "cause_message", "unwrap", "get_or_recover", "sigterm_as_ctrl_c", "sigterm_is_ctrl_c"]


def say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


_T0 = [time.perf_counter()]  # when the sweep started (run_sweep sets it): the origin of --debug's stage times


def stage(debug: bool, what: str) -> None:
    if debug:
        print(f"[{time.perf_counter() - _T0[0]:7.1f} s] {what}", file=sys.stderr, flush=True)


_INTERRUPTED = [False]


def fit_catching_sigint(tuner):
    """tuner.fit(), noting a Ctrl-C: Tune stops gracefully on SIGINT and returns as if done, so the first
    SIGINT sets _INTERRUPTED and asks Tune to stop through its other stop signal (SIGUSR1); a second one
    raises KeyboardInterrupt at once."""
    import signal
    import threading

    _INTERRUPTED[0] = False
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        return tuner.fit()
    prev = signal.getsignal(signal.SIGINT)

    def on_sigint(sig, frame):
        _INTERRUPTED[0] = True
        signal.signal(signal.SIGINT, prev)
        os.kill(os.getpid(), signal.SIGUSR1)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGINT, on_sigint)
    try:
        return tuner.fit()
    finally:
        signal.signal(signal.SIGINT, prev)


# deterministic errors: the same inputs raise them again, so a retry only repeats the traceback


DETERMINISTIC = (PclsimError, ValueError, LookupError, TypeError, ArithmeticError, AssertionError)


def root_cause(e: BaseException) -> BaseException:
    """The exception a Ray worker raised, out of Ray's and Tune's wrappers (RayTaskError.cause, __cause__)."""
    seen = 0
    while seen < 10:
        nxt = getattr(e, "cause", None) or e.__cause__
        if not isinstance(nxt, BaseException):
            return e
        e, seen = nxt, seen + 1
    return e


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Failure)): ?(.*)$")


def cause_message(root: BaseException) -> tuple[str, str]:
    """(type name, message) of the innermost exception `root` carries, found in its text when a wrapper
    (Tune's TuneError, Ray's RayTaskError) holds a whole remote traceback: the last "Type: message" line
    after the last "Traceback" header. A long plain message keeps its first and last lines."""
    lines = [ln.rstrip() for ln in str(root).splitlines() if ln.strip()]
    name = type(root).__name__
    if any("Traceback (most recent call last)" in ln or ln.startswith("ray::") for ln in lines):
        for ln in reversed(lines):
            m = _EXC_LINE.match(ln.strip())
            if m:
                inner = m.group(1).rsplit(".", 1)[-1]
                return inner, m.group(2).strip()
        return name, lines[-1].strip()
    if not lines:
        return name, ""
    first, last = lines[0].strip(), lines[-1].strip()
    return name, first if len(lines) == 1 else f"{first} ... {last}"


def unwrap(e: BaseException, where: str | None = None) -> BaseException:
    """An error raised inside a Ray worker, with its own message (and `where`: the trial it belongs to).

    A PclsimError comes back as one of its own class (the CLI: `error:` line, exit 2); anything else as a
    RuntimeError "where: Type: message" (the CLI: an internal error) with the innermost cause's type and
    message (`cause_message`). A driver-side PclsimError is kept as is.
    """
    if isinstance(e, PclsimError) and not hasattr(e, "cause"):
        return e
    root = root_cause(e)
    name, msg = cause_message(root)
    prefix = f"{where}: " if where else ""
    if isinstance(root, PclsimError):
        try:
            return type(root)(prefix + msg)
        except TypeError:
            return PclsimError(prefix + msg)
    fn = getattr(e, "function_name", None)
    prefix = prefix or (f"in {fn}: " if fn else "")
    return RuntimeError(f"{prefix}{name}: {msg}" if msg else f"{prefix}{name}")


def get_or_recover(ray, refs, recover):
    """ray.get, or `recover()` when the objects died with their node (features come back from the
    shared cache, orders and tables are recomputed): a retried trial then still completes."""
    try:
        return ray.get(refs, timeout=600)
    except (ray.exceptions.ObjectLostError, ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError,
            ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError):
        return recover()


def sigterm_as_ctrl_c() -> None:
    """SIGTERM (what Kubernetes, KubeRay and `kill` send on preemption) is handled as Ctrl-C: the running
    trials stop, the finished ones stay, exit 130 with how many finished, and the rerun resumes. Called
    before Ray starts and again after ray.init, whose driver installs a SIGTERM handler that aborts."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _term_to_int)


def _term_to_int(sig, frame):
    import signal

    os.kill(os.getpid(), signal.SIGINT)


def sigterm_is_ctrl_c() -> bool:
    """Whether this process handles SIGTERM as Ctrl-C (the CLI set it up with `sigterm_as_ctrl_c`)."""
    import signal

    return signal.getsignal(signal.SIGTERM) is _term_to_int


def interrupted() -> bool:
    """Whether the last `fit_catching_sigint` was stopped by a Ctrl-C."""
    return _INTERRUPTED[0]
