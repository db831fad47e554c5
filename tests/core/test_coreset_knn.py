"""greedy_coreset and knn against naive references written here."""

import numpy as np
import pytest
import torch

from pclsim.coreset import greedy_coreset, jl_dim, project, sparse_projection
from pclsim.core.knn import faiss_available, knn, nn_distances


def naive_greedy(z: np.ndarray, k: int, start: int = 0) -> list[int]:
    """Textbook greedy k-center: python loop, float64, explicit Euclidean distances."""
    z = z.astype(np.float64)
    sel = [start]
    mind = np.linalg.norm(z - z[start], axis=1)
    for _ in range(k - 1):
        mind[sel] = -1
        nxt = int(np.argmax(mind))
        sel.append(nxt)
        mind = np.minimum(mind, np.linalg.norm(z - z[nxt], axis=1))
    return sel


@pytest.fixture(params=["plain", "lazy"])
def form(request, monkeypatch):
    """Both CPU forms of greedy_coreset: the plain one pass per pick, and the lazy block form
    (coreset._greedy_lazy, taken above LAZY_MIN_POINTS points: here forced, with blocks of 64 points)."""
    from pclsim.core import coreset

    if request.param == "lazy":
        monkeypatch.setattr(coreset, "LAZY_MIN_POINTS", 0)
        monkeypatch.setattr(coreset, "LAZY_BLOCK", 64)
    return request.param


@pytest.fixture
def blobs():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(12, 40)) * 5
    x = centers[rng.integers(0, 12, 600)] + rng.normal(size=(600, 40))
    # values a float16 store can hold: greedy_coreset reads features at float16 precision
    # (SELECTION_INPUT), so on these the naive references below see exactly what it sees
    return x.astype(np.float16).astype(np.float32)


def test_greedy_matches_naive_loop_in_projected_space(blobs, form):
    k = 60
    got = greedy_coreset(blobs, k, projection_dim=16, seed=3, device="cpu")
    z = project(blobs, 16, seed=3, device="cpu").numpy()
    assert got.dtype == np.int64 and got.tolist() == naive_greedy(z, k)


def test_auto_projection_wider_than_features_selects_as_in_projected_space(blobs, form):
    """JL "auto" on 600 points is ~158 dims > D = 40: the selection runs in the D-dim isometric image
    (isometric_basis), which must select exactly what the naive loop selects in the full projection."""
    k = 80
    got = greedy_coreset(blobs, k, projection_dim="auto", seed=5, device="cpu")
    z = project(blobs, jl_dim(len(blobs)), seed=5, device="cpu", force=True).numpy()
    assert z.shape[1] > blobs.shape[1]
    assert got.tolist() == naive_greedy(z, k)
    zc = project(blobs, jl_dim(len(blobs)), seed=5, device="cpu", force=True, compact=True).numpy()
    assert zc.shape == blobs.shape
    d_full = np.linalg.norm(z[:50, None].astype(np.float64) - z[None, :200], axis=-1)
    d_compact = np.linalg.norm(zc[:50, None].astype(np.float64) - zc[None, :200], axis=-1)
    np.testing.assert_allclose(d_compact, d_full, rtol=1e-4, atol=1e-3)


def test_greedy_without_projection_matches_naive(blobs, form):
    got = greedy_coreset(blobs, 50, projection_dim=None, device="cpu")
    assert got.tolist() == naive_greedy(blobs, 50)
    assert len(set(got.tolist())) == 50 and got[0] == 0


