"""`pclsim plan SCENARIO.yaml`: the scenario, its sizes, the node, the calibration -> a Plan (no Ray, no decoding)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import PclsimError
from .predict import GB, Node

__all__ = ["this_node", "scenario_sizes", "plan_scenario"]


def _available_memory() -> float:
    """Bytes of memory available to new processes (MemAvailable), else the total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _free_disk(path: Path) -> tuple[float, str]:
    """(bytes free, folder) on the file system `path` is (or would be created) on."""
    p = Path(path).expanduser().resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return float(shutil.disk_usage(p).free), str(Path(path).expanduser())


def _gpu_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # no usable CUDA: a CPU node
        return 0


def this_node(cpus: int | None = None, gpus: int | None = None, memory_gb: float | None = None,
              disk_gb: float | None = None, cache_dir=None) -> Node:
    """The node a plan is for: each of cpus, gpus, memory (GB), disk (GB) as given, else this machine's (its
    usable CPUs, CUDA devices, available memory, free disk in the feature cache folder `cache_dir`, by
    default $PCLSIM_CACHE_DIR or ~/.cache/pclsim). Raises PclsimError for a value below its minimum."""
    from ..store.cache import default_cache_dir

    for flag, v, low in (("--cpus", cpus, 1), ("--gpus", gpus, 0), ("--memory", memory_gb, 1e-9),
                         ("--disk", disk_gb, 0)):
        if v is not None and v < low:
            raise PclsimError(f"{flag}: must be at least {0 if low < 1 else low}, got {v}")
    free, folder = _free_disk(cache_dir or default_cache_dir())
    return Node(cpus=int(cpus) if cpus is not None else len(os.sched_getaffinity(0)),
                gpus=int(gpus) if gpus is not None else _gpu_count(),
                memory=float(memory_gb) * GB if memory_gb is not None else _available_memory(),
                disk=float(disk_gb) * GB if disk_gb is not None else free, disk_path=folder)


def scenario_sizes(sc: dict, data_root_given: bool):
    """The study's Sizes: the files listed where the data can be read (synthetic data, --data-root, or an existing
    dataset.root), else the scenario's caps (max_train / max_test). Raises PclsimError (DataError) for data that
    cannot be listed and caps that are not set."""
    from ..core.thresholds import needs_validation
    from ..data import get_dataset_kind, load_stream
    from ..runner.memory import backbone_profile
    from .work import sizes_from_caps, sizes_from_stream

    ds, m = sc["dataset"], sc["model"]
    profile = backbone_profile(m["backbone"], m.get("layers"), ds["image_size"])
    if not get_dataset_kind(ds["kind"]).needs_root or data_root_given or Path(str(ds["root"])).is_dir():
        stream = load_stream(ds, ds["root"], validation=needs_validation(sc))
        if ds["tasks"] is None:
            from ..study.scenario import resolve

            sc["dataset"]["tasks"] = [t.name for t in stream]
            sc.update(resolve(sc, "<scenario>"))
        return sizes_from_stream(sc, stream, profile)
    return sizes_from_caps(sc, profile)


def plan_scenario(path, data_root=None, cpus=None, gpus=None, memory_gb=None, disk_gb=None, calibration=None):
    """The Plan of the scenario file `path` on the node the arguments describe (`this_node`), with the calibration
    file `calibration` (`pclsim.plan.calibration.calibration_path`). Raises PclsimError (ScenarioError,
    DataError, ModelError) for bad input, naming the file or key."""
    from ..study.scenario import load_scenario
    from .calibration import load_calibration
    from .predict import make_plan

    sc = load_scenario(path, data_root=data_root)
    cal = load_calibration(calibration)
    node = this_node(cpus, gpus, memory_gb, disk_gb)
    sizes = scenario_sizes(sc, data_root is not None)
    return make_plan(sc, sizes, cal, node)
