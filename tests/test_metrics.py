"Tests of realfake.metrics: every metric against scikit-learn or a hand-worked example, calibration fits, the abstain band."
import math
import numpy as np, pandas as pd, pytest
from sklearn import metrics as skm

from realfake.core import RealfakeError
from realfake.metrics import (roc_auc, roc_curve, average_precision, eer, tpr_at_fpr, confusion_matrix, balanced_accuracy,
                              binary_metrics, per_source_metrics, ece, reliability_bins, fit_temperature, fit_threshold, nll,
                              risk_coverage, fit_unsure, selective_metrics, unsure_band, METRICS)

def _scores(seed=0, n=300):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n); s = np.round(rng.random(n) + 0.3 * y, 2)     # rounding makes ties
    return y, s

# ---------------------------------------------------------------- threshold-free, by hand and against sklearn
def test_auc_ap_by_hand():
    # reals 0.1, 0.4; fakes 0.35, 0.8: 3 of 4 (fake, real) pairs ordered right
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert roc_auc(y, s) == pytest.approx(0.75)
    # ranking 0.8F 0.4R 0.35F 0.1R: recall steps at ranks 1 (P=1) and 3 (P=2/3)
    assert average_precision(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    fpr, tpr, _ = roc_curve(y, s)
    assert fpr.tolist() == pytest.approx([0, 0, .5, .5, 1]) and tpr.tolist() == pytest.approx([0, .5, .5, 1, 1])

def test_auc_ties_and_degenerate():
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)     # a tie counts 1/2
    assert average_precision([0, 1, 1, 0, 1], [0.3] * 5) == pytest.approx(3 / 5)   # all equal: AP = prevalence
    assert roc_auc([0, 1, 1, 0, 1], [0.3] * 5) == pytest.approx(0.5)
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3])) and math.isnan(average_precision([0, 0], [0.1, 0.2]))
    assert math.isnan(roc_auc([], [])) and roc_auc([0, 1], [0.9, 0.1]) == 0.0

@pytest.mark.parametrize('seed', [0, 1, 2])
def test_threshold_free_match_sklearn(seed):
    y, s = _scores(seed)
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    f1, t1, _ = roc_curve(y, s); f2, t2, _ = skm.roc_curve(y, s, drop_intermediate=False)
    assert np.allclose(f1, f2) and np.allclose(t1, t2)

def _brute_eer(y, s):
    "EER by brute force: for every threshold, FPR and FNR; the crossing by linear interpolation between neighbours."
    y, s = np.asarray(y), np.asarray(s)
    ts = np.r_[np.inf, np.unique(s)[::-1]]
    fpr = np.array([((s >= t) & (y == 0)).sum() / (y == 0).sum() for t in ts])
    fnr = np.array([((s < t) & (y == 1)).sum() / (y == 1).sum() for t in ts])
    d = fpr - fnr
    i = int(np.argmax(d >= 0))
    if d[i] == 0: return fpr[i]
    w = -d[i - 1] / (d[i] - d[i - 1])
    return fpr[i - 1] + w * (fpr[i] - fpr[i - 1])

@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_eer_and_tpr_at_fpr_brute_force(seed):
    y, s = _scores(seed, 120)
    assert eer(y, s) == pytest.approx(_brute_eer(y, s), abs=1e-12)
    reals, fakes = s[y == 0], s[y == 1]
    for target in (0.01, 0.05, 0.2):
        # every threshold t (fake when s >= t) allowed by the target; the best share of fakes at or above it
        ok = [t for t in np.r_[np.unique(s), np.inf] if (reals >= t).mean() <= target + 1e-12]
        assert tpr_at_fpr(y, s, target) == pytest.approx(max((fakes >= t).mean() for t in ok))

