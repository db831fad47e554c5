"""The `pclsim` command line (interface.md). Bad input: one `error:` line on stderr, exit code 2."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Optional

import typer

from ._version import __version__
from .errors import PclsimError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Simulate continual visual anomaly detection (PatchCore / PatchCoreCL) over task streams.")
data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Data sets: the built-in synthetic stream.")
app.add_typer(data_app, name="data")

_DEBUG = {"on": False}


def _fail(e: BaseException, code: int = 2):
    if _DEBUG["on"]:
        traceback.print_exception(e)
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"error: {msg}", file=sys.stderr)
    raise typer.Exit(code)


def _guard(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except PclsimError as e:  # Interrupted: 130; FinishError: 1; bad input: 2
        _fail(e, getattr(e, "exit_code", 2))
    except OSError as e:  # a full, read-only or forbidden file system: the path and the cause, exit 2
        from .errors import file_system_error

        fs = file_system_error(e)
        if fs is None:
            raise
        _fail(fs)
    except KeyboardInterrupt:
        print("error: interrupted before the trials finished; rerun the same command to resume", file=sys.stderr)
        raise typer.Exit(130)


def _version(value: bool):
    if value:
        print(f"pclsim {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                              help="Print the version and exit.")):
    pass


@app.command()
def sweep(scenario: str = typer.Argument(..., help="Scenario YAML file."),
          out: Optional[str] = typer.Option(None, "--out", help="Results folder (default results/<name>/)."),
          data_root: Optional[str] = typer.Option(None, "--data-root", help="Data set folder (overrides dataset.root)."),
          address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address to join (or RAY_ADDRESS)."),
          fresh: bool = typer.Option(False, "--fresh", help="Start over instead of resuming."),
          max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", min=1,
                                                       help="Most Tune trials at once (default: the CPUs)."),
          quiet: bool = typer.Option(False, "--quiet", help="No progress bars or summary table."),
          gallery: Optional[int] = typer.Option(None, "--gallery", min=0,
                                                help="Store N anomaly maps per task for the report."),
          debug: bool = typer.Option(False, "--debug", help="Full tracebacks and Ray worker logs."),
          track: Optional[list[str]] = typer.Option(None, "--track", help="Log each trial to an experiment "
                                                    "tracker: mlflow[=URI] (default <out>/mlruns) or wandb."),
          accept_versions: bool = typer.Option(False, "--accept-versions",
                                               help="Resume a folder whose finished runs another pclsim, torch or "
                                                    "timm version computed (each part keeps its versions).")):
    """Run every (order x strategy x memory size x seed) of a scenario; write Parquet results."""
    _DEBUG["on"] = debug
    from .runner.control import sigterm_as_ctrl_c
    from .runner.sweep import run_sweep

    sigterm_as_ctrl_c()
    _guard(run_sweep, scenario, out=out, data_root=data_root, address=address, fresh=fresh,
           max_concurrent=max_concurrent, quiet=quiet, debug=debug, gallery=gallery, track=track,
           accept_versions=accept_versions)


@app.command()
def validate(scenario: str = typer.Argument(..., help="Scenario YAML file."),
             data_root: Optional[str] = typer.Option(None, "--data-root", help="Data set folder."),
             headers_only: bool = typer.Option(False, "--headers-only",
                                               help="Read only image headers (fast); skip decoding every file."),
             debug: bool = typer.Option(False, "--debug")):
    """Check a scenario and its data without heavy computation; print what it would run.

    Every image and mask is decoded (a truncated file or uninterpretable pixel values are an error naming
    the file) unless --headers-only."""
    _DEBUG["on"] = debug

    def _run():
        from .data import load_stream
        from .study.scenario import describe_orders, expand_runs, group_runs, load_scenario, resolve

        sc = load_scenario(scenario, data_root=data_root)
        if not os.environ.get("RAY_ADDRESS"):
            from .runner.cluster import check_ray_temp_dir

            check_ray_temp_dir()  # the sweep starts a local Ray: its socket paths must fit
        from .core.thresholds import needs_validation

        tasks = load_stream(sc["dataset"], sc["dataset"]["root"], validation=needs_validation(sc))
        from .study.preflight import check_stream

        if sc["dataset"]["tasks"] is None:
            sc["dataset"]["tasks"] = [t.name for t in tasks]
            sc = resolve(sc, scenario)
        info: dict = {}
        n_files = check_stream(sc, tasks, info=info)  # everything the sweep's preflight checks, before any Ray
        if not headers_only:
            from .study.preflight import decode_all

            decode_all(tasks)
        n_orders, how = describe_orders(sc)
        n_runs = n_orders * len(sc["strategies"]) * len(sc["memory_sizes"]) * len(sc["seeds"])
        # group names do not depend on the orders: any stand-in for a difficulty order counts the groups
        runs = expand_runs(sc, difficulty={t: 0.0 for t in sc["dataset"]["tasks"]})
        checked = "headers read" if headers_only else "decoded"
        print(f"scenario {sc['name']}: ok ({n_files} image and mask files checked, {checked})")
        if "largest" in info:
            from .study.preflight import decode_memory_line

            print(decode_memory_line(info["largest"]), file=sys.stderr, flush=True)
        for t in tasks:
            n_anom = sum(s.label for s in t.test)
            print(f"  task {t.name}: {len(t.train)} train, {len(t.test)} test ({n_anom} anomalous), "
                  f"masks: {'yes' if t.has_masks else 'no'}"
                  + (f", categories: {', '.join(c for c, _, _ in t.categories)}" if getattr(t, "categories", None)
                     else ""))
        from .study.adaptive import is_adaptive

        adaptive = is_adaptive(sc)  # orders decided in rounds from results: counts are upper bounds
        print(f"tasks: {len(tasks)}  orders: {n_orders}  strategies: {len(sc['strategies'])}  "
              f"memory sizes: {len(sc['memory_sizes'])}  seeds: {len(sc['seeds'])}  "
              + (f"runs: at most {n_runs} (in rounds of Tune trials, {len(group_runs(runs))} in round 0)" if adaptive
                 else f"runs: {n_runs} (in {len(group_runs(runs))} Tune trials)"))
        print(f"orders: {how}")
        resize = sc["dataset"].get("resize", "crop")
        geometry = "whole image to" if resize == "full" else "shorter side, centre crop"
        print(f"resize: {resize} ({geometry} {sc['dataset']['image_size']} px)  "
              f"reweighting: {sc['model']['reweighting']}  "
              f"maskless pixels: {sc['evaluation'].get('maskless_pixels', 'skip')}  weights: {sc['model']['weights']}  "
              f"rebalance: {sc['coreset']['rebalance']}")
        from .core.backbones import load_backbone, resolved_backbone, weights_digest

        m = sc["model"]
        model, layers = load_backbone(m["backbone"], m["weights"], m["layers"])  # offline pretrained: one error
        print(f"backbone: {resolved_backbone(m['backbone'], m['weights'])} (weights {m['weights']}, digest "
              f"{weights_digest(model)}, layers {', '.join(layers)})")
        from .study.keys import set_keys

        changed = set_keys(sc)
        print("keys set (not their default): " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "none"))

    _guard(_run)


@app.command()
def plan(scenario: str = typer.Argument(..., help="Scenario YAML file."),
         data_root: Optional[str] = typer.Option(None, "--data-root", help="Data set folder: its files are counted "
                                                 "(default: dataset.root if it exists, else the max_train / "
                                                 "max_test caps)."),
         cpus: Optional[int] = typer.Option(None, "--cpus", help="CPUs of the node (default: this machine's)."),
         gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs of the node (default: this machine's)."),
         memory: Optional[float] = typer.Option(None, "--memory", help="Memory of the node, GB (default: this "
                                                "machine's available memory)."),
         disk: Optional[float] = typer.Option(None, "--disk", help="Free disk for the feature cache, GB (default: "
                                              "free space in PCLSIM_CACHE_DIR or ~/.cache/pclsim)."),
         calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration file (default: "
                                                   "PCLSIM_PLAN_CALIBRATION, else the bundled one)."),
         as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
         debug: bool = typer.Option(False, "--debug")):
    """Predict each stage's time, peak memory and disk on a node before running; exit 2 if it will not fit."""
    _DEBUG["on"] = debug

    def _run():
        from .plan.command import plan_scenario

        p = plan_scenario(scenario, data_root=data_root, cpus=cpus, gpus=gpus, memory_gb=memory, disk_gb=disk,
                          calibration=calibration)
        if as_json:
            import json

            print(json.dumps(p.as_json(), indent=1, default=str))
        else:
            print(p.text())
        return p

    p = _guard(_run)
    if not p.fits:
        raise typer.Exit(2)


