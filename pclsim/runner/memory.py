"""How much host memory the sweep's actors and jobs need: Ray `memory=` requests and the extractor pool size.

Ray only schedules by what is requested: without a `memory=` request, one extractor per CPU of a
WideResNet50-2 at batch 32 (1-2 GB each) can outgrow a node, and Ray's memory monitor then kills
workers. Each estimate here is in bytes and errs on the generous side; the measured coefficients
say where they come from.
"""

from __future__ import annotations

import math

__all__ = ["WORKER_BASE_BYTES", "ACTIVATION_FACTOR", "backbone_profile", "extractor_memory_bytes",
           "extractor_pool_size", "table_memory_bytes", "selection_memory_bytes", "extractor_plan", "JobMemory",
           "job_memory", "gib"]

# RSS of a process that has imported torch, timm and pclsim (measured: 0.73 GB with torch 2.14's CUDA
# wheel on Linux x86-64, most of it the mapped CUDA libraries; CPU-only wheels need less).
WORKER_BASE_BYTES = 768 * 2**20
# Peak live activations of an inference forward relative to the largest (input + output) of one
# module plus the kept feature levels: allocator slack and oneDNN's reordered copies of channels-last
# tensors. Measured on efficientnet_lite0 (64, 128, 224 px; batch 16-32) and resnet18 (224 px, batch 16)
# as peak RSS minus the RSS before the first batch, on the CPU: 1.08-1.27; 1.5 is used.
ACTIVATION_FACTOR = 1.5
_GIB = 2**30


