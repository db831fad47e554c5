"""Backbone loading and PatchCore patch features, checked against references built here from plain ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pclsim.core.backbones import (DEFAULT_LAYERS, architecture_mb, bundled_weights_path, load_backbone, resolve_layers)
from pclsim.errors import ModelError
from pclsim.core.features import FeatureExtractor, _HookBody, truncated_body


@pytest.fixture(scope="module")
def lite0():
    return FeatureExtractor("efficientnet_lite0", "bundled", image_size=224, device="cpu", batch_size=32)


@pytest.fixture(scope="module")
def small():
    return FeatureExtractor("efficientnet_lite0", "bundled", image_size=64, device="cpu", batch_size=32)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 224, 224, generator=g)


@pytest.fixture(scope="module")
def images64():
    g = torch.Generator().manual_seed(2)
    return torch.randn(3, 3, 64, 64, generator=g)


@pytest.fixture(scope="module")
def ckpt():
    return torch.load(bundled_weights_path(), map_location="cpu", weights_only=True)


def _ref_box3(a: np.ndarray) -> np.ndarray:
    """3x3 mean with zeros outside, stride 1, by summing the nine shifted copies."""
    B, C, H, W = a.shape
    p = np.zeros((B, C, H + 2, W + 2), np.float64)
    p[:, :, 1:-1, 1:-1] = a
    return sum(p[:, :, dy:dy + H, dx:dx + W] for dy in range(3) for dx in range(3)) / 9.0


def _ref_bilinear(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (align_corners=False), edge-clamped."""
    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0
    y0, y1, fy = axis(a.shape[2], h)
    x0, x1, fx = axis(a.shape[3], w)
    top = a[:, :, y0][:, :, :, x0] * (1 - fx) + a[:, :, y0][:, :, :, x1] * fx
    bot = a[:, :, y1][:, :, :, x0] * (1 - fx) + a[:, :, y1][:, :, :, x1] * fx
    return top * (1 - fy)[:, None] + bot * fy[:, None]


def _hooked_levels(model, layers, x):
    """Intermediate outputs of the FULL model's forward, captured by hooks."""
    mods = dict(model.named_modules())
    got = {}
    hs = [mods[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o.detach().double().numpy()))
          for n in layers]
    with torch.no_grad():
        logits = model(x)
    for h in hs:
        h.remove()
    return [got[n] for n in layers], logits


# ---------------------------------------------------------------- weights

def test_bundled_checkpoint_fully_loaded_in_order(small, ckpt):
    msd = small.model.state_dict()
    assert len(ckpt) == 296 and len(msd) == 296
    for (mk, mv), (ck, cv) in zip(msd.items(), ckpt.items()):
        assert torch.equal(mv, cv), (mk, ck)
    # the names really differ, so this was the in-order fallback doing its job
    assert list(msd)[0] != list(ckpt)[0]


def test_bundled_differs_from_seeded_random_init(small, images64):
    rnd = FeatureExtractor("efficientnet_lite0", "none", image_size=64, device="cpu")
    rnd2, _ = load_backbone("efficientnet_lite0", "none")
    for a, b in zip(rnd.model.state_dict().values(), rnd2.state_dict().values()):
        assert torch.equal(a, b)  # seeded: reproducible
    fb, fr = small.embed(images64), rnd.embed(images64)
    assert torch.equal(fb, small.embed(images64))  # deterministic
    assert (fb - fr).abs().mean() > 0.1 * fb.abs().mean()
    with torch.no_grad():
        lb, lr = small.model(images64), rnd.model(images64)
    assert not torch.allclose(lb, lr, atol=1e-2)
    # trained batch-norm statistics, not the init's ones
    assert not torch.allclose(small.model.bn1.running_var, torch.ones_like(small.model.bn1.running_var))


# ---------------------------------------------------------------- features

