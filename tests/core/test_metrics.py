"""Metrics against scikit-learn, an independent slow AU-PRO reference, and hand-computed cases."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from pclsim import metrics as metric_fns


# ----------------------------------------------------------------------------- references

def sk_f1_max(y, s):
    p, r, _ = precision_recall_curve(y, s)
    denom = p + r
    f1 = np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    return f1.max()


def sk_pr_auc(y, s):
    p, r, _ = precision_recall_curve(y, s)
    return auc(r, p)


def ref_aupro(masks, maps, fpr_limit=0.3, num_thresholds=100):
    """Slow AU-PRO straight from method.md: python loops over thresholds and components."""
    normal = np.sort(maps[~masks])
    n0 = normal.size
    positions = [int(round(p)) for p in np.linspace(0, n0 - 1, num_thresholds)]
    regions = []
    for img, m in zip(maps, masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))  # 8-connectivity within one image
        for c in range(1, n + 1):
            regions.append(img[lab == c])
    fprs, pros = [], []
    for p in reversed(positions):  # thresholds descending -> FPR ascending
        t = normal[p]
        fprs.append(np.sum(normal > t) / n0)
        pros.append(np.mean([np.sum(r > t) / r.size for r in regions]))
    fprs.append(1.0)
    pros.append(1.0)
    x, y = np.array(fprs), np.array(pros)
    keep = x <= fpr_limit
    xs = np.append(x[keep], fpr_limit)
    ys = np.append(y[keep], np.interp(fpr_limit, x, y))
    return np.trapezoid(ys, xs) / fpr_limit


# ----------------------------------------------------------------------------- data

def image_data(seed, n=300, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    y[:2] = [True, False]
    s = rng.normal(size=n) + 0.8 * y
    if ties:
        s = np.round(s, 1)  # ~60 distinct values for 300 scores
    return y.astype(int), s


def pixel_data(seed, n=6, size=40, ties=False, dtype=np.float64):
    rng = np.random.default_rng(seed)
    masks = ndimage.gaussian_filter(rng.random((n, size, size)), (0, 2, 2)) > 0.56
    masks[0, 0, 0], masks[0, 0, 1] = True, False  # both classes whatever the seed
    maps = ndimage.gaussian_filter(rng.random((n, size, size)), (0, 1.5, 1.5)) + 0.04 * masks
    if ties:
        maps = np.round(maps, 2)
    return masks, maps.astype(dtype)


CASES = [(seed, ties) for seed in range(4) for ties in (False, True)]


# ----------------------------------------------------------------------------- image / pixel vs sklearn

@pytest.mark.parametrize("seed,ties", CASES)
def test_image_metrics_match_sklearn(seed, ties):
    y, s = image_data(seed, ties=ties)
    assert metric_fns.image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metric_fns.f1_max(y, s) == pytest.approx(sk_f1_max(y, s), abs=1e-12)
    both = metric_fns.image_metrics(y, s)
    assert both == {"image_auroc": metric_fns.image_auroc(y, s), "image_f1": metric_fns.f1_max(y, s)}


@pytest.mark.parametrize("seed,ties", CASES)
def test_pixel_metrics_match_sklearn(seed, ties):
    masks, maps = pixel_data(seed, ties=ties, dtype=np.float32 if seed % 2 else np.float64)
    y, s = masks.ravel(), maps.ravel()
    if ties:
        assert np.unique(s).size < s.size / 10
    assert metric_fns.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metric_fns.pixel_f1(masks, maps) == pytest.approx(sk_f1_max(y, s), abs=1e-12)
    assert metric_fns.pixel_pr(masks, maps) == pytest.approx(sk_pr_auc(y, s), abs=1e-12)
    assert metric_fns.pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    fast = metric_fns.pixel_metrics(masks, maps)
    assert fast["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert fast["pixel_f1"] == pytest.approx(sk_f1_max(y, s), abs=1e-12)
    assert fast["pixel_pr"] == pytest.approx(sk_pr_auc(y, s), abs=1e-12)
    assert fast["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    # trapezoid PR area and AP really are different numbers here
    assert abs(metric_fns.pixel_pr(masks, maps) - metric_fns.pixel_ap(masks, maps)) > 1e-6


def test_ranking_edge_cases_by_hand():
    y = [0, 0, 1, 1]
    assert metric_fns.image_auroc(y, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert metric_fns.image_auroc(y, [0.4, 0.3, 0.2, 0.1]) == 0.0
    # all tied: the only point is (FPR 1, TPR 1): AUROC 1/2; F1 = 2*0.5*1/(0.5+1) = 2/3
    assert metric_fns.image_auroc(y, [1, 1, 1, 1]) == 0.5
    assert metric_fns.f1_max(y, [1, 1, 1, 1]) == pytest.approx(2 / 3)
    # scores 0.1(neg) 0.5(pos) 0.5(neg) 0.9(pos): pairs pos>neg: (0.9>0.1,0.9>0.5,0.5>0.1)=3, tie 0.5=0.5 counts 1/2
    assert metric_fns.image_auroc([0, 1, 0, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(3.5 / 4)
    # thresholds 0.9: P=1,R=1/2,F1=2/3; 0.5: P=2/3,R=1,F1=0.8; 0.1: P=1/2,R=1,F1=2/3
    assert metric_fns.f1_max([0, 1, 0, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.8)
    # F1 peaks at the lowest threshold: desc thresholds .9 (tp1 fp0) 2/4, .7 (tp1 fp1) 2/5,
    # .5 (tp2 fp1) 4/6, .1 (tp3 fp1) 6/7   [F1 = 2tp / (tp + fp + positives)]
    assert metric_fns.f1_max([1, 1, 1, 0], [0.1, 0.5, 0.9, 0.7]) == pytest.approx(6 / 7)
    mk, mp = np.array([[[1, 1], [1, 0]]], bool), np.array([[[0.1, 0.5], [0.9, 0.7]]])
    assert metric_fns.pixel_f1(mk, mp) == pytest.approx(6 / 7)
    assert metric_fns.pixel_metrics(mk, mp)["pixel_f1"] == pytest.approx(6 / 7)
    # booleans and integer scores are accepted
    assert metric_fns.image_auroc(np.array([False, True]), np.array([0, 3])) == 1.0


# ----------------------------------------------------------------------------- AU-PRO

@pytest.mark.parametrize("seed,ties", CASES)
def test_aupro_matches_slow_reference(seed, ties):
    masks, maps = pixel_data(seed, ties=ties)
    for limit, k in [(0.3, 100), (0.05, 100), (1.0, 100), (0.3, 7), (0.3, 2)]:
        ref = ref_aupro(masks, maps, limit, k)
        assert metric_fns.aupro(masks, maps, fpr_limit=limit, num_thresholds=k) == pytest.approx(ref, abs=1e-12)
        fast = metric_fns.pixel_metrics(masks, maps, fpr_limit=limit, num_thresholds=k)["pixel_aupro"]
        assert fast == pytest.approx(ref, abs=1e-12)


def test_aupro_one_component_half_above_by_hand():
    # top row: one component with scores .1 .2 .8 .9; bottom row: normals .0 .3 .5 .7
    masks = np.array([[[1, 1, 1, 1], [0, 0, 0, 0]]], dtype=bool)
    maps = np.array([[[0.1, 0.2, 0.8, 0.9], [0.0, 0.3, 0.5, 0.7]]])
    # 4 thresholds at sorted-normal positions 0,1,2,3 = .0 .3 .5 .7; (FPR, PRO) by descending threshold:
    # t=.7: (0, 2/4)  t=.5: (1/4, 1/2)  t=.3: (2/4, 1/2)  t=.0: (3/4, 1)  then (1, 1)
    # limit .3: PRO is 1/2 on [0, .3] -> area .15 / .3 = .5
    assert metric_fns.aupro(masks, maps, 0.3, 4) == pytest.approx(0.5)
    # limit 1: .5*.5 + (.5+1)/2*.25 + 1*.25 = .25 + .1875 + .25 = .6875
    assert metric_fns.aupro(masks, maps, 1.0, 4) == pytest.approx(0.6875)
    # limit .6: .25 + trapezoid on [.5, .6] from .5 to interp .5+.5*(.1/.25)=.7: (.5+.7)/2*.1=.06 -> .31/.6
    assert metric_fns.aupro(masks, maps, 0.6, 4) == pytest.approx(0.31 / 0.6)
    assert metric_fns.pixel_metrics(masks, maps, 0.6, 4)["pixel_aupro"] == pytest.approx(0.31 / 0.6)


def test_aupro_uses_8_connectivity_and_mean_over_components():
    # anomalous (0,0)=.9 and (1,1)=.1 touch diagonally: ONE component; (0,3)=.1 is a second one
    masks = np.zeros((1, 3, 4), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 0, 3] = True
    maps = np.zeros((1, 3, 4))
    maps[0, 0, 0], maps[0, 1, 1], maps[0, 0, 3] = 0.9, 0.1, 0.1
    maps[0, 2, 3] = 0.5  # the 9 normals: eight 0.0 and one 0.5
    # 2 thresholds: sorted-normal positions 0 and 8 -> t = 0.0 and 0.5
    # t=.5: FPR 0, PRO = mean(1/2, 0) = 1/4  (4-connectivity would give mean(1, 0, 0) = 1/3)
    # t=0 : FPR 1/9, PRO = mean(1, 1) = 1
    # area to .3: (1/9)*(1/4+1)/2 + (.3-1/9)*1
    want = ((1 / 9) * 1.25 / 2 + (0.3 - 1 / 9)) / 0.3
    assert metric_fns.aupro(masks, maps, 0.3, 2) == pytest.approx(want)
    assert metric_fns.pixel_metrics(masks, maps, 0.3, 2)["pixel_aupro"] == pytest.approx(want)


def test_aupro_components_do_not_span_images():
    # same pixel anomalous in two images: two components {.9,.9} and {.1}, not one of 3 pixels
    masks = np.zeros((2, 2, 3), bool)
    masks[0, 0, :2] = True
    masks[1, 0, 0] = True
    maps = np.zeros((2, 2, 3))
    maps[0, 0, :2] = 0.9
    maps[1, 0, 0] = 0.1
    maps[1, 1, 2] = 0.5  # normals: eight 0.0, one 0.5
    # t=.5: FPR 0, PRO = mean(1, 0) = 1/2 (merged would be 2/3); t=0: FPR 1/9, PRO 1
    want = ((1 / 9) * 1.5 / 2 + (0.3 - 1 / 9)) / 0.3
    assert metric_fns.aupro(masks, maps, 0.3, 2) == pytest.approx(want)
    assert metric_fns.pixel_metrics(masks, maps, 0.3, 2)["pixel_aupro"] == pytest.approx(want)


def test_aupro_perfect_and_inverted_maps():
    masks, _ = pixel_data(1)
    assert metric_fns.aupro(masks, masks.astype(float) + 1.0) == pytest.approx(1.0)
    # every anomalous pixel below every (distinct) normal: PRO 0 up to FPR (n0-1)/n0
    inverted = np.where(masks, -1.0, np.random.default_rng(0).random(masks.shape))
    assert metric_fns.aupro(masks, inverted) == pytest.approx(0.0)
    # all normals tied at 0 and anomalies at -1: the only threshold gives (0, 0), then the
    # straight line to (1, 1): area .3*.3/2 / .3 = .15
    assert metric_fns.aupro(masks, -masks.astype(float)) == pytest.approx(0.15)


# ----------------------------------------------------------------------------- fast path

@pytest.mark.parametrize("seed,ties", CASES)
def test_pixel_metrics_equals_individual_functions(seed, ties):
    masks, maps = pixel_data(seed + 10, n=5, size=48, ties=ties, dtype=np.float32 if ties else np.float64)
    got = metric_fns.pixel_metrics(masks, maps)
    want = {
        "pixel_auroc": metric_fns.pixel_auroc(masks, maps), "pixel_f1": metric_fns.pixel_f1(masks, maps),
        "pixel_pr": metric_fns.pixel_pr(masks, maps), "pixel_ap": metric_fns.pixel_ap(masks, maps),
        "pixel_aupro": metric_fns.aupro(masks, maps),
    }
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9), k


def test_pixel_metrics_top_score_normal_or_anomalous():
    # the curve's first point has precision 0 (a normal pixel on top) or 1 (an anomalous one)
    masks, maps = pixel_data(5, n=3, size=16, ties=True)
    for top_is_anomalous in (False, True):
        mk = masks.copy()
        mk[2, 15, 15] = top_is_anomalous
        mp = maps.copy()
        mp[2, 15, 15] = 10.0
        y, s = mk.ravel(), mp.ravel()
        got = metric_fns.pixel_metrics(mk, mp)
        assert got["pixel_pr"] == pytest.approx(sk_pr_auc(y, s), abs=1e-12)
        assert got["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert got["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_pixel_metrics_ignore_image_order_and_accept_0_1_masks():
    masks, maps = pixel_data(3, ties=True)
    perm = np.random.default_rng(0).permutation(masks.shape[0])
    a = metric_fns.pixel_metrics(masks, maps)
    b = metric_fns.pixel_metrics(masks[perm].astype(np.uint8), maps[perm])
    assert a == pytest.approx(b, abs=1e-12)


# ----------------------------------------------------------------------------- continual metrics

# a[step][task]; rows: after training task 0..5 of the order
A6 = np.array([
    [0.90, 0.50, 0.50, 0.95, 0.50, 0.50],
    [0.85, 0.80, 0.50, 0.50, 0.50, 0.60],
    [0.70, 0.85, 1.00, 0.50, 0.50, 0.55],
    [0.60, 0.70, 0.95, 0.50, 0.50, 0.50],
    [0.50, 0.80, 0.90, 0.40, 0.80, 0.65],
    [0.45, 0.80, 0.90, 0.50, 0.60, 0.70],
])


def test_continual_metrics_6x6_by_hand():
    # final mean: (.45+.8+.9+.5+.6+.7)/6 = 3.95/6
    assert metric_fns.final_mean(A6) == pytest.approx(3.95 / 6)
    # relative forgetting per task i<5: (.9-.45)/.9=.5, (.8-.8)/.8=0, (1-.9)/1=.1, (.5-.5)/.5=0, (.8-.6)/.8=.25
    # sum .85 -> correct 100*.85/5 = 17.0; the authors' /9: 100*.85/9 = 9.444...
    assert metric_fns.average_forgetting(A6) == pytest.approx(17.0)
    assert metric_fns.average_forgetting(A6, paper_compatible=True) == pytest.approx(85 / 9)
    # bwt: mean(.45-.9, .8-.8, .9-1, .5-.5, .6-.8) = -.75/5
    assert metric_fns.bwt(A6) == pytest.approx(-0.15)
    # max forgetting, max over steps l in [i, 4]: col0 .9-.45=.45; col1 max(.8,.85,.7,.8)=.85-.8=.05;
    # col2 1-.9=.1; col3 max(.5,.4)-.5=0 (the .95 of step 0 predates training task 3); col4 .8-.6=.2
    # mean .8/5
    assert metric_fns.max_forgetting(A6) == pytest.approx(0.16)
    # fwt: a[i-1][i] = .5 .5 .5 .5 .65 minus baseline[1:] = .5 .4 .5 .45 .5 -> 0 .1 0 .05 .15 -> .3/5
    base = np.array([np.nan, 0.5, 0.4, 0.5, 0.45, 0.5])  # baseline[0] is never used
    assert metric_fns.fwt(A6, base) == pytest.approx(0.06)
    joint = np.full((6, 6), 0.8)
    assert metric_fns.relative_gap(A6, joint) == pytest.approx(0.8 - 3.95 / 6)


def test_continual_metrics_edge_cases():
    one = np.array([[0.7]])
    assert metric_fns.final_mean(one) == pytest.approx(0.7)
    for f in (metric_fns.average_forgetting, metric_fns.max_forgetting, metric_fns.bwt):
        assert f(one) == 0.0
    assert metric_fns.fwt(one, [0.5]) == 0.0
    # with 10 tasks the paper's /9 is the correct divisor
    a = np.random.default_rng(0).uniform(0.5, 1.0, (10, 10))
    assert metric_fns.average_forgetting(a, paper_compatible=True) == pytest.approx(metric_fns.average_forgetting(a))
    # cells no formula reads may be NaN (e.g. upper triangle of an unfinished evaluation)
    b = A6.copy()
    b[0, 2] = np.nan
    assert metric_fns.bwt(b) == metric_fns.bwt(A6) and metric_fns.final_mean(b) == metric_fns.final_mean(A6)


def test_memory_mb():
    assert metric_fns.memory_mb(30000, 1536) == pytest.approx(184.32)
    assert metric_fns.memory_mb(10000, 1536) == pytest.approx(61.44)
    assert metric_fns.memory_mb(np.int64(10), 3, bytes_per=2) == pytest.approx(60e-6)


# ----------------------------------------------------------------------------- input checks

@pytest.mark.parametrize("labels,scores,msg", [
    ([0, 1, 1], [0.1, 0.2], "length"),
    ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ([0, 1, 2], [0.1, 0.2, 0.3], "0/1"),
    ([1, 1, 1], [0.1, 0.2, 0.3], "both classes"),
    ([0, 0], [0.1, 0.2], "both classes"),
    ([0, 1], [0.1, np.nan], "NaN"),
    ([0, 1], [0.1, np.inf], "NaN or infinite"),
    ([0, 1], ["a", "b"], "dtype"),
])
def test_image_input_checks(labels, scores, msg):
    for f in (metric_fns.image_auroc, metric_fns.f1_max, metric_fns.image_metrics):
        with pytest.raises(ValueError, match=msg):
            f(labels, scores)


def test_pixel_input_checks():
    masks, maps = pixel_data(0, n=2, size=8)
    bad_maps = maps.copy()
    bad_maps[1, 2, 3] = np.nan
    cases = [
        (masks, maps[:, :4], "differ in shape"),
        (masks[0], maps[0], r"\(N,H,W\)"),
        (np.zeros_like(masks), maps, "no positive"),
        (np.ones_like(masks), maps, "no negative"),
        (masks * 2, maps, "0/1"),
        (masks, bad_maps, "NaN"),
    ]
    fns = [metric_fns.pixel_auroc, metric_fns.pixel_f1, metric_fns.pixel_pr, metric_fns.pixel_ap, metric_fns.aupro,
           metric_fns.pixel_metrics]
    for mk, mp, msg in cases:
        for f in fns:
            with pytest.raises(ValueError, match=msg):
                f(mk, mp)
    for kw in ({"fpr_limit": 0.0}, {"fpr_limit": 1.5}, {"num_thresholds": 1}, {"num_thresholds": 2.5}):
        for f in (metric_fns.aupro, metric_fns.pixel_metrics):
            with pytest.raises(ValueError, match=next(iter(kw))):
                f(masks, maps, **kw)


def test_continual_input_checks():
    with pytest.raises(ValueError, match="square"):
        metric_fns.final_mean(np.ones((2, 3)))
    with pytest.raises(ValueError, match="square"):
        metric_fns.bwt(np.ones(4))
    with pytest.raises(ValueError, match="square"):
        metric_fns.bwt(np.ones((0, 0)))
    b = A6.copy()
    b[5, 2] = np.nan
    for f in (metric_fns.final_mean, metric_fns.average_forgetting, metric_fns.max_forgetting, metric_fns.bwt):
        with pytest.raises(ValueError, match=r"matrix\[5\]\[2\]"):
            f(b)
    c = A6.copy()
    c[3, 3] = np.nan
    for f in (metric_fns.average_forgetting, metric_fns.max_forgetting, metric_fns.bwt):
        with pytest.raises(ValueError, match=r"matrix\[3\]\[3\]"):
            f(c)
    assert metric_fns.fwt(c, np.zeros(6)) == metric_fns.fwt(A6, np.zeros(6))  # fwt never reads the diagonal
    d = A6.copy()
    d[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"matrix\[2\]\[3\]"):
        metric_fns.fwt(d, np.zeros(6))
    with pytest.raises(ValueError, match="length 6"):
        metric_fns.fwt(A6, np.zeros(5))
    with pytest.raises(ValueError, match=r"baseline\[4\]"):
        metric_fns.fwt(A6, [0, 0, 0, 0, np.nan, 0])
    z = A6.copy()
    z[1, 1] = 0.0
    with pytest.raises(ValueError, match="is 0"):
        metric_fns.average_forgetting(z)
    with pytest.raises(ValueError, match="differ in shape"):
        metric_fns.relative_gap(A6, np.ones((5, 5)))
    with pytest.raises(ValueError, match=r"joint_matrix\[5\]\[2\]"):
        metric_fns.relative_gap(A6, b)
    for args in ((-1, 3), (2.5, 3), (True, 3), (10, "3")):
        with pytest.raises(ValueError):
            metric_fns.memory_mb(*args)
