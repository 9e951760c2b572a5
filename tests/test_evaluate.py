"Tests of realfake.evaluate: numpy metrics against hand-computed values, calibration, report folder, audit."
import json, math
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from PIL import Image

from realfake.modeldir import ModelConfig
from realfake.predict import Classifier
from realfake.metrics import (roc_auc, roc_curve, average_precision, confusion_matrix, binary_metrics, per_source_metrics,
                              ece, reliability_bins, fit_temperature, fit_threshold, nll)
from realfake.evaluate import calibrate, evaluate, realfake_evaluate, save_calibration, shortcut_audit, FIGURES

# ---------------------------------------------------------------- metrics, by hand
def test_auc_ap_by_hand():
    # reals 0.1, 0.4; fakes 0.35, 0.8: 3 of 4 (fake, real) pairs ordered right
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert roc_auc(y, s) == pytest.approx(0.75)
    # ranking 0.8F 0.4R 0.35F 0.1R: recall steps at ranks 1 (P=1) and 3 (P=2/3)
    assert average_precision(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    fpr, tpr, _ = roc_curve(y, s)
    assert fpr.tolist() == pytest.approx([0, 0, .5, .5, 1]) and tpr.tolist() == pytest.approx([0, .5, .5, 1, 1])

def test_auc_ties_and_degenerate():
    # one tie between a real and a fake counts 1/2: (1 + 0.5 + 1 + 1) / 4
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    # all scores equal: AP = prevalence, AUC = 0.5
    assert average_precision([0, 1, 1, 0, 1], [0.3] * 5) == pytest.approx(3 / 5)
    assert roc_auc([0, 1, 1, 0, 1], [0.3] * 5) == pytest.approx(0.5)
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3])) and math.isnan(average_precision([0, 0], [0.1, 0.2]))
    assert roc_auc([0, 1], [0.9, 0.1]) == 0.0

def test_matches_sklearn_if_installed():
    skm = pytest.importorskip('sklearn.metrics')
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300); s = np.round(rng.random(300) + 0.3 * y, 2)     # rounding makes ties
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)

def test_confusion_and_binary_metrics_by_hand():
    y, p = [0, 0, 0, 1, 1], [0.2, 0.7, 0.4, 0.9, 0.3]
    assert confusion_matrix(y, [0, 1, 0, 1, 0]).tolist() == [[2, 1], [1, 1]]
    m = binary_metrics(y, p, 0.5)
    assert (m['tn'], m['fp'], m['fn'], m['tp']) == (2, 1, 1, 1)
    assert m['accuracy'] == pytest.approx(3 / 5) and m['acc_real'] == pytest.approx(2 / 3) and m['acc_fake'] == pytest.approx(1 / 2)
    assert m['auc'] == pytest.approx(4 / 6)      # 0.9 beats 3 reals, 0.3 beats 0.2
    m = binary_metrics(y, p, 0.7)                # p >= threshold is fake: 0.7 counts as fake
    assert (m['tn'], m['fp'], m['fn'], m['tp']) == (2, 1, 1, 1)
    m = binary_metrics(y, p, 0.25)
    assert (m['tn'], m['fp'], m['fn'], m['tp']) == (1, 2, 0, 2)

def test_per_source_by_hand():
    df = pd.DataFrame(dict(label=['real', 'real', 'fake', 'fake', 'fake', 'real'],
                           source=['nat', 'nat', 'g1', 'g1', 'g2', 'mix'], prob_fake=[0.1, 0.6, 0.9, 0.3, 0.7, np.nan]))
    t = per_source_metrics(df, 0.5).set_index('source')
    assert list(t.index) == ['all', 'g1', 'g2', 'nat']           # the unreadable row (NaN) is left out
    assert t.loc['all', 'n'] == 5 and t.loc['all', 'accuracy'] == pytest.approx(3 / 5)
    assert t.loc['all', 'auc'] == pytest.approx(5 / 6)   # reals 0.1 0.6; fakes 0.9 (2 pairs) 0.3 (1) 0.7 (2)
    assert t.loc['g1', 'accuracy'] == pytest.approx(0.5) and t.loc['g1', 'acc_fake'] == pytest.approx(0.5)
    assert t.loc['g1', 'auc'] == pytest.approx(3 / 4) and t.loc['g1', 'auc_vs'] == 'all real'   # vs reals 0.1, 0.6
    assert t.loc['g2', 'auc'] == pytest.approx(1.0)                 # 0.7 beats both reals
    assert t.loc['nat', 'acc_real'] == pytest.approx(0.5) and math.isnan(t.loc['nat', 'acc_fake'])