def test_embed_shape_and_matches_reference(lite0, images):
    assert lite0.dim == 152 and lite0.grid == (28, 28) and lite0.channels == (40, 112)
    # every convolution is a leaf module in both the FX and the hook body, so hooks on them see what runs
    called = []
    hs = [m.register_forward_hook(lambda *a, n=n: called.append(n))
          for n, m in lite0.model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        feats = lite0.embed(images)
    finally:
        for h in hs:
            h.remove()
    assert "blocks.4.2.conv_pwl" in called  # the deepest needed layer ran ...
    assert not [n for n in called if n.startswith(("blocks.5", "blocks.6", "conv_head"))]  # ... and nothing after it
    assert feats.shape == (2, 784, 152) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert not feats.is_inference()

    (l2, l4), _ = _hooked_levels(lite0.model, ("blocks.2", "blocks.4"), images)
    assert l2.shape[1:] == (40, 28, 28) and l4.shape[1:] == (112, 14, 14)
    ref = np.concatenate([_ref_box3(l2), _ref_bilinear(_ref_box3(l4), 28, 28)], axis=1)  # (B, D, 28, 28)
    ref = ref.transpose(0, 2, 3, 1).reshape(2, 784, 152)  # patch index = row * 28 + col
    np.testing.assert_allclose(feats.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_embed_chunks_by_batch_size(small, images64, monkeypatch):
    whole = small.embed(images64)
    monkeypatch.setattr(small, "batch_size", 2)
    np.testing.assert_allclose(small.embed(images64).numpy(), whole.numpy(), rtol=1e-5, atol=1e-5)


def test_reference_bilinear_agrees_with_torch_on_odd_sizes():
    # guards the test's own reference, so the comparison above means something
    a = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    t = torch.nn.functional.interpolate(a, size=(13, 11), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(_ref_bilinear(a.numpy(), 13, 11), t.numpy(), atol=1e-12)


def test_hook_fallback_body_equals_fx_body_and_stops_early(small, images64):
    layers = ("blocks.2", "blocks.4")
    fx = truncated_body(small.model, layers)
    hb = _HookBody(small.model, layers)
    ran = []
    h = small.model.blocks[5][0].conv_pw.register_forward_hook(lambda *a: ran.append(1))
    try:
        with torch.no_grad():
            a, b = fx(images64), hb(images64)
    finally:
        h.remove()
    assert not ran
    for n in layers:
        assert torch.allclose(a[n], b[n], atol=1e-6)


def test_extract_collects_batches(small, images64):
    lite0, images = small, images64
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[1, 10:20, 30:40] = True
    labels = torch.tensor([0, 1, 0])
    batches = [(images[:2], masks[:2], labels[:2]), (images[2:], masks[2:], labels[2:])]
    f, m, y = lite0.extract(iter(batches))
    assert f.dtype == np.float32 and f.shape == (3, 64, 152)
    assert m.dtype == bool and m.shape == (3, 64, 64) and np.array_equal(m, masks.numpy())
    assert y.dtype == np.int64 and y.tolist() == [0, 1, 0]
    np.testing.assert_allclose(f, lite0.embed(images).numpy(), atol=1e-5)
    f2, _, _ = lite0.extract(iter(batches), total=3)
    np.testing.assert_array_equal(f2, f)
    with pytest.raises(ValueError):
        lite0.extract(iter(batches), total=2)
    f0, m0, y0 = lite0.extract(iter([]))
    assert f0.shape == (0, 64, 152) and m0.shape == (0, 64, 64) and y0.shape == (0,)


def test_wide_resnet_random_init_small_images():
    fe = FeatureExtractor("wide_resnet50_2", "none", image_size=64, device="cpu")
    assert fe.layers == ("layer2", "layer3") and fe.dim == 1536 and fe.grid == (8, 8)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    f = fe.embed(x)
    assert f.shape == (1, 64, 1536) and torch.isfinite(f).all()
    # the paper's 'Arch. Mem' is every parameter of WRN50-2 in float32: 68,883,240 x 4 bytes
    assert sum(p.numel() for p in fe.model.parameters()) == 68_883_240
    assert architecture_mb(fe.model) == pytest.approx(275.53296, abs=1e-6)


def test_architecture_mb_counts_parameters_only():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))  # 16 + 8 params, BN buffers not counted
    assert architecture_mb(m) == pytest.approx(24 * 4 / 1e6)


def test_default_layers_follow_stride_8_and_16(small):
    assert resolve_layers(small.model, "some_unlisted_name", None) == DEFAULT_LAYERS["efficientnet_lite0"]

    class NoStride8(torch.nn.Module):
        feature_info = [{"module": "a", "reduction": 16, "num_chs": 8}]

        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 8, 3)

    with pytest.raises(ModelError, match="stride-8/16"):
        resolve_layers(NoStride8(), "vitlike", None)


