"""Shared benchmark helpers: timing, JSON output, optional anomalib oracle, a sweep measured from outside
(its --debug stage marks and the peak memory of its whole process tree)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # oracles draw progress bars; benchmarks print JSON only


def timed(fn, *args, repeat: int = 1, **kw):
    """(best seconds over `repeat` runs, last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        best = min(best, time.perf_counter() - t0)
    return best, out


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def emit(name: str, payload: dict) -> None:
    """Print one JSON line; append it to $PCLSIM_BENCH_OUT when set."""
    line = json.dumps({"benchmark": name, **payload}, default=float)
    print(line, flush=True)
    path = os.environ.get("PCLSIM_BENCH_OUT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def anomalib_or_none(what: str):
    try:
        if what == "kcenter":
            from anomalib.models.components.sampling import KCenterGreedy

            return KCenterGreedy
        if what == "patchcore":
            from anomalib.models.image.patchcore.torch_model import PatchcoreModel

            return PatchcoreModel
    except Exception as e:  # anomalib is an optional oracle (pip install -e '.[bench]')
        print(f"anomalib unavailable ({type(e).__name__}: {e}); its baseline is skipped", file=sys.stderr)
    return None


def json_lines(*paths) -> list[dict]:
    """The JSON objects a benchmark printed, from saved output files (other lines skipped)."""
    return [json.loads(x) for p in paths for x in open(p) if x.strip().startswith("{")]


def replace_readme_block(readme, name: str, body: str) -> None:
    """Put `body` between README's `<!-- name:begin -->` and `<!-- name:end -->` markers (atomic rewrite).

    Raises SystemExit naming the file when a marker is missing."""
    from pathlib import Path

    readme = Path(readme)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = readme.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"error: {readme}: markers {begin} ... {end} not found")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    body = body if body.endswith("\n") else body + "\n"
    tmp = readme.with_name("." + readme.name + ".tmp")
    tmp.write_text(f"{head}{begin}\n{body}{end}{tail}")
    os.replace(tmp, readme)


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc (a scan of every process's parent in its stat file)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def smaps_rollup(pid: int) -> dict[str, int]:
    """Pss, Pss_Anon, Pss_Shmem, Pss_File and Rss of one process in bytes ({} once it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Pss", "Pss_Anon", "Pss_Shmem", "Pss_File", "Rss"):
                    out[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


class Sampler(threading.Thread):
    """Peak PSS (all, anonymous + shared memory, mapped files) of a process tree, sampled every `every`
    seconds, overall and per stage. stages: the sweep's --debug marks in order, then a name for what follows
    the last; the memory of the work that ENDS at a mark is booked under that mark (`follow_marks` moves
    `stage` on as the marks are printed)."""

    def __init__(self, pid: int, stages: tuple, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every, self.stages = pid, every, tuple(stages)
        self.peak_pss = self.peak_anon_shm = self.peak_file = self.peak_procs = 0
        self.stage = self.stages[0]
        self.by_stage: dict[str, dict[str, int]] = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            pids = process_tree(self.pid)
            r = [smaps_rollup(p) for p in pids]
            now = {"pss": sum(x.get("Pss", 0) for x in r),
                   "anon_shm": sum(x.get("Pss_Anon", 0) + x.get("Pss_Shmem", 0) for x in r),
                   "file": sum(x.get("Pss_File", 0) for x in r)}
            self.peak_pss = max(self.peak_pss, now["pss"])
            self.peak_anon_shm = max(self.peak_anon_shm, now["anon_shm"])
            self.peak_file = max(self.peak_file, now["file"])
            self.peak_procs = max(self.peak_procs, len(pids))
            st = self.by_stage.setdefault(self.stage, {})
            for k, v in now.items():
                st[k] = max(st.get(k, 0), v)
            self.stop.wait(self.every)


MARK = re.compile(r"\[\s*([\d.]+) s\] (.+)")


def follow_marks(stream, sampler: Sampler, lines: list[str]) -> None:
    """Read the sweep's stderr as it comes; move the sampler to the next stage at each of its marks."""
    for line in stream:
        lines.append(line)
        m = MARK.search(line)
        if m and m.group(2).strip() in sampler.stages[:-1]:
            sampler.stage = sampler.stages[sampler.stages.index(m.group(2).strip()) + 1]


def mark_times(text: str) -> dict[str, float]:
    """{mark: seconds since the sweep started} of a sweep's --debug stderr (the first of each mark)."""
    marks: dict[str, float] = {}
    for m in MARK.finditer(text):
        marks.setdefault(m.group(2).strip(), float(m.group(1)))
    return marks


def measured_run(cmd: list, env: dict, cwd, stages: tuple, every: float = 0.5):
    """Run `cmd` (a sweep with --debug), sampling its process tree's memory by stage. Returns
    (return code, stderr text, the Sampler, wall seconds)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd)
    s = Sampler(p.pid, stages, every)
    s.start()
    lines: list[str] = []
    reader = threading.Thread(target=follow_marks, args=(p.stderr, s, lines), daemon=True)
    reader.start()
    p.wait()
    reader.join()
    s.stop.set()
    s.join()
    return p.returncode, "".join(lines), s, time.perf_counter() - t0