def test_ece_by_hand():
    # confidences 0.92 0.83 0.74 0.61 in 4 bins; right, wrong, right, right
    assert ece([1, 0, 0, 1], [0.92, 0.83, 0.26, 0.61], n_bins=10) == pytest.approx((0.08 + 0.83 + 0.26 + 0.39) / 4)
    # two in one bin: |mean acc - mean conf| = |0.5 - 0.915|
    assert ece([1, 0], [0.92, 0.91], n_bins=10) == pytest.approx(0.415)
    r = reliability_bins([1, 0], [0.92, 0.91], n_bins=10)
    assert r.n.tolist() == [0] * 9 + [2]

# ---------------------------------------------------------------- calibration, known answers
def test_threshold_best_accuracy_known_answer():
    assert fit_threshold([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.9]) == pytest.approx(0.45)
    # not separable: cutting between 0.7 and 0.8 gets 5/6 (only the fake at 0.4 is missed)
    y, p = [0, 0, 0, 1, 1, 1], [0.1, 0.5, 0.7, 0.4, 0.8, 0.9]
    t = fit_threshold(y, p)
    assert t == pytest.approx(0.75) and binary_metrics(y, p, t)['accuracy'] == pytest.approx(5 / 6)
    # synthetic scores: reals ~ U(0, 0.62), fakes ~ U(0.58, 1): the best cut lies in the overlap [0.58, 0.62]
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

def test_calibrate_reports_before_after():
    rng = np.random.default_rng(2)
    d = rng.normal(0, 4, 4000); y = (rng.random(4000) < 1 / (1 + np.exp(-d / 3))).astype(int)
    c = calibrate(d[:2000], y[:2000], d[2000:], y[2000:])
    assert c['temperature'] == pytest.approx(3, rel=0.15)
    assert c['ece_after'] < c['ece_before'] / 2 and c['nll_after'] < c['nll_before']
    assert 0 <= c['threshold'] <= 1

def test_calibrate_flags_degenerate_fits():
    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.8).astype(int)
    noise = rng.normal(0, 1, 400)                     # logits unrelated to the labels
    c = calibrate(noise[:200], y[:200], noise[200:], y[200:])
    assert c['warnings']
    d = rng.normal(0, 4, 400); y2 = (rng.random(400) < 1 / (1 + np.exp(-d / 2))).astype(int)
    assert calibrate(d[:200], y2[:200], d[200:], y2[200:])['warnings'] == []

# ---------------------------------------------------------------- report on a tiny model
@pytest.fixture(scope='module')
def model_dir(tiny_model_dir): return tiny_model_dir

def _img(seed, fake):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 120, (40, 48, 3), dtype=np.uint8) + (100 if fake else 0)
    return Image.fromarray(a.astype(np.uint8))