def test_eer_by_hand():
    assert eer([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5)
    assert eer([0, 0, 0, 1, 1], [0.05, 0.1, 0.4, 0.35, 0.8]) == pytest.approx(1 / 3)
    assert eer([0, 1], [0.1, 0.9]) == 0 and eer([0, 1], [0.9, 0.1]) == 1
    assert math.isnan(eer([0, 0], [0.1, 0.2])) and math.isnan(tpr_at_fpr([1], [0.3], 0.01))
    # perfectly separable: every fake caught at 0% false positives
    assert tpr_at_fpr([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], 0.0) == 1.0

# ---------------------------------------------------------------- at a threshold
def test_confusion_and_binary_metrics_by_hand():
    y, p = [0, 0, 0, 1, 1], [0.2, 0.7, 0.4, 0.9, 0.3]
    assert confusion_matrix(y, [0, 1, 0, 1, 0]).tolist() == [[2, 1], [1, 1]]
    m = binary_metrics(y, p, 0.5)
    assert (m['tn'], m['fp'], m['fn'], m['tp']) == (2, 1, 1, 1)
    assert m['accuracy'] == pytest.approx(3 / 5) and m['acc_real'] == pytest.approx(2 / 3) and m['acc_fake'] == pytest.approx(1 / 2)
    assert m['balanced_accuracy'] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m['auc'] == pytest.approx(4 / 6)      # 0.9 beats 3 reals, 0.3 beats 0.2
    assert set(METRICS) <= set(m)
    m = binary_metrics(y, p, 0.7)                # p >= threshold is fake: 0.7 counts as fake
    assert (m['tn'], m['fp'], m['fn'], m['tp']) == (2, 1, 1, 1)
    m = binary_metrics(y, p, 0.25)
    assert (m['tn'], m['fp'], m['fn'], m['tp']) == (1, 2, 0, 2)

@pytest.mark.parametrize('seed', [0, 1])
def test_threshold_metrics_match_sklearn(seed):
    y, s = _scores(seed)
    pred = (s >= 0.6).astype(int)
    assert confusion_matrix(y, pred).tolist() == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert balanced_accuracy(y, pred) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    m = binary_metrics(y, s, 0.6)
    assert m['accuracy'] == pytest.approx(skm.accuracy_score(y, pred))
    assert m['acc_fake'] == pytest.approx(skm.recall_score(y, pred)) and m['acc_real'] == pytest.approx(skm.recall_score(1 - y, 1 - pred))

def test_one_class_gives_nan_not_an_error():
    m = binary_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert m['accuracy'] == pytest.approx(2 / 3) and m['acc_fake'] == pytest.approx(2 / 3)
    for k in ('acc_real', 'balanced_accuracy', 'auc', 'eer', 'tpr_at_1fpr'): assert math.isnan(m[k]), k
    assert math.isnan(binary_metrics([], [])['accuracy'])

def test_per_source_by_hand():
    df = pd.DataFrame(dict(label=['real', 'real', 'fake', 'fake', 'fake', 'real'],
                           source=['nat', 'nat', 'g1', 'g1', 'g2', 'mix'], prob_fake=[0.1, 0.6, 0.9, 0.3, 0.7, np.nan]))
    t = per_source_metrics(df, 0.5).set_index('source')
    assert list(t.index) == ['all', 'g1', 'g2', 'nat']           # the unreadable row (NaN) is left out
    assert t.loc['all', 'n'] == 5 and t.loc['all', 'accuracy'] == pytest.approx(3 / 5)
    assert t.loc['all', 'auc'] == pytest.approx(5 / 6)   # reals 0.1 0.6; fakes 0.9 (2 pairs) 0.3 (1) 0.7 (2)
    assert t.loc['g1', 'accuracy'] == pytest.approx(0.5) and t.loc['g1', 'acc_fake'] == pytest.approx(0.5)
    assert t.loc['g1', 'auc'] == pytest.approx(3 / 4) and t.loc['g1', 'auc_vs'] == 'all real'   # vs reals 0.1, 0.6
    assert t.loc['g1', 'balanced_accuracy'] == pytest.approx(0.5)  # fakes 1/2 caught, pooled reals 1/2 right
    assert t.loc['g2', 'auc'] == pytest.approx(1.0) and t.loc['g2', 'eer'] == pytest.approx(0.0)
    assert t.loc['nat', 'acc_real'] == pytest.approx(0.5) and math.isnan(t.loc['nat', 'acc_fake'])
    assert t.loc['nat', 'auc_vs'] == 'all fake'

# ---------------------------------------------------------------- calibration, known answers
def test_ece_by_hand():
    assert ece([1, 0, 0, 1], [0.92, 0.83, 0.26, 0.61], n_bins=10) == pytest.approx((0.08 + 0.83 + 0.26 + 0.39) / 4)
    assert ece([1, 0], [0.92, 0.91], n_bins=10) == pytest.approx(0.415)   # one bin: |0.5 - 0.915|
    assert reliability_bins([1, 0], [0.92, 0.91], n_bins=10).n.tolist() == [0] * 9 + [2]

def test_threshold_best_accuracy_known_answer():
    assert fit_threshold([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.9]) == pytest.approx(0.45)
    y, p = [0, 0, 0, 1, 1, 1], [0.1, 0.5, 0.7, 0.4, 0.8, 0.9]
    t = fit_threshold(y, p)
    assert t == pytest.approx(0.75) and binary_metrics(y, p, t)['accuracy'] == pytest.approx(5 / 6)
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(2000), np.ones(2000)]; p = np.r_[rng.uniform(0, .62, 2000), rng.uniform(.58, 1, 2000)]
    assert 0.58 <= fit_threshold(y, p) <= 0.62