def backbone_profile(backbone: str, layers, image_size: int) -> dict:
    """Sizes of a backbone's truncated forward at `image_size`, found on PyTorch's "meta" device (shapes
    only: no weights loaded, no arithmetic done).

    Returns {"params": number of parameters of the whole model (all of it is held in memory),
    "peak_module_bytes": largest input + output of one module for ONE image, float32 bytes,
    "levels_bytes": the kept feature levels of one image, float32 bytes, "grid": (h, w), "dim": D,
    "macs": multiply-adds of the truncated forward for ONE image (convolutions and linear layers; the
    unit `pclsim plan` times extraction in)}.
    Raises ModelError for an unknown backbone or layer.
    """
    import torch

    from ..core.backbones import _create, resolve_layers
    from ..core.features import truncated_body

    with torch.device("meta"):
        net = _create(backbone)
    names = resolve_layers(net, backbone, layers)
    body = truncated_body(net, names)
    peak, macs = [0], [0]

    def nbytes(x):
        if isinstance(x, torch.Tensor):
            return x.numel() * 4
        if isinstance(x, (tuple, list)):
            return sum(nbytes(v) for v in x)
        if isinstance(x, dict):
            return sum(nbytes(v) for v in x.values())
        return 0

    def hook(m, inp, out):
        peak[0] = max(peak[0], nbytes(inp) + nbytes(out))
        if isinstance(m, torch.nn.Conv2d):  # each output element: in_channels / groups x kernel area products
            macs[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            macs[0] += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    try:
        out = body(torch.zeros(1, 3, int(image_size), int(image_size), device="meta"))
    finally:
        for h in handles:
            h.remove()
    maps = [out[n][0] if isinstance(out[n], (tuple, list)) else out[n] for n in names]
    grid = max((tuple(int(v) for v in m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
    return {"params": sum(p.numel() for p in net.parameters()), "peak_module_bytes": peak[0],
            "levels_bytes": sum(m.numel() * 4 for m in maps), "grid": grid,
            "dim": sum(int(m.shape[1]) for m in maps), "macs": int(macs[0])}


def extractor_memory_bytes(profile: dict, image_size: int, batch_size: int, on_gpu: bool = False) -> int:
    """Host memory (bytes) one feature-extractor actor needs at its peak, from `backbone_profile`.

    = the worker's own footprint (WORKER_BASE_BYTES) + the weights twice (float32: the model and the
    checkpoint's state dict while it loads) + one batch: its images (B x 3 x S x S float32, and the
    decoded masks), the activations (ACTIVATION_FACTOR x (largest module input + output + the kept
    levels)) and the output block (B x P x D float32 and its float16 copy, written per batch). On a GPU
    the activations live in device memory and are left out.
    """
    B, S = int(batch_size), int(image_size)
    h, w = profile["grid"]
    weights = 2 * 4 * profile["params"]
    images = B * (3 * S * S * 4 + S * S)
    act = 0 if on_gpu else ACTIVATION_FACTOR * B * (profile["peak_module_bytes"] + profile["levels_bytes"])
    block = B * h * w * profile["dim"] * (4 + 2)
    return int(WORKER_BASE_BYTES + weights + images + act + block)


def extractor_pool_size(slots: int, memory_bytes: float, per_actor: int) -> int:
    """How many extractor actors to start: min(slots (GPUs, else CPUs), memory_bytes / per_actor), at least 1.

    memory_bytes: Ray's `memory` resource of the cluster (what it lets tasks and actors request)."""
    by_memory = int(memory_bytes // per_actor) if per_actor > 0 else slots
    return max(1, min(int(slots), by_memory))


def table_memory_bytes(candidates: int, dim: int, test_patches: int, k: int, chunk_patches: int,
                       stored: bool = True) -> int:
    """Host memory (bytes) of one candidate-table job: the worker (WORKER_BASE_BYTES), the source's
    candidate vectors (candidates x dim float32, and a float16 read of them), one query chunk
    (chunk_patches x dim float32), the distance block of one GEMM to every candidate (knn's
    `query_chunk(candidates, K, dim)` queries, at most chunk_patches, x candidates float32, twice: the
    distances and their partial sort, and those queries centred, block x D x 4, and their top-K, block x K x 12)
    and the chunk's lists (chunk_patches x K x (int32 + float32));
    stored=False: the whole table in memory (test_patches x min(k, candidates) x 8 bytes), as for tasks not
    read from the feature store (the table then travels through Ray's object store)."""
    from ..core.knn import query_chunk

    k = min(int(k), int(candidates))
    lists = (test_patches if not stored else chunk_patches) * k * 8
    block = min(int(chunk_patches), query_chunk(int(candidates), k, int(dim)))
    return int(WORKER_BASE_BYTES + candidates * dim * 6 + lists + chunk_patches * dim * 4
               + 2 * block * candidates * 4 + block * (dim * 4 + k * 12))


def selection_memory_bytes(patches: int, dim: int, projection_dim: int) -> int:
    """Host memory (bytes) of one selection (greedy k-center) job: the worker, one block of the source's
    patches read as float32 (pclsim.core.coreset: 32 MiB, and its float16 read), their projection (patches x
    projection_dim float32, twice while it is centred) and the squared norms and distances to the selected
    set (patches float32, twice). The patches themselves are streamed, never held (a pooled or joint source
    through a row view of the store): dim only bounds the block (a block holds at least 256 rows)."""
    block = max(32 << 20, 256 * int(dim) * 4)
    return int(WORKER_BASE_BYTES + block * 3 // 2 + patches * (2 * projection_dim * 4 + 8))


def gib(nbytes: float) -> str:
    """'1.23 GiB' for a byte count."""
    return f"{nbytes / _GIB:.2f} GiB"


def round_up_mb(nbytes: float) -> int:
    """A memory request in bytes, rounded up to a whole MiB (Ray takes integer bytes)."""
    return int(math.ceil(nbytes / 2**20)) * 2**20


def _largest_node_memory(ray) -> float:
    """Ray's `memory` resource of the largest alive node, in bytes (what one actor or task can be granted)."""
    sizes = [n.get("Resources", {}).get("memory", 0) for n in ray.nodes() if n.get("Alive")]
    return float(max(sizes or [ray.cluster_resources().get("memory", 0)]))


def extractor_plan(ray, sc: dict, gpus: int) -> dict:
    """The extractor pool of a sweep: {"request_bytes": Ray `memory=` of one extractor actor (rounded up to a
    MiB), "estimate_gib", "extractors": how many (`extractor_pool_size` over GPUs, else CPUs, and the
    cluster's `memory` resource), "by_slots", "by_memory"}.

    Raises PclsimError when one extractor needs more than the largest node offers (Ray would never place
    it and the sweep would wait for ever), naming model.batch_size and dataset.image_size."""
    from ..errors import PclsimError

    m, S = sc["model"], int(sc["dataset"]["image_size"])
    batch = int(m.get("batch_size", 32))
    profile = backbone_profile(m["backbone"], m.get("layers"), S)
    need = round_up_mb(extractor_memory_bytes(profile, S, batch, on_gpu=bool(gpus)))
    largest = _largest_node_memory(ray)
    if largest and need > largest:
        raise PclsimError(f"model.batch_size {batch}: one feature extractor of {m['backbone']} at {S} px needs about "
                          f"{gib(need)} of memory, the largest Ray node offers {gib(largest)} (Ray's memory "
                          "resource): lower model.batch_size or dataset.image_size, or use larger nodes")
    res = ray.cluster_resources()
    slots = max(1, int(gpus) if gpus else int(res.get("CPU", 1)))
    total = float(res.get("memory", 0)) or need * slots
    n = extractor_pool_size(slots, total, need)
    return {"request_bytes": need, "estimate_gib": round(need / _GIB, 3), "extractors": n, "by_slots": slots,
            "by_memory": int(total // need)}


class JobMemory:
    """Ray `memory=` requests (bytes, rounded up to a MiB, at most the largest node's memory) of the bank
    stage's jobs, from the tasks' feature shapes (store handles: nothing is read)."""

    def __init__(self, tasks: dict, coreset: dict, largest: float):
        first = next(iter(tasks.values()))
        self.dim = int(first.dim)
        self.train = {n: int(tf.train.shape[0]) for n, tf in tasks.items()}
        self.test = {n: int(tf.test.shape[0]) * int(tf.test.shape[1]) for n, tf in tasks.items()}
        self.per_image = int(first.test.shape[1])
        self.coreset = coreset
        self.largest = largest
        # tasks read from the feature store: their candidate tables go to the store too (stored_table)
        self.stored = all(getattr(tf, "ref", None) is not None for tf in tasks.values())

    def _cap(self, nbytes: float) -> int:
        need = round_up_mb(nbytes)
        return int(min(need, self.largest)) if self.largest else need

    @staticmethod
    def _tasks_of(source: tuple) -> list:
        what = source[1]
        return [what] if isinstance(what, str) else list(what)

    def _patches(self, sources) -> int:
        return sum(self.train.get(t, 0) for t in {t for s in sources for t in self._tasks_of(s)})

    def _pdim(self, patches: int) -> int:
        from ..core.coreset import resolve_projection_dim

        if self.coreset.get("projection", "jl") != "jl":
            return self.dim
        d, _ = resolve_projection_dim(self.coreset.get("projection_dim", "auto"), max(patches, 2))
        return int(d or self.dim)

    def selection(self, key: tuple) -> int:
        """A selection order (kind, what, arrival): greedy k-center over its source's training patches."""
        from ..study.banks import selection_source

        n = self._patches([selection_source(key)])
        return self._cap(selection_memory_bytes(n, self.dim, self._pdim(n)))

    def banks(self, refs) -> int:
        """A joint / pool bank job: the selections over all its banks' sources together."""
        from ..study.banks import bank_sources

        n = self._patches([s for r in refs for s in bank_sources(r)])
        return self._cap(selection_memory_bytes(n, self.dim, self._pdim(n)))

    def table(self, needs, source: tuple) -> int:
        """The candidate table of `source`: its planned candidates (the selections' longest prefixes) against
        every task's test patches."""
        from ..core.candidates import DEFAULT_K
        from ..study.banks import selection_source

        c = sum(v for k, v in needs.sizes.items() if k[0] != "joint" and selection_source(k) == source)
        return self._cap(table_memory_bytes(max(c, 1), self.dim, sum(self.test.values()), DEFAULT_K,
                                            64 * self.per_image, self.stored))


def job_memory(ray, tasks: dict, coreset: dict) -> JobMemory:
    """The bank stage's memory requests on this cluster (`JobMemory`); tasks: {name: TaskFeatures}."""
    return JobMemory(tasks, coreset, _largest_node_memory(ray))
