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
           "cause_message", "unwrap", "get_or_recover", "get_timeout_s", "lost_errors", "memory_kill",
           "MemoryKilled", "MEMORY_KNOBS", "sigterm_as_ctrl_c", "sigterm_is_ctrl_c"]


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


def _first_last(lines: list[str]) -> str:
    lines = [ln.strip() for ln in lines if ln.strip()]
    if not lines:
        return ""
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def cause_message(root: BaseException) -> tuple[str, str]:
    """(type name, message) of the innermost exception `root` carries.

    A memory kill anywhere in the text (Ray's memory monitor, its message many lines long) gives
    ("OutOfMemoryError", the memory summary of `memory_kill`). When a wrapper (Tune's TuneError, Ray's
    RayTaskError) holds a whole remote traceback, the innermost exception is the last "Type: message"
    line after the last "Traceback" header, its message with the first and last of its own lines. A long
    plain message keeps its first and last lines."""
    text = str(root)
    oom = _oom_facts(text)
    if oom is not None:
        return "OutOfMemoryError", _oom_summary(oom)
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    name = type(root).__name__
    if any("Traceback (most recent call last)" in ln or ln.startswith("ray::") for ln in lines):
        for i in range(len(lines) - 1, -1, -1):
            m = _EXC_LINE.match(lines[i].strip())
            if m:
                inner = m.group(1).rsplit(".", 1)[-1]
                return inner, _first_last([m.group(2)] + lines[i + 1:])
        return name, lines[-1].strip()
    return name, _first_last(lines)


# Ray's memory monitor (raylet, Ray 2.x): "Memory on the node (IP: 10.0.0.5, ID: ab12..) was 1.57GB used /
# 23.54GB limit (0.066828)", "... exceeded threshold of ...B (5.0% of ...B limit)", "Selected to kill:
# (Actor(..): ..., task name=FeatureExtractorActor.extract_chunk, ..." or "(Task: ..., task name=table_job, ..."
_OOM_NODE = re.compile(r"Memory on the node \(IP: ([^,\s]+), ID: \w+\) was ([\d.]+)\s*GB used / ([\d.]+)\s*GB limit")
_OOM_THRESHOLD = re.compile(r"threshold of \d+B \(([\d.]+)% of")
_OOM_KILLED = re.compile(r"task name=([\w.<>-]+)")
# what Ray writes when its memory monitor killed a worker (OutOfMemoryError; ActorDiedError: exit type)
_OOM_WORDS = ("killed due to the node running low on memory", "NODE_OUT_OF_MEMORY")

# Ray task / actor names -> what the user reads
_KILLED_WHAT = {"FeatureExtractorActor": "a feature extractor", "table_job": "a candidate-table job",
                "selection_job": "a selection job", "bank_job": "a joint-bank job",
                "BankManagerActor": "the bank manager", "ResultsWriter": "the results writer",
                "write_gallery": "the gallery job", "measure": "the task-difficulty job",
                "ImplicitFunc": "a trial", "_Inner": "a trial", "guarded_trial": "a trial"}


def _oom_facts(text: str) -> dict | None:
    """What Ray's memory-monitor message says (node IP, GB used and limit, threshold, what was killed), or
    None when `text` is not about a memory kill."""
    node = _OOM_NODE.search(text)
    if node is None and not any(w in text for w in _OOM_WORDS):
        return None
    facts = {"ip": node.group(1), "used": node.group(2), "limit": node.group(3)} if node else {}
    thr = _OOM_THRESHOLD.search(text)
    if thr:
        facts["threshold"] = thr.group(1)
    killed = _OOM_KILLED.search(text)
    if killed:
        facts["task"] = killed.group(1)
    return facts


def _oom_summary(facts: dict) -> str:
    where = f" on node {facts['ip']}" if "ip" in facts else ""
    used = f" ({facts['used']} GB used of {facts['limit']} GB" if "used" in facts else ""
    thr = f", above Ray's kill threshold of {facts['threshold']}%" if "threshold" in facts else ""
    return f"Ray's memory monitor killed {_killed_what(facts.get('task'))}{where}{used}{thr}{')' if used else ''}"


def _killed_what(task: str | None) -> str:
    if not task:
        return "a worker"
    head = task.split(".", 1)[0]
    for key, what in _KILLED_WHAT.items():
        if head == key or head.startswith(key):
            return what
    return f"a worker running {task}"