def test_threshold_target_fpr_known_answer():
    r = np.linspace(0.01, 0.99, 100)
    y, p = np.r_[np.zeros(100), np.ones(3)], np.r_[r, [0.5, 0.9, 0.995]]
    for target, k in [(0.05, 5), (0.01, 1), (0.0, 0), (0.2, 20)]:
        t = fit_threshold(y, p, 'fpr', target)
        assert int((r >= t).sum()) == k, (target, t)

def test_temperature_known_answer():
    rng = np.random.default_rng(0)
    d = rng.normal(0, 4, 20000)
    for T0 in (2.5, 0.5):                    # over- then under-confident logits
        y = (rng.random(len(d)) < 1 / (1 + np.exp(-d / T0))).astype(int)
        T = fit_temperature(d, y)
        assert T == pytest.approx(T0, rel=0.06), (T0, T)
        assert nll(d, y, T) < nll(d, y, 1.0)
        assert ece(y, 1 / (1 + np.exp(-d / T))) < ece(y, 1 / (1 + np.exp(-d)))

# ---------------------------------------------------------------- selective classification
def test_risk_coverage_by_hand():
    y, p = [1, 0, 0, 1, 1, 0], [0.95, 0.1, 0.8, 0.625, 0.375, 0.25]     # confidences .9 .8 .6 .25 .25 .5
    rc = risk_coverage(y, p, 0.5)
    assert rc.accuracy.round(4).tolist() == [1, 1, round(2 / 3, 4), 0.75, 0.8, round(4 / 6, 4)]
    assert rc.cut_ok.tolist() == [True, True, True, True, False, True]  # no cut between the two tied at .25
    b = fit_unsure(y, p, 0.5, target_accuracy=0.75)
    assert b['unsure'] == pytest.approx([0.3125, 0.6875]) and b['coverage'] == pytest.approx(4 / 6)
    assert fit_unsure(y, p, 0.5, target_accuracy=0.6)['unsure'] is None          # everything answered
    assert fit_unsure(y, p, 0.5, target_coverage=0.6)['coverage'] == pytest.approx(4 / 6)
    with pytest.raises(RealfakeError, match='no abstain band'): fit_unsure([0, 1], [0.9, 0.6], 0.5, target_accuracy=1.0)
    with pytest.raises(ValueError, match='exactly one'): fit_unsure(y, p, 0.5)

def test_band_holds_the_least_confident():
    "The band [lo, hi] holds exactly the images whose confidence is at most d, whatever the threshold."
    rng = np.random.default_rng(4)
    p = rng.random(500); y = (rng.random(500) < p).astype(int)
    for thr in (0.5, 0.3, 0.8):
        b = fit_unsure(y, p, thr, target_coverage=0.7)
        lo, hi = b['unsure']
        assert lo < thr < hi
        s = selective_metrics(y, p, thr, b['unsure'])
        assert s['coverage'] == pytest.approx(b['coverage']) and s['coverage'] >= 0.7
        assert s['selective_accuracy'] >= s['accuracy'] - 1e-9        # abstaining on the least sure helps here
        assert unsure_band(thr, b['d']) == pytest.approx(b['unsure'])

# ---------------------------------------------------------------- one rule for answers, items without a probability left out
ANSWERED = {  # how each entry point reports whether its one image was answered correctly
    'binary_metrics': lambda y, p: binary_metrics(y, p)['accuracy'],
    'reliability_bins': lambda y, p: reliability_bins(y, p).query('n > 0').acc.iloc[0],
    'risk_coverage': lambda y, p: risk_coverage(y, p).accuracy.iloc[-1],
    'selective_metrics': lambda y, p: selective_metrics(y, p)['accuracy'],
}

@pytest.mark.parametrize('entry', list(ANSWERED))
def test_p_one_half_is_fake_everywhere(entry):
    "p = 0.5 at threshold 0.5 is answered 'fake' by every metric (predict_fake), as the model's labels are."
    assert ANSWERED[entry]([1], [0.5]) == 1.0 and ANSWERED[entry]([0], [0.5]) == 0.0

def test_ece_leaves_out_items_without_a_probability():
    y, p = [1, 0, 0, 1], [0.92, 0.83, 0.26, 0.61]
    assert ece(y + [1, 0], p + [np.nan, np.nan], n_bins=10) == ece(y, p, n_bins=10)    # not diluted by the unreadable images
    assert reliability_bins(y + [1], p + [np.nan]).n.sum() == 4 and math.isnan(ece([1], [np.nan])) and math.isnan(ece([], []))