def test_float32_and_float16_copies_select_the_same_coreset(form):
    """Near-ties below float16 resolution: the float32 values order them, a float16 store cannot, and
    greedy choices cascade. Reading at float16 precision makes both stores pick the same patches."""
    rng = np.random.default_rng(7)
    base = rng.normal(size=(40, 24)).astype(np.float16).astype(np.float32)
    x32 = (np.repeat(base, 50, axis=0) * (1 + rng.uniform(-2e-5, 2e-5, size=(2000, 1)))).astype(np.float32)
    x16 = x32.astype(np.float16)
    assert not np.array_equal(x32, x16.astype(np.float32))
    a = greedy_coreset(x32, 60, projection_dim=None, device="cpu")
    np.testing.assert_array_equal(a, greedy_coreset(x16, 60, projection_dim=None, device="cpu"))
    np.testing.assert_array_equal(greedy_coreset(x32, 60, projection_dim=16, seed=2, device="cpu"),
                                  greedy_coreset(x16, 60, projection_dim=16, seed=2, device="cpu"))
    # the premise: at full precision the two copies select differently
    assert naive_greedy(x32, 60) != naive_greedy(x16.astype(np.float32), 60)


def test_prefix_property(blobs, form):
    order = greedy_coreset(blobs, 100, projection_dim=16, seed=0, device="cpu")
    sub = blobs[order]
    for k in (10, 37, 100):
        again = greedy_coreset(sub, k, projection_dim=16, seed=0, device="cpu")
        assert again.tolist() == list(range(k))  # re-reducing the coreset = truncating it


def test_lazy_form_picks_what_the_plain_form_picks_on_many_blocks(monkeypatch):
    """The lazy block form against the plain form on 6,000 points in 47 blocks of 128 (every block stale many
    times): the same picks up to a near-tie that float32 cannot order (both forms compute each distance
    in float32, with dot products summed in another order), and the naive float64 loop's on the first picks."""
    from pclsim.core import coreset

    rng = np.random.default_rng(3)
    x = (rng.normal(size=(30, 64)) * 4)[rng.integers(0, 30, 6000)] + rng.normal(size=(6000, 64))
    x = x.astype(np.float16).astype(np.float32)
    z = torch.from_numpy(project(x, 32, seed=1, device="cpu").numpy())
    z = z - z.mean(0)
    sq = z.pow(2).sum(1)
    lazy = coreset._greedy_lazy(z.contiguous(), sq, 1500, 7, block=128)
    monkeypatch.setattr(coreset, "LAZY_MIN_POINTS", 10**9)  # the plain form
    plain = greedy_coreset(x, 1500, projection_dim=32, seed=1, device="cpu", start=7)
    assert lazy[:300].tolist() == naive_greedy(z.numpy(), 300, start=7)
    assert len(set(lazy.tolist())) == 1500
    same = int(np.argmax(lazy != plain)) if np.any(lazy != plain) else len(lazy)
    assert same >= 300
    if same < len(lazy):  # where they part, the two picks are equally far within float32 rounding
        zd = z.double()
        d = torch.cdist(zd[[int(lazy[same]), int(plain[same])]], zd[lazy[:same]]).pow(2).min(1).values
        assert abs(float(d[0] - d[1])) <= 1e-6 * float(sq.max())


def test_greedy_accepts_tensor_and_validates(blobs, form):
    t = torch.from_numpy(blobs)
    assert greedy_coreset(t, 5, device="cpu").tolist() == greedy_coreset(blobs, 5, device="cpu").tolist()
    with pytest.raises(ValueError):
        greedy_coreset(blobs[0], 3)
    with pytest.raises(ValueError):
        greedy_coreset(blobs, 0)
    assert len(greedy_coreset(blobs[:4], 10, device="cpu")) == 4


def test_projection_is_seeded_sparse_and_norm_preserving():
    a, b = sparse_projection(152, 128, 0), sparse_projection(152, 128, 0)
    assert torch.equal(a, b) and not torch.equal(a, sparse_projection(152, 128, 1))
    assert (a == 0).float().mean() > 0.8  # density 1/sqrt(152) ~ 0.08
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 152)).astype(np.float32)
    z = project(x, 128, seed=0, device="cpu").numpy()
    ratio = np.linalg.norm(z, axis=1) / np.linalg.norm(x, axis=1)
    assert 0.8 < ratio.mean() < 1.2
    assert 150 < jl_dim(1000) < 400