class MemoryKilled(PclsimError):
    """Ray's memory monitor (or the kernel) killed a worker of the sweep: exit 2 with what, where and the knobs."""


MEMORY_KNOBS = ("lower model.batch_size (the extractors' batch), run fewer trials at once (--max-concurrent N) or "
                "give Ray more room (RAY_memory_usage_threshold, default 0.95, set where Ray starts; more memory "
                "per node)")


def memory_kill(e: BaseException, what: str | None = None, where: str | None = None) -> MemoryKilled | None:
    """A MemoryKilled error (one line: what was killed, the node, the memory in use, the knobs) when Ray's
    memory monitor is behind `e` anywhere: its chain (RayTaskError.cause, __cause__, __context__) or the
    text of any exception in it (a Ray OutOfMemoryError, an ActorDiedError whose cause mentions memory);
    None otherwise. what: what the driver knows was running (e.g. "the feature extractor of task X"), named
    instead of Ray's task name; where: a prefix (e.g. "trial g0")."""
    seen, x, facts = 0, e, None
    while x is not None and seen < 20 and facts is None:
        ray_oom = type(x).__name__ == "OutOfMemoryError" and type(x).__module__.startswith("ray")
        if ray_oom or any(w in str(x) for w in _OOM_WORDS) or _OOM_NODE.search(str(x)):
            facts = _oom_facts(str(x)) or {}
        x, seen = getattr(x, "cause", None) or x.__cause__ or x.__context__, seen + 1
    if facts is None:
        return None
    line = _oom_summary(facts)
    if what:
        line = line.replace(f"killed {_killed_what(facts.get('task'))}", f"killed {what}", 1)
    return MemoryKilled(f"{where + ': ' if where else ''}out of memory: {line}; {MEMORY_KNOBS}")


def unwrap(e: BaseException, where: str | None = None) -> BaseException:
    """An error raised inside a Ray worker, with its own message (and `where`: the trial it belongs to).

    A memory kill anywhere in it becomes a MemoryKilled (`memory_kill`: one line naming what was killed,
    the node, the memory in use and the knobs; exit 2). A PclsimError comes back as one of its own class
    (the CLI: `error:` line, exit 2); anything else as a RuntimeError "where: Type: message" (the CLI: an
    internal error) with the innermost cause's type and message (`cause_message`). A driver-side
    PclsimError is kept as is.
    """
    if isinstance(e, PclsimError) and not hasattr(e, "cause"):
        return e
    oom = memory_kill(e, where=where)
    if oom is not None:
        return oom
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


def get_timeout_s() -> float:
    """Seconds of one wait slice of `get_or_recover`: PCLSIM_GET_TIMEOUT_S, else 600."""
    try:
        return max(0.001, float(os.environ.get("PCLSIM_GET_TIMEOUT_S") or 600))
    except ValueError:
        raise PclsimError(f"PCLSIM_GET_TIMEOUT_S: not a number of seconds: {os.environ['PCLSIM_GET_TIMEOUT_S']!r}") \
            from None


def lost_errors(ray) -> tuple:
    """The exceptions of ray.get that mean the object is gone (its node, its owner or its copies died): only
    these are recomputed. A GetTimeoutError means slow, and an OutOfMemoryError is the user's to fix."""
    x = ray.exceptions
    return (x.ObjectLostError, x.RayActorError, x.WorkerCrashedError, x.NodeDiedError)


def get_or_recover(ray, refs, recover, what: str = "objects", progress=None):
    """ray.get of `refs`, waiting as long as they exist; `recover()` only when they are lost.

    Waits in slices of `get_timeout_s()` seconds; after each slice that ends without the objects (still
    being computed, or restored from spill on a loaded node) it calls progress(line), line = "waiting for
    <what> (N min)" (default: printed on stderr), and waits on. Only an error of `lost_errors` (the objects
    died with their node or owner: features come back from the shared cache, tables are recomputed) calls
    and returns `recover()`. Any other error is raised."""
    slice_s = get_timeout_s()
    t0 = time.monotonic()
    while True:
        try:
            return ray.get(refs, timeout=slice_s)
        except ray.exceptions.GetTimeoutError:
            line = f"waiting for {what} ({(time.monotonic() - t0) / 60:.0f} min)"
            (progress or (lambda s: print(s, file=sys.stderr, flush=True)))(line)
        except lost_errors(ray):
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