@pytest.fixture(scope='module')
def gen_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('gen')
    for src, fake, n in [('natural', False, 6), ('gen_a', True, 4), ('gen_b', True, 4)]:
        (root/src).mkdir()
        for i in range(n): _img(hash((src, i)) % 1000, fake).save(root/src/f'{i}.png')
    (root/'gen_b'/'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    return root

def test_report_folder_complete(model_dir, gen_folder, tmp_path):
    out = tmp_path/'report'
    res = evaluate(model_dir, gen_folder, out=out, bs=8, num_workers=0, audit=True)
    expected = ['metrics.json', 'per_source.csv', 'predictions.csv', 'report.html', 'audit.csv'] + [f for f, _ in FIGURES]
    assert set(expected) <= {p.name for p in out.iterdir()}
    assert len(FIGURES) == 7 and {'roc.png', 'confusion_matrix.png', 'reliability.png'} <= {f for f, _ in FIGURES}
    html = (out/'report.html').read_text()
    for f, _ in FIGURES:
        with Image.open(out/f) as im:
            im.verify(); assert im.format == 'PNG'
        with Image.open(out/f) as im: assert im.size[0] > 100 and im.size[1] > 100
        assert f"src='{f}'" in html
    m = json.loads((out/'metrics.json').read_text())
    assert m['n'] == 14 and m['n_errors'] == 1
    assert set(m['overall']) >= {'accuracy', 'auc', 'ap', 'acc_real', 'acc_fake', 'tn', 'fp', 'fn', 'tp', 'ece'}
    ps = pd.read_csv(out/'per_source.csv')
    assert ps.source.tolist() == ['all', 'gen_a', 'gen_b', 'natural']
    assert ps.set_index('source').loc['gen_b', 'n'] == 4
    pr = pd.read_csv(out/'predictions.csv')
    assert len(pr) == 15 and pr.error.notna().sum() == 1 and 'broken.png' in pr.error.dropna().iloc[0]
    assert set(pr.label) == {'real', 'fake'} and (pr[pr.source == 'natural'].label == 'real').all()
    # the numbers in the report are the metrics of the predictions it lists
    ok = pr[pr.error.isna()]
    assert m['overall']['auc'] == pytest.approx(roc_auc((ok.label == 'fake').astype(int), ok.prob_fake))
    a = pd.read_csv(out/'audit.csv')
    assert a['transform'].tolist()[0] == 'none' and {'jpeg_q50', 'resize_0.5_up', 'png_roundtrip'} <= set(a['transform'])
    assert a.loc[0, 'd_accuracy'] == 0
    assert m['calibration'] is not None and 'random half' in m['calibration']['fitted_on']

def test_audit_detects_a_format_shortcut(model_dir, tmp_path):
    "A 'model' that calls every PNG-clean image fake collapses when both classes are JPEG-compressed."
    clf = Classifier.from_dir(model_dir, backend='torch')
    class FormatDetector(torch.nn.Module):
        # high-frequency energy: JPEG smooths it away -> a stand-in for "learned the file format"
        def forward(self, x):
            hf = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean((1, 2, 3))
            return torch.stack([torch.zeros_like(hf), 100 * (hf - 0.12)], 1)
    clf.model = FormatDetector()
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(8):
        fake = i % 2 == 1
        base = np.tile(np.linspace(60, 200, 40), (40, 1))[..., None].repeat(3, 2)    # a smooth gradient
        a = np.clip(base + (rng.normal(0, 16, base.shape) if fake else 0), 0, 255).astype(np.uint8)  # fakes: + fine noise
        p = tmp_path/f'{i}.png'; Image.fromarray(a).save(p); paths.append(str(p)); labels.append('fake' if fake else 'real')
    df = pd.DataFrame(dict(path=paths, label=labels, source='x'))
    a = shortcut_audit(clf, df, bs=4).set_index('transform')
    assert a.loc['none', 'accuracy'] == 1.0 and a.loc['png_roundtrip', 'd_accuracy'] == 0
    assert a.loc['jpeg_q50', 'd_accuracy'] <= -0.25 and a.loc['jpeg_q50', 'acc_real'] == 1.0

class _BrightnessModel(torch.nn.Module):
    "An informative but imperfect stand-in model: brighter is more fake, plus a content-dependent jitter."
    def forward(self, x):
        m = x.mean((1, 2, 3))
        z = 2 * (m + 0.27) + 2.5 * torch.sin(1000 * m)
        return torch.stack([torch.zeros_like(z), z], 1)

def test_metadata_input_and_save_threshold(model_dir, tmp_path):
    from realfake.metadata import write_metadata
    import shutil
    mdir = tmp_path/'model'; shutil.copytree(model_dir, mdir)
    recs = []
    for split, n in [('valid', 24), ('test', 8)]:
        for i in range(n):
            fake = i % 2 == 1
            p = tmp_path/'img'/f'{split}_{i}.png'; p.parent.mkdir(exist_ok=True)
            _img(i + 100 * (split == 'test'), fake).save(p)
            recs.append(dict(path=str(p), label='fake' if fake else 'real', split=split, source='g' if fake else 'r'))
    meta = write_metadata(recs, tmp_path/'metadata.jsonl')
    clf = Classifier.from_dir(mdir, backend='torch'); clf.model = _BrightnessModel()
    (mdir/'config.json').chmod(0o644); mode0 = 0o644
    res = evaluate(clf, meta, out=tmp_path/'rep', save_threshold=True, bs=8, num_workers=0,
                   threshold_method='fpr', target_fpr=0.25)
    assert res['n'] == 8 and 'split=test' in res['data'] and res['split'] == 'test'
    assert (mdir/'config.json').stat().st_mode & 0o777 == mode0          # permissions kept
    c = res['calibration']
    assert c['fitted_on'] == 'split valid' and c['n_calib'] == 24 and c['n_test'] == 8 and c['warnings'] == []
    cfg = json.loads((mdir/'config.json').read_text())
    assert cfg['threshold'] == pytest.approx(c['threshold']) and cfg['temperature'] == pytest.approx(c['temperature'])
    assert cfg['temperature'] != 1.0
    ModelConfig.from_json((mdir/'config.json').read_text())          # still a valid config
    clf2 = Classifier.from_dir(mdir, backend='torch')
    assert clf2.threshold == pytest.approx(c['threshold']) and clf2.temperature == pytest.approx(c['temperature'])
    # the other files of the model directory are untouched
    assert (mdir/'model.safetensors').read_bytes() == (model_dir/'model.safetensors').read_bytes()

def test_cli_refuses_to_save_degenerate_calibration(model_dir, tmp_path):
    "The untrained model's logits are noise: --save-threshold must not write them, and the config stays as it was."
    import shutil
    from realfake.metadata import write_metadata
    mdir = tmp_path/'model'; shutil.copytree(model_dir, mdir)
    before = (mdir/'config.json').read_bytes()
    recs = []
    for split in ('valid', 'test'):
        for i in range(6):
            p = tmp_path/f'{split}{i}.png'; _img(i + 7 * (split == 'test'), i % 2 == 1).save(p)
            recs.append(dict(path=str(p), label=['real', 'fake'][i % 2], split=split, source='s'))
    meta = write_metadata(recs, tmp_path/'metadata.jsonl')
    clf = Classifier.from_dir(mdir, backend='torch')
    clf.model = lambda x: torch.stack([torch.zeros(len(x)), torch.zeros(len(x))], 1)   # constant: no information
    with pytest.raises(Exception, match='degenerate calibration'):
        evaluate(clf, meta, out=tmp_path/'rep', save_threshold=True, bs=8, num_workers=0)
    assert (mdir/'config.json').read_bytes() == before

def test_save_calibration_validates(model_dir, tmp_path):
    import shutil
    mdir = tmp_path/'model'; shutil.copytree(model_dir, mdir)
    before = (mdir/'config.json').read_text()
    with pytest.raises(Exception): save_calibration(mdir, threshold=1.5, temperature=1.0)
    with pytest.raises(Exception): save_calibration(mdir, threshold=0.5, temperature=-1.0)
    assert (mdir/'config.json').read_text() == before
    save_calibration(mdir, 0.3, 2.0)
    assert json.loads((mdir/'config.json').read_text())['threshold'] == 0.3

def test_genimage_sample(model_dir, genimage_dir, tmp_path):
    "The per-generator table, plots and report on real images of real generators (untrained model: numbers are noise)."
    sub = tmp_path/'sample'                      # 3 images per generator, linked (never copied)
    for g in sorted(p for p in genimage_dir.iterdir() if p.is_dir()):
        (sub/g.name).mkdir(parents=True)
        for f in sorted(g.glob('*.jpg'))[:3]: (sub/g.name/f.name).symlink_to(f)
    res = evaluate(model_dir, sub, out=tmp_path/'rep', bs=32, num_workers=0)
    ps = pd.DataFrame(res['per_source']).set_index('source')
    assert 'natural' in ps.index and len(ps) >= 4
    assert ps.loc['natural', 'n_fake'] == 0 and (ps.drop(['all', 'natural']).n_real == 0).all()
    assert (ps.drop(['all', 'natural']).auc_vs == 'all real').all()
    assert res['n_errors'] == 0 and res['n'] == ps.loc['all', 'n'] == ps.drop('all').n.sum()
    for f in res['files']: assert (tmp_path/'rep'/f).exists()