def brute(q, b, k):
    d = np.sqrt(((q[:, None, :].astype(np.float64) - b[None].astype(np.float64)) ** 2).sum(-1))
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, 1), idx


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_agrees_with_brute_force(backend):
    if backend == "faiss" and not faiss_available():
        pytest.skip("faiss not installed")
    rng = np.random.default_rng(0)
    q = rng.normal(size=(300, 24)).astype(np.float32)
    b = rng.normal(size=(500, 24)).astype(np.float32)
    d, i = knn(q, b, 3, backend=backend, device="cpu")
    rd, ri = brute(q, b, 3)
    np.testing.assert_allclose(d, rd, rtol=1e-4, atol=1e-4)
    assert (i == ri).mean() > 0.99  # ties in float32 may swap
    d1, i1 = nn_distances(q, b, backend=backend, device="cpu")
    np.testing.assert_allclose(d1, rd[:, 0], rtol=1e-4, atol=1e-4)


def test_knn_blocks_of_queries_agree_with_brute_force(monkeypatch):
    """Blocks of query_chunk queries (the last one partial; the limits scaled down so a small bank needs
    several): every block's lists equal a float64 brute force, for k = 5 and the k = 1 re-measure."""
    import pclsim.core.knn as knn_module
    from pclsim.core.knn import query_chunk

    assert query_chunk(70_000, 5, 8) == 256  # the floor: 2^24 / 70,000 is smaller
    assert query_chunk(30_000, 64, 1536) == (1 << 24) // 30_000
    assert query_chunk(1000, 1, 1536) == (1 << 22) // 1536  # k = 1: the gather of one vector a query bounds it
    monkeypatch.setattr(knn_module, "_MIN_CHUNK", 16)
    monkeypatch.setattr(knn_module, "_CHUNK_ELEMS", 16 * 700)
    rng = np.random.default_rng(3)
    b = rng.normal(size=(700, 8)).astype(np.float32)
    assert query_chunk(len(b), 5, 8) == 16
    q = rng.normal(size=(5 * 16 + 7, 8)).astype(np.float32)
    rd, ri = brute(q, b, 5)
    d, i = knn(q, b, 5, backend="torch", device="cpu")
    np.testing.assert_allclose(d, rd, rtol=1e-4, atol=1e-4)
    assert (i == ri).mean() > 0.99  # ties in float32 may swap
    d1, i1 = knn(q, b, 1, backend="torch", device="cpu")
    np.testing.assert_allclose(d1[:, 0], rd[:, 0], rtol=1e-5, atol=1e-5)


def test_knn_input_checks():
    with pytest.raises(ValueError):
        knn(np.zeros((3, 4), np.float32), np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError):
        knn(np.zeros((3, 4), np.float32), np.zeros((2, 4), np.float32), k=3)
    with pytest.raises(ValueError):
        knn(np.zeros((3, 4), np.float32), np.zeros((5, 4), np.float32), backend="nope")


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_distances_exact_far_from_the_origin(backend):
    """Features with a large common offset: the GEMM form alone loses digits to cancellation."""
    if backend == "faiss" and not faiss_available():
        pytest.skip("faiss not installed")
    rng = np.random.default_rng(1)
    off = 40 * rng.normal(size=16)
    q = (off + rng.normal(size=(200, 16))).astype(np.float32)
    b = (off + rng.normal(size=(300, 16))).astype(np.float32)
    d, i = knn(q, b, 4, backend=backend, device="cpu")
    ref = np.sqrt(((q.astype(np.float64)[:, None] - b.astype(np.float64)[None]) ** 2).sum(-1))
    np.testing.assert_allclose(d, np.sort(ref, 1)[:, :4], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(ref, i, 1), d, rtol=1e-6, atol=1e-6)