@data_app.command("synth")
def data_synth(out_dir: str = typer.Argument(..., help="Folder to write the BMAD-layout stream into."),
               tasks: Optional[str] = typer.Option(None, "--tasks", help="Number of tasks (1..15: the six BMAD-named domains, then their variants) or comma-separated names."),
               train: int = typer.Option(100, "--train", min=1, help="Normal training images per task."),
               test: int = typer.Option(40, "--test", min=2, help="Test images per task."),
               size: int = typer.Option(224, "--size", help="Image side in pixels (at least 32)."),
               seed: int = typer.Option(0, "--seed", min=0)):
    """Write the built-in synthetic medical stream in the BMAD on-disk layout."""

    def _run():
        from .data import BMAD_TASKS, synthetic_stream, write_bmad_layout
        from .data.bmad import write_synthetic_marker
        from .data.images import MIN_IMAGE_SIZE
        from .data.synthetic import SYNTHETIC_TASKS
        from .errors import DataError

        if size < MIN_IMAGE_SIZE:
            raise DataError(f"--size: must be at least {MIN_IMAGE_SIZE}, got {size}")
        names = list(BMAD_TASKS)
        if tasks:
            if tasks.isdigit():
                n = int(tasks)
                if not 1 <= n <= len(SYNTHETIC_TASKS):
                    raise DataError(f"--tasks: expected 1..{len(SYNTHETIC_TASKS)}, got {n}")
                names = list(SYNTHETIC_TASKS[:n])
            else:
                names = [t.strip() for t in tasks.split(",") if t.strip()]
                bad = [t for t in names if t not in SYNTHETIC_TASKS]
                if bad:
                    raise DataError(f"--tasks: unknown task {bad[0]!r} (valid: {', '.join(SYNTHETIC_TASKS)})")
        stream = synthetic_stream(tuple(names), train=train, test=test, size=size, seed=seed)
        write_bmad_layout(stream, out_dir, size)
        write_synthetic_marker(out_dir, {"tasks": names, "train": train, "test": test, "size": size, "seed": seed})
        print(f"wrote {len(stream)} tasks to {out_dir}")

    _guard(_run)