# ---------------------------------------------------------------- errors

def test_bad_layer_name_lists_valid_ones():
    with pytest.raises(ModelError) as e:
        load_backbone("efficientnet_lite0", "none", ("blocks.2", "blocks.9"))
    msg = str(e.value)
    assert "'blocks.9'" in msg and "efficientnet_lite0" in msg
    assert all(f"blocks.{i}" in msg for i in range(7)) and "\n" not in msg


def test_non_spatial_layer_is_refused():
    with pytest.raises(ModelError, match="global_pool"):
        FeatureExtractor("efficientnet_lite0", "none", ("blocks.2", "global_pool"), image_size=64, device="cpu")


def test_weights_errors(tmp_path, ckpt):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ModelError, match="nope.pth"):
        load_backbone("efficientnet_lite0", str(missing))
    with pytest.raises(ModelError, match="use weights: none or a path"):
        load_backbone("wide_resnet50_2", "bundled")
    with pytest.raises(ModelError, match="unknown timm backbone 'no_such_net'"):
        load_backbone("no_such_net", "none")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="garbage.pth"):
        load_backbone("efficientnet_lite0", str(garbage))

    # same names as timm, one tensor the wrong shape
    model, _ = load_backbone("efficientnet_lite0", "none")
    sd = dict(model.state_dict())
    sd["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    bad = tmp_path / "bad_named.pth"
    torch.save(sd, bad)
    with pytest.raises(ModelError, match=r"conv_stem\.weight.*\(16, 3, 3, 3\)"):
        load_backbone("efficientnet_lite0", str(bad))

    # foreign names (like the bundled file), one tensor the wrong shape: the in-order fallback says where
    sd = dict(ckpt)
    sd["_bn0.weight"] = torch.zeros(7)
    bad2 = tmp_path / "bad_order.pt"
    torch.save(sd, bad2)
    with pytest.raises(ModelError, match=r"#1 '_bn0\.weight'.*\(7,\)"):
        load_backbone("efficientnet_lite0", str(bad2))


def test_checkpoint_files_load_by_name_and_by_order(tmp_path, ckpt, small):
    from safetensors.torch import save_file

    want = small.model.state_dict()
    # nested + DataParallel prefix + foreign names -> unwrapped, then paired in order
    nested = tmp_path / "nested.pth"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in ckpt.items()}}, nested)
    # timm names in safetensors, without the head and the batch counters -> by name
    named = tmp_path / "named.safetensors"
    save_file({k: v.contiguous() for k, v in want.items()
               if not k.startswith("classifier") and "num_batches" not in k}, str(named))
    for path in (nested, named):
        m, layers = load_backbone("efficientnet_lite0", str(path))
        got = m.state_dict()
        for k, v in want.items():
            if not k.startswith("classifier") and "num_batches" not in k:
                assert torch.equal(got[k], v), (path.name, k)
        assert layers == ("blocks.2", "blocks.4")


# ---------------------------------------------------------------- cache key

def test_cache_key_tracks_what_features_depend_on(small, tmp_path):
    import shutil

    base = small.cache_key()
    assert len(base) == 64 and base == FeatureExtractor(image_size=64, device="cpu").cache_key()
    keys = {
        "layers": FeatureExtractor(layers=("blocks.1", "blocks.3"), image_size=64, device="cpu").cache_key(),
        "weights": FeatureExtractor(weights="none", image_size=64, device="cpu").cache_key(),
        "size": FeatureExtractor(image_size=96, device="cpu").cache_key(),
    }
    assert len({base, *keys.values()}) == 4
    # a weights file is identified by its content, not its name
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    sd = dict(small.model.state_dict())
    torch.save(sd, a)
    shutil.copy(a, b)
    ka = FeatureExtractor(weights=str(a), image_size=64, device="cpu").cache_key()
    assert ka not in {base, *keys.values()}
    assert FeatureExtractor(weights=str(b), image_size=64, device="cpu").cache_key() == ka
    sd["conv_stem.weight"] = sd["conv_stem.weight"] + 1
    torch.save(sd, b)
    assert FeatureExtractor(weights=str(b), image_size=64, device="cpu").cache_key() != ka
