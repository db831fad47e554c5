"""`pclsim sweep`: a scenario's runs as Ray Tune trials, results as Parquet, resumable.

The driver: check the scenario and its data before any Ray, prepare the results folder, run what is
left (pclsim.runner.cluster: features, banks; pclsim.runner.trials: the Tune trials), then write the
summary and statistics (pclsim.runner.finish). Ctrl-C and worker errors: pclsim.runner.control.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import yaml

from .._version import __version__
from ..atomic import atomic_write_json, atomic_write_text
from ..errors import Interrupted, PclsimError
from ..study.adaptive import is_adaptive
from ..study.scenario import expand_runs, group_runs, load_scenario, needs_difficulty, scenario_hash
from ..results.record import results_record
from ..results.tables import remove_table
from .cluster import check_ray_temp_dir, probe_address as _probe_address, run_ray as _run_ray
from .control import _T0, say as _say, stage as _stage, unwrap as _unwrap  # noqa: F401 (_unwrap: tests)
from .finish import check_complete, finish as _finish

__all__ = ["run_sweep", "prepare_output", "results_record", "WRITTEN"]


# Everything a sweep or `pclsim report` writes into a results folder, and inside a folder the files it
# writes there: what --fresh may delete (a user's own file inside one of these folders stays).
WRITTEN = {**{f"{t}.parquet": ("part-*.parquet", ".tmp-*") for t in
              ("matrices", "steps", "summary", "tasks", "statistics", "routing", "routed", "categories",
               "design")},  # design: adaptive order designs (pclsim.runner.adaptive)
           "run_info.json": None, "data.json": None, "protocol.json": None, ".tune": ("*",),
           "report": ("index.html", "*.png", "*.csv", "table1.md", ".tmp-*"), "gallery": ("*.npz", ".tmp-*")}


def _remove_written(out: Path, name: str) -> list[Path]:
    """Delete what pclsim wrote under out/name (WRITTEN); returns the files of others it kept."""
    p = out / name
    if not p.is_dir():
        p.unlink(missing_ok=True)
        return []
    for pattern in WRITTEN[name] or ():
        for f in p.glob(pattern):
            if f.is_dir():
                shutil.rmtree(f)
            else:
                f.unlink()
    kept = [f for f in p.rglob("*") if f.is_file()]
    if not kept:
        shutil.rmtree(p)
    return kept


def prepare_output(sc: dict, out: Path, fresh: bool, data_hash: str | None = None,
                   accept_versions: bool = False) -> None:
    """Check the folder is writable and holds this scenario (or nothing of pclsim's); write scenario.yaml.

    pclsim recognises a folder it wrote by its record (scenario.yaml with a scenario_hash). It never
    overwrites a scenario.yaml it did not write (the user's scenario, say): PclsimError naming it. A
    folder without the record that holds any of the names pclsim writes (WRITTEN) is refused, with or
    without --fresh. --fresh deletes only what pclsim writes, file by file, and keeps (with a warning)
    a user's file inside one of pclsim's folders.
    data_hash (`pclsim.study.preflight.data_fingerprint`) is stored in scenario.yaml. A resume whose data
    differ from those the finished trials were computed from stops with an error (PclsimError) rather
    than recomputing: replacing results is the user's decision (--fresh), never a side effect.
    Likewise a resume by another pclsim, torch or timm version than the finished trials' (each Parquet part
    records them: pclsim.results.provenance) stops with an error offering --fresh, --out or, with
    accept_versions (`--accept-versions`), adds this version's runs to them (each part keeps its versions)."""
    if out.exists() and not out.is_dir():
        raise PclsimError(f"{out}: --out is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".pclsim-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise PclsimError(f"{out}: output folder is not writable ({e.strerror or e})") from None
    meta = out / "scenario.yaml"
    old = results_record(out)
    if meta.exists() and old is None:
        raise PclsimError(f"{meta}: not a pclsim results record (no scenario_hash: your own file?); pclsim writes "
                          f"its record under that name and never overwrites yours: use another --out, e.g. "
                          f"{out / 'results'}")
    ours = [name for name in WRITTEN if (out / name).exists()]
    if old is None and ours:
        raise PclsimError(f"{out}: holds {', '.join(ours)} but no pclsim record (scenario.yaml): not a folder "
                          f"pclsim wrote, so it neither writes nor deletes there (--fresh too): use another --out")
    if old is not None and not fresh:
        if old.get("scenario_hash") != scenario_hash(sc):
            raise PclsimError(f"{meta}: this folder holds results of a different scenario; "
                              "use --fresh to start over or --out for another folder")
        from ..results.tables import done_groups

        if data_hash and old.get("data_hash") not in (None, data_hash) and done_groups(out):
            raise PclsimError(f"{meta}: the results here were computed from different data or weights (data hash "
                              f"{old.get('data_hash')}, now {data_hash}: files added, removed or modified); "
                              "use --fresh to recompute them or --out for another folder")
        _check_versions(out, meta, old, accept_versions)
    # Tune's own experiment folder is scratch: resuming goes by the finished Parquet parts
    kept = _remove_written(out, ".tune") if (out / ".tune").exists() else []
    if fresh:
        for name in ours:
            kept += _remove_written(out, name)
    if kept:
        print(f"warning: --fresh kept {len(kept)} file(s) pclsim did not write, e.g. {kept[0]}", file=sys.stderr)
    from ..results.provenance import versions

    body = dict(sc, pclsim_version=__version__, scenario_hash=scenario_hash(sc), versions=versions())
    if data_hash:
        body["data_hash"] = data_hash
    if old is not None and not fresh and "weights_used" in old:  # a resume keeps what the features came from
        body["weights_used"] = old["weights_used"]
    # the trackers' run group (pclsim.runner.tracking): kept by a resume, new for a fresh start
    body["run_group"] = (old or {}).get("run_group") if old is not None and not fresh else None
    body["run_group"] = body["run_group"] or uuid.uuid4().hex[:12]
    atomic_write_text(yaml.safe_dump(body, sort_keys=False), meta)
    from ..results.protocol_card import PROTOCOL_FILE, protocol_card

    atomic_write_json(protocol_card(sc), out / PROTOCOL_FILE)  # the conventions and what touched test labels


def _check_versions(out: Path, meta: Path, old: dict, accept: bool) -> None:
    """PclsimError when finished trials of the folder were computed by other versions (and not accept)."""
    from ..results.provenance import describe, folder_versions, versions
    from ..results.tables import done_groups

    done = done_groups(out)
    if not done:
        return
    now = describe(versions())
    found = folder_versions(out, done, fallback={"pclsim": old.get("pclsim_version")} if old.get("pclsim_version")
                            else None)
    other = {v: g for v, g in found.items() if v != now}
    if other and not accept:
        v, g = max(other.items(), key=lambda kv: len(kv[1]))
        raise PclsimError(f"{meta}: {sum(map(len, other.values()))} finished trial(s) here were computed by {v}, this "
                          f"is {now}: use --fresh to recompute them, --out for another folder, or --accept-versions "
                          "to add this version's runs to them (each Parquet part keeps its versions)")
    if other:
        print(f"warning: --accept-versions: this folder mixes runs of {' / '.join(sorted(other))} and {now}",
              file=sys.stderr)


def run_sweep(scenario_path: str, out: str | None = None, data_root: str | None = None, address: str | None = None,
              fresh: bool = False, max_concurrent: int | None = None, quiet: bool = False, debug: bool = False,
              cache_dir: str | None = None, gallery: int | None = None, track: list[str] | None = None,
              accept_versions: bool = False) -> Path:
    from ..data import load_stream
    from ..study.preflight import check_stream, data_fingerprint

    t_start = _T0[0] = time.perf_counter()
    from .tracking import check_trackers, parse_track

    parse_track(track)  # a bad --track fails before any work
    sc = load_scenario(scenario_path, data_root=data_root)
    if address or os.environ.get("RAY_ADDRESS"):
        _probe_address(address or os.environ["RAY_ADDRESS"])
    else:
        check_ray_temp_dir()  # a local Ray's socket paths fit, before any data is read
    if gallery is not None:
        sc["evaluation"]["gallery"] = int(gallery)
    out_dir = Path(out or Path("results") / sc["name"]).expanduser().resolve()
    check_trackers(track, out_dir, sc["name"])  # a tracker that would fail after the work fails now
    from ..core.thresholds import needs_validation

    stream = load_stream(sc["dataset"], sc["dataset"]["root"], validation=needs_validation(sc))
    if sc["dataset"]["tasks"] is None:  # folder-like data sets: every category found
        from ..study.scenario import resolve

        sc["dataset"]["tasks"] = [t.name for t in stream]
        sc = resolve(sc, scenario_path)
    cache_root = Path(cache_dir).resolve() if cache_dir else None
    preflight_info: dict = {}
    check_stream(sc, stream, cache_dir=cache_root, info=preflight_info)  # all that can fail fails here, before Ray
    # easy_to_hard / hard_to_easy: the orders are set once the features exist (_run_ray); group
    # names and counts do not depend on them, so a stand-in difficulty plans the groups
    runs = expand_runs(sc, difficulty=_stand_in_difficulty(sc) if needs_difficulty(sc) else None)
    groups = group_runs(runs)
    lock = _lock(out_dir)  # held until the sweep returns: a second sweep into this folder refuses
    try:
        prepare_output(sc, out_dir, fresh, data_fingerprint(sc, stream), accept_versions)
        atomic_write_json(_data_record(stream, sc["dataset"].get("root")), out_dir / "data.json")
        from ..results.tables import done_groups

        more = None
        if is_adaptive(sc):  # the orders the stored results decide so far (pclsim.runner.adaptive)
            from .adaptive import FolderObserver, plan_rounds

            observer = FolderObserver(out_dir, sc)
            plan, groups = plan_rounds(sc, out_dir, observer)
            runs = [r for rs in groups.values() for r in rs]

            def more():
                nonlocal plan, groups, runs
                plan, groups = plan_rounds(sc, out_dir, observer)
                runs = [r for rs in groups.values() for r in rs]
                left = {g: rs for g, rs in groups.items() if g not in done_groups(out_dir)}
                if left:
                    _say(quiet, f"{plan.design} round {len(plan.rounds) - 1}: {len(plan.rounds[-1])} orders, "
                                f"{sum(map(len, left.values()))} runs")
                return left
        done = done_groups(out_dir)
        todo = {g: rs for g, rs in groups.items() if g not in done}
        _say(quiet, f"pclsim {__version__}: {sc['name']}: {len(runs)} runs in {len(groups)} trials "
                    f"({len(groups) - len(todo)} already done) -> {out_dir}")
        if "largest" in preflight_info:
            from ..study.preflight import decode_memory_line

            _say(quiet, decode_memory_line(preflight_info["largest"]))
        want_gallery = sc["evaluation"]["gallery"] > 0 and not (out_dir / "gallery").is_dir()
        try:
            if todo or want_gallery:
                try:
                    _run_ray(sc, stream, todo, out_dir, address, max_concurrent, quiet, debug, cache_root,
                             want_gallery, track, fresh, more)
                except (Interrupted, KeyboardInterrupt):
                    remove_table(out_dir / "summary.parquet")  # never a summary of an incomplete set
                    raise
            if more is not None:
                while left := more():  # a resume whose last round was complete: the rounds it decides next
                    _run_ray(sc, stream, left, out_dir, address, max_concurrent, quiet, debug, cache_root,
                             False, track, False, more)
                from .adaptive import closing_note, write_design

                write_design(out_dir, plan)
            _finish(sc, out_dir, stream, quiet, cache_root)
            _stage(debug, "summary done")
            if more is not None:
                _say(quiet, "\nHow much does the order move the result? (design.parquet)\n  "
                     + "\n  ".join([plan.stop] + closing_note(plan)))
            check_complete(out_dir, len(runs))  # never exit 0 on an incomplete folder
        except Exception as e:
            raise _storage_problem(e, out_dir) or e
        _say(quiet, f"done in {time.perf_counter() - t_start:.1f} s: {out_dir}")
    finally:
        os.close(lock)
    return out_dir


def _lock(out_dir: Path) -> int:
    """An exclusive lock on the results folder (flock on the folder itself: no file is left behind); a
    PclsimError naming the folder when another sweep holds it. Returns the descriptor to close."""
    import fcntl

    if out_dir.exists() and not out_dir.is_dir():
        raise PclsimError(f"{out_dir}: --out is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir, os.O_RDONLY)
    except OSError as e:
        raise PclsimError(f"{out_dir}: cannot use as the output folder ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise PclsimError(f"{out_dir}: another pclsim sweep is writing into this folder; wait for it to end or "
                          "use another --out") from None
    return fd



def _storage_problem(e: BaseException, out_dir: Path) -> PclsimError | None:
    """The file-system fault behind a failure, as one PclsimError naming the path, or None.

    A full or read-only disk surfaces in many shapes (pyarrow's OSError, Tune's truncated pickles, an
    EOFError of its experiment state): the error chain is searched for a file-system OSError, and the
    results folder is probed with a small write, so the user reads the cause, not its echo."""
    if isinstance(e, PclsimError):
        return None
    from ..errors import file_system_error

    seen, x = 0, e
    while x is not None and seen < 20:
        found = file_system_error(x, out_dir)
        if found is not None:
            return found
        x, seen = getattr(x, "cause", None) or x.__cause__ or x.__context__, seen + 1
    probe = out_dir / ".pclsim-space-probe"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * (1 << 16))
            f.flush()
            os.fsync(f.fileno())
    except OSError as pe:
        return file_system_error(pe, out_dir)
    finally:
        probe.unlink(missing_ok=True)
    return None


def _data_record(stream, root=None) -> dict:
    """data.json: per task its sizes and, where seeded caps or the paper protocol chose files, which ones;
    `synthetic: true` where the data folder holds `pclsim data synth`'s marker (the report says so beside the
    paper's published Table 1)."""
    from ..data.bmad import SYNTHETIC_MARKER

    rec = {"tasks": {t.name: {"train": len(t.train), "test": len(t.test),
                              "test_anomalous": sum(int(s.label) for s in t.test), "has_masks": bool(t.has_masks),
                              "chosen": t.chosen} for t in stream}}
    if root and (Path(str(root)) / SYNTHETIC_MARKER).is_file():
        rec["synthetic"] = True
    return rec


def _stand_in_difficulty(sc) -> dict:
    """Any difficulty plans the groups of a difficulty-decided scenario: names and counts do not depend on it."""
    return {t: 0.0 for t in sc["dataset"]["tasks"]}