@app.command()
def report(results_dir: str = typer.Argument(..., help="A sweep's results folder."),
           metric: str = typer.Option("image_f1", "--metric", help="Metric of the heatmaps and curves."),
           debug: bool = typer.Option(False, "--debug")):
    """Write RESULTS_DIR/report/index.html with PNG figures and Table 1."""
    _DEBUG["on"] = debug

    def _run():
        from .report import build_report

        print(build_report(results_dir, metric=metric))

    _guard(_run)


@app.command()
def show(results_dir: str = typer.Argument(..., help="A sweep's results folder."),
         metric: str = typer.Option("image_f1", "--metric", help="Metric of the summary table."),
         debug: bool = typer.Option(False, "--debug")):
    """Print what a results folder holds, its summary (undefined values as undefined) and how to open it."""
    _DEBUG["on"] = debug

    def _run():
        from .report.show import show_text

        print(show_text(results_dir, metric=metric))

    _guard(_run)


def _click_exceptions():
    """The exception classes typer raises: its own copy of click (typer >= 0.2x vendors it) or click's."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def main():
    ex = _click_exceptions()
    try:
        code = app(standalone_mode=False)
    except ex.UsageError as e:  # a missing argument, a bad option value: one line too
        if type(e).__name__ == "NoArgsIsHelpError":
            e.show()
            sys.exit(e.exit_code)
        where = e.ctx.command_path if e.ctx is not None else "pclsim"
        print(f"error: {where}: {' '.join(e.format_message().split())} (see {where} --help)", file=sys.stderr)
        sys.exit(2)
    except getattr(ex, "Abort", KeyboardInterrupt):  # typer's own copy of click has no Abort
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # an unexpected failure: still one line unless --debug
        if _DEBUG["on"] or "--debug" in sys.argv:
            raise
        print(f"error: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
