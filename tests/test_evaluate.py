"""Tests of realfake.evaluate: the report folder, the one-decode perturbation grid against `Classifier.predict`,
calibration and the abstain band, atomic outputs, any file name, layouts, and bad input as one-line errors.
(The metrics are tested in test_metrics.py, the perturbations in test_perturb.py, the verdict on constructed models in
test_verdict.py and on trained models in test_audit.py.)"""
import errno, json, os, shutil
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from PIL import Image

from helpers import make_model_dir, run_cli_here
from realfake.core import RealfakeError
from realfake.images import load_image
from realfake.metadata import write_metadata
from realfake.metrics import roc_auc
from realfake.modeldir import ModelConfig, ConfigError
from realfake.perturb import PERTURBATIONS, FAKES_JPEG, fakes_jpeg, perturb_rng
from realfake.predict import Classifier, predict_to_csv
from realfake.evaluate import EvalOptions, evaluate, score_images, load_eval_data
from realfake.calibrate import calibrate, save_calibration
from realfake.figures import FIGURES, GRID_FIGURES

pytestmark = pytest.mark.usefixtures('one_torch_thread')

KEYS = {'model', 'data', 'split', 'preprocess', 'n', 'n_errors', 'threshold', 'temperature', 'overall', 'per_source',
        'calibration', 'audit', 'perturb', 'verdict', 'unsure', 'perturbations', 'options', 'files', 'provenance'}

def _img(seed, fake, w=48, h=40):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 120, (h, w, 3), dtype=np.uint8) + (100 if fake else 0)
    return Image.fromarray(a.astype(np.uint8))

@pytest.fixture(scope='module')
def model_dir(tiny_model_dir): return tiny_model_dir

@pytest.fixture(scope='module')
def gen_folder(tmp_path_factory):
    "natural (JPEG) + two generators (PNG), 14 images and one broken file."
    root = tmp_path_factory.mktemp('gen')
    for k, (src, fake, n) in enumerate([('natural', False, 6), ('gen_a', True, 4), ('gen_b', True, 4)]):
        (root/src).mkdir()
        for i in range(n):
            if fake: _img(10 * k + i, fake).save(root/src/f'{i}.png')
            else: _img(10 * k + i, fake).save(root/src/f'{i}.jpg', quality=80 + i)
    (root/'gen_b'/'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    return root

# ---------------------------------------------------------------- the report folder
def test_each_report_file_written_once(model_dir, gen_folder, tmp_path, monkeypatch):
    "metrics.json is written once, after the card: the card is made from the result in memory, not from metrics.json read back."
    import realfake.evaluate as E, realfake.report as R
    written = []
    monkeypatch.setattr(R, 'atomic_output', _counting(R.atomic_output, written))
    res = E.evaluate(model_dir, gen_folder, out=tmp_path/'rep', bs=8, num_workers=0, calibration=False)
    assert sorted(written) == sorted(n for n in res['files'] if not n.endswith('.png'))          # one write per file
    assert 'model_card.md' in written and json.loads((tmp_path/'rep'/'metrics.json').read_text())['files'] == res['files']

def _counting(f, names:list):
    "`f` (a context manager factory over a destination), recording each destination's name in `names`."
    def g(dest):
        names.append(Path(dest).name); return f(dest)
    return g

@pytest.mark.slow
def test_report_folder_complete(model_dir, gen_folder, tmp_path):
    out = tmp_path/'report'
    res = evaluate(model_dir, gen_folder, out=out, bs=8, num_workers=0, perturb='jpeg_q75,blur_1', audit=True)
    m = json.loads((out/'metrics.json').read_text())
    assert set(m) == KEYS and m['n'] == 14 and m['n_errors'] == 1
    assert res['files'] == m['files'] and res['overall']['auc'] == m['overall']['auc']     # what it returns is what it wrote
    names = {p.name for p in out.iterdir()}
    assert set(m['files']) == names - {'metrics.json'} | {'metrics.json'}          # every file listed, nothing else
    assert not [n for n in names if n.endswith('.tmp')]
    html = (out/'report.html').read_text()
    for f, _ in FIGURES + GRID_FIGURES:
        with Image.open(out/f) as im: im.verify()
        assert f"src='{f}'" in html
    assert 'shortcut' in html or 'inconclusive' in html or 'robust' in html
    assert set(m['overall']) >= {'accuracy', 'balanced_accuracy', 'acc_real', 'acc_fake', 'auc', 'ap', 'eer', 'tpr_at_1fpr',
                                 'tpr_at_5fpr', 'tn', 'fp', 'fn', 'tp', 'ece'}
    ps = pd.read_csv(out/'per_source.csv')
    assert ps.source.tolist() == ['all', 'gen_a', 'gen_b', 'natural'] and ps.set_index('source').loc['gen_b', 'n'] == 4
    pr = pd.read_csv(out/'predictions.csv')
    assert list(pr.columns) == ['path', 'label', 'source', 'prob_fake', 'logit', 'pred', 'n_crops', 'error']
    assert len(pr) == 15 and pr.error.notna().sum() == 1 and 'broken.png' in pr.error.dropna().iloc[0]
    ok = pr[pr.error.isna()]
    assert m['overall']['auc'] == pytest.approx(roc_auc((ok.label == 'fake').astype(int), ok.prob_fake))
    # the grid: clean first, the audit's perturbations and the two asked for, in registry order
    a = pd.read_csv(out/'audit.csv')
    assert a['transform'].tolist() == ['clean', 'jpeg_q95', 'jpeg_q75', 'jpeg_q50', 'webp_q75', 'down_0.5', 'blur_1', FAKES_JPEG]
    assert a.loc[0, 'auc'] == pytest.approx(m['overall']['auc']) and a.loc[0, 'd_auc'] == 0
    g = pd.read_csv(out/'perturb.csv')
    assert len(g) == 8 * 4 and set(g.source) == {'all', 'gen_a', 'gen_b', 'natural'}
    wide = pd.read_csv(out/'perturb_predictions.csv')
    assert list(wide.columns[:4]) == ['path', 'label', 'source', 'clean'] and np.allclose(wide.clean, pr.prob_fake, equal_nan=True)
    assert m['verdict']['verdict'] in ('format shortcut suspected', 'fragile to compression/resizing', 'robust', 'inconclusive')
    assert m['verdict']['evidence'] and m['verdict']['covers'] == ['jpeg_q95', 'jpeg_q75', 'jpeg_q50', 'webp_q75', 'down_0.5', FAKES_JPEG]
    assert a.in_verdict.tolist()[:2] == ['reference', 'judged (both classes alike): ' + ('hurts' if m['verdict']['evidence'][0]['hurts'] else 'holds')]
    assert (a.set_index('transform').loc['blur_1', 'in_verdict']).startswith('outside the verdict')
    assert m['calibration'] is not None and 'random half' in m['calibration']['fitted_on']
    assert m['options']['perturb'] == ['jpeg_q75', 'blur_1'] and m['options']['audit'] is True

@pytest.mark.slow
def test_options_are_one_record(model_dir, gen_folder, tmp_path):
    "Keywords and an EvalOptions mean the same; a bad option fails before scoring."
    o = EvalOptions(bs=8, num_workers=0, calibration=False)
    r1 = evaluate(model_dir, gen_folder, tmp_path/'a', o)
    r2 = evaluate(model_dir, gen_folder, tmp_path/'b', bs=8, num_workers=0, calibration=False)
    assert r1['overall'] == r2['overall'] and r1['options'] == r2['options'] and r1['calibration'] is None
    with pytest.raises(RealfakeError, match="unknown perturbation 'jpg'"): evaluate(model_dir, gen_folder, tmp_path/'c', perturb='jpg')
    assert not (tmp_path/'c').exists()

# ---------------------------------------------------------------- the grid is predict's path
def _folder(root, n=3):
    for i in range(n):
        _img(i, False, 70, 50).save(root/f'r{i}.jpg', quality=85)
        _img(i + 50, True, 60, 60).save(root/f'f{i}.png')
    paths = [str(root/f'r{i}.jpg') for i in range(n)] + [str(root/f'f{i}.png') for i in range(n)]
    return paths, np.r_[np.zeros(n, bool), np.ones(n, bool)]

@pytest.mark.parametrize('spec', [dict(resize=36), dict(resize='native', crops='grid', max_crops=4)], ids=['resize', 'native'])
def test_each_perturbation_scores_like_predict_on_that_file(tmp_path, spec):
    """Clean scores are `Classifier.predict`'s on the files; each perturbed score is predict's on a file holding the
    perturbed image (predict's own `transform` hook); under fakes_jpeg the reals keep their clean score."""
    mdir = make_model_dir(tmp_path/'m', mean=(0.5,) * 3, std=(0.25,) * 3, **spec)
    clf = Classifier.from_dir(mdir, backend='torch')
    paths, fake = _folder(tmp_path)
    perts = list(PERTURBATIONS.values()) + [fakes_jpeg([(70, '4:2:0'), (90, '4:4:4')])]
    sc = score_images(clf, paths, fake, perts, seed=5, bs=8)
    wide = sc.pivot(index='index', columns='perturbation', values='prob_fake')
    assert sc.error.isna().all() and np.allclose(wide['clean'], clf.prob_fake(paths), atol=1e-5)
    for p in perts:
        tf = lambda src, p=p: p(load_image(src), perturb_rng(5, p.name, src))
        want = clf.prob_fake(paths, transform=tf).copy()
        if p.fakes_only: want[~fake] = wide['clean'].to_numpy()[~fake]
        assert np.allclose(wide[p.name], want, atol=1e-5), p.name
        assert not np.allclose(wide[p.name], wide['clean'], atol=1e-7), p.name      # it did change the scores
    n_crops = sc.set_index(['index', 'perturbation']).n_crops
    assert (n_crops.xs('clean', level=1) == (4 if spec.get('crops') == 'grid' else 1)).all()

def test_workers_and_batches_do_not_change_scores(model_dir, tmp_path):
    clf = Classifier.from_dir(model_dir, backend='torch')
    paths, fake = _folder(tmp_path, 4)
    perts = [PERTURBATIONS['noise_5'], fakes_jpeg([(60, '4:2:0'), (95, '4:2:0')])]
    a = score_images(clf, paths, fake, perts, seed=1, bs=2, num_workers=0)
    b = score_images(clf, paths, fake, perts, seed=1, bs=64, num_workers=1)
    assert np.allclose(a.prob_fake, b.prob_fake, atol=1e-5) and a.perturbation.tolist() == b.perturbation.tolist()
    c = score_images(clf, paths, fake, perts, seed=2, bs=64, num_workers=0)
    assert not np.allclose(a.prob_fake, c.prob_fake, atol=1e-7)           # another seed: other noise, other draws

def test_an_error_in_one_perturbation_stays_in_its_row(model_dir, tmp_path):
    clf = Classifier.from_dir(model_dir, backend='torch')
    paths, fake = _folder(tmp_path, 1)
    boom = PERTURBATIONS['blur_1'].__class__('boom', lambda im, rng: 1 / 0, 'fails', 'other')
    sc = score_images(clf, paths + [str(tmp_path/'missing.png')], np.r_[fake, True], [boom, PERTURBATIONS['jpeg_q75']])
    s = sc.set_index(['index', 'perturbation'])
    assert s.loc[(0, 'boom'), 'error'].startswith('boom: cannot read image') and np.isnan(s.loc[(0, 'boom'), 'prob_fake'])
    assert pd.isna(s.loc[(0, 'jpeg_q75'), 'error']) and pd.isna(s.loc[(0, 'clean'), 'error'])
    assert all('missing.png' in s.loc[(2, n), 'error'] for n in ('clean', 'boom', 'jpeg_q75'))

# ---------------------------------------------------------------- a stand-in shortcut model
class _HighFrequency(torch.nn.Module):
    "A stand-in for 'learned the file format': fake = much fine detail. JPEG removes it."
    def forward(self, x):
        hf = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean((1, 2, 3))
        return torch.stack([torch.zeros_like(hf), 100 * (hf - 0.12)], 1)

def test_verdict_on_a_format_detector(model_dir, tmp_path):
    "Reals JPEG (smoothed), fakes PNG: the model keys on fine detail, which JPEG of both classes removes too: fragile, and not cleared of a shortcut."

    rng = np.random.default_rng(0)
    for lab in ('natural', 'gen'):
        (tmp_path/'d'/lab).mkdir(parents=True)
        for i in range(8):
            base = np.tile(np.linspace(60, 200, 40), (40, 1))[..., None].repeat(3, 2) + rng.normal(0, 16, (40, 40, 3))
            im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
            if lab == 'natural': im.save(tmp_path/'d'/lab/f'{i}.jpg', quality=75)   # the JPEG smooths the fine noise away
            else: im.save(tmp_path/'d'/lab/f'{i}.png')
    clf = Classifier.from_dir(model_dir, backend='torch'); clf.model = _HighFrequency()
    res = evaluate(clf, tmp_path/'d', out=tmp_path/'rep', audit=True, bs=8, num_workers=0, calibration=False)
    a = pd.DataFrame(res['audit']).set_index('transform')
    assert a.loc['clean', 'auc'] == 1.0 and a.loc[FAKES_JPEG, 'acc_real'] == 1.0
    assert res['verdict']['verdict'] == 'fragile to compression/resizing', res['verdict']
    assert 'format shortcut can be neither shown nor ruled out' in res['verdict']['reason']
    assert a.loc[FAKES_JPEG, 'd_auc'] <= -0.4 and a.loc[FAKES_JPEG, 'in_verdict'] == 'judged (only the fakes re-encoded): hurts'

# ---------------------------------------------------------------- calibration and the abstain band
class _BrightnessModel(torch.nn.Module):
    "An informative but imperfect stand-in model: brighter is more fake, plus a content-dependent jitter."
    def forward(self, x):
        m = x.mean((1, 2, 3))
        z = 2 * (m + 0.27) + 2.5 * torch.sin(1000 * m)
        return torch.stack([torch.zeros_like(z), z], 1)

def _metadata(tmp_path, splits=(('valid', 40), ('test', 16))):
    recs = []
    for split, n in splits:
        for i in range(n):
            fake = i % 2 == 1
            p = tmp_path/'img'/f'{split}_{i}.png'; p.parent.mkdir(exist_ok=True)
            _img(i + 100 * (split == 'test'), fake).save(p)
            recs.append(dict(path=str(p), label='fake' if fake else 'real', split=split, source='g' if fake else 'r'))
    return write_metadata(recs, tmp_path/'metadata.jsonl')

def test_metadata_input_and_save_threshold(model_dir, tmp_path):
    mdir = tmp_path/'model'; shutil.copytree(model_dir, mdir)
    meta = _metadata(tmp_path)
    clf = Classifier.from_dir(mdir, backend='torch'); clf.model = _BrightnessModel()
    (mdir/'config.json').chmod(0o644)
    res = evaluate(clf, meta, out=tmp_path/'rep', save_threshold=True, bs=8, num_workers=0, threshold_method='fpr', target_fpr=0.25)
    assert res['n'] == 16 and 'split=test' in res['data'] and res['split'] == 'test'
    assert (mdir/'config.json').stat().st_mode & 0o777 == 0o644          # permissions kept
    c = res['calibration']
    assert c['fitted_on'] == 'split valid' and c['n_calib'] == 40 and c['n_test'] == 16 and c['warnings'] == []
    cfg = json.loads((mdir/'config.json').read_text())
    assert cfg['threshold'] == pytest.approx(c['threshold']) and cfg['temperature'] == pytest.approx(c['temperature'])
    assert cfg['temperature'] != 1.0 and cfg['unsure'] is None
    ModelConfig.from_json((mdir/'config.json').read_text())
    assert (mdir/'model.safetensors').read_bytes() == (model_dir/'model.safetensors').read_bytes()

@pytest.mark.slow
def test_abstain_band_saved_and_shown_everywhere(model_dir, tmp_path):
    "--unsure_coverage fits a band with the calibration; saved, it makes predict answer 'unsure', and the report shows it."
    mdir = tmp_path/'model'; shutil.copytree(model_dir, mdir)
    meta = _metadata(tmp_path, (('valid', 60), ('test', 30)))
    clf = Classifier.from_dir(mdir, backend='torch'); clf.model = _BrightnessModel()
    res = evaluate(clf, meta, out=tmp_path/'rep', save_threshold=True, unsure_coverage=0.7, bs=8, num_workers=0)
    band = res['calibration']['unsure']
    lo, hi = band['unsure']
    assert lo < res['calibration']['threshold'] < hi and band['coverage'] >= 0.7 and 0 < band['test']['coverage'] < 1
    cfg = json.loads((mdir/'config.json').read_text())
    assert cfg['unsure'] == pytest.approx([lo, hi])
    clf2 = Classifier.from_dir(mdir, backend='torch'); clf2.model = _BrightnessModel()
    paths = pd.read_csv(tmp_path/'rep'/'predictions.csv').path.tolist()
    s = predict_to_csv(paths, clf2, out=tmp_path/'pred.csv', bs=8, num_workers=0, progress=False)
    pred = pd.read_csv(tmp_path/'pred.csv')
    assert s['scored'] == 30 and 'unsure' in set(pred.label)
    assert pred.label.eq('unsure').mean() == pytest.approx(band['test']['unsure_share'], abs=1e-9)
    res2 = evaluate(clf2, meta, out=tmp_path/'rep2', bs=8, num_workers=0, calibration=False)
    assert res2['unsure']['band'] == pytest.approx([lo, hi]) and res2['unsure']['unsure_share'] == pytest.approx(pred.label.eq('unsure').mean())
    assert 'unsure' in set(pd.read_csv(tmp_path/'rep2'/'predictions.csv').pred)
    assert 'unsure share' in (tmp_path/'rep2'/'report.html').read_text() and (tmp_path/'rep2'/'risk_coverage.png').exists()
    # re-calibrating without a band removes the stale one
    evaluate(clf2, meta, out=tmp_path/'rep3', save_threshold=True, bs=8, num_workers=0)
    assert json.loads((mdir/'config.json').read_text())['unsure'] is None

def test_refuses_to_save_a_degenerate_calibration(model_dir, tmp_path):
    mdir = tmp_path/'model'; shutil.copytree(model_dir, mdir)
    before = (mdir/'config.json').read_bytes()
    meta = _metadata(tmp_path, (('valid', 6), ('test', 6)))
    clf = Classifier.from_dir(mdir, backend='torch')
    clf.model = lambda x: torch.stack([torch.zeros(len(x)), torch.zeros(len(x))], 1)   # constant: no information
    with pytest.raises(RealfakeError, match='degenerate calibration'):
        evaluate(clf, meta, out=tmp_path/'rep', save_threshold=True, bs=8, num_workers=0)
    assert (mdir/'config.json').read_bytes() == before

def test_save_calibration_validates(model_dir, tmp_path):
    mdir = tmp_path/'model'; shutil.copytree(model_dir, mdir)
    before = (mdir/'config.json').read_text()
    with pytest.raises(ConfigError, match='threshold'): save_calibration(mdir, threshold=1.5, temperature=1.0)
    with pytest.raises(ConfigError, match='temperature'): save_calibration(mdir, threshold=0.5, temperature=-1.0)
    with pytest.raises(ConfigError, match='unsure'): save_calibration(mdir, 0.5, 1.0, unsure=[0.7, 0.2])
    assert (mdir/'config.json').read_text() == before
    save_calibration(mdir, 0.3, 2.0, [0.2, 0.4])
    assert json.loads((mdir/'config.json').read_text())['unsure'] == [0.2, 0.4]

def test_calibrate_reports_before_after_and_flags_degenerate_fits():
    rng = np.random.default_rng(2)
    d = rng.normal(0, 4, 4000); y = (rng.random(4000) < 1 / (1 + np.exp(-d / 3))).astype(int)
    c = calibrate(d[:2000], y[:2000], d[2000:], y[2000:])
    assert c['temperature'] == pytest.approx(3, rel=0.15) and c['ece_after'] < c['ece_before'] / 2 and c['warnings'] == []
    rng = np.random.default_rng(3)
    y2 = (rng.random(400) < 0.8).astype(int); noise = rng.normal(0, 1, 400)    # logits unrelated to the labels
    assert calibrate(noise[:200], y2[:200], noise[200:], y2[200:])['warnings']
    l3, y3 = np.array([-3., -2, 2, 3, .5, -.5, 1, -1]), np.array([1, 0, 1, 0, 1, 0, 1, 0])   # the surest answers are wrong
    c = calibrate(l3, y3, l3, y3, unsure_accuracy=1.0)                     # out of reach: reported, not raised
    assert c['unsure']['unsure'] is None and 'no abstain band' in c['unsure']['error']

# ---------------------------------------------------------------- outputs: atomic, any file name
def test_full_disk_names_the_file_and_leaves_the_old_one(model_dir, gen_folder, tmp_path, monkeypatch):
    out = tmp_path/'rep'
    evaluate(model_dir, gen_folder, out=out, bs=8, num_workers=0, calibration=False)
    before = (out/'predictions.csv').read_bytes()
    def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(pd.DataFrame, 'to_csv', full)
    with pytest.raises(RealfakeError, match=r'cannot write .*predictions\.csv: No space left on device'):
        evaluate(model_dir, gen_folder, out=out, bs=8, num_workers=0, calibration=False)
    assert (out/'predictions.csv').read_bytes() == before and not list(out.glob('.*.tmp'))
    monkeypatch.undo()
    import matplotlib.figure
    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', full)
    with pytest.raises(RealfakeError, match=r'cannot write .*roc\.png'):
        evaluate(model_dir, gen_folder, out=out, bs=8, num_workers=0, calibration=False)
    assert not list(out.glob('.*.tmp'))

def test_any_file_name_and_formula_sources(model_dir, tmp_path):
    "A file name that is not UTF-8 and a source named like a spreadsheet formula: reported, escaped, defused."
    root = tmp_path/'d'
    bad_dir, bad_file = os.fsdecode(b'gen\xff'), os.fsdecode(b'caf\xe9.png')
    for lab, n in (('natural', 3), (bad_dir, 3), ('=cmd', 3)):
        (root/lab).mkdir(parents=True)
        for i in range(n): _img(i + 7 * len(lab), lab != 'natural').save(root/lab/(bad_file if i == 0 else f'{i}.png'))
    res = evaluate(model_dir, root, out=tmp_path/'rep', perturb='jpeg_q75', bs=8, num_workers=0)
    assert res['n'] == 9 and res['n_errors'] == 0
    pr = pd.read_csv(tmp_path/'rep'/'predictions.csv')
    assert pr.path.str.contains(r'caf\\xe9\.png').sum() == 3 and (root/'natural'/bad_file).exists()
    assert set(pr.source) == {'natural', 'gen\\xff', "'=cmd"}
    assert "'=cmd" in set(pd.read_csv(tmp_path/'rep'/'per_source.csv').source)
    assert "'=cmd" in set(pd.read_csv(tmp_path/'rep'/'perturb.csv').source)
    html = (tmp_path/'rep'/'report.html').read_text(encoding='utf-8')
    assert 'gen\\xff' in html
    json.loads((tmp_path/'rep'/'metrics.json').read_text(encoding='utf-8'))

# ---------------------------------------------------------------- inputs
def test_genimage_layout(model_dir, tmp_path):
    root = tmp_path/'GenImage'
    for gen in ('sdv4', 'midjourney'):
        for split, folder in (('val', 'ai'), ('val', 'nature'), ('train', 'ai'), ('train', 'nature')):
            d = root/gen/split/folder; d.mkdir(parents=True)
            for i in range(2): _img(i + 3 * len(gen), folder == 'ai').save(d/f'{i}.png')
    res = evaluate(model_dir, root, out=tmp_path/'rep', layout='genimage', bs=8, num_workers=0)
    assert res['split'] == 'valid' and res['n'] == 8
    assert {r['source'] for r in res['per_source']} == {'all', 'sdv4', 'midjourney'}
    d = load_eval_data(root, EvalOptions(layout='genimage', split='train'))
    assert len(d.ev) == 8 and d.cal is None

def test_csv_manifest(model_dir, gen_folder, tmp_path):
    rows = [dict(path=str(p), label='real' if p.parent.name == 'natural' else 'fake') for p in sorted(gen_folder.rglob('*.*g'))]
    pd.DataFrame(rows).to_csv(tmp_path/'m.csv', index=False)
    d = load_eval_data(tmp_path/'m.csv')
    assert len(d.ev) == 15 and set(d.ev.label) == {'real', 'fake'}

def test_bad_input_is_a_clear_error(model_dir, gen_folder, tmp_path):
    with pytest.raises(RealfakeError, match="no records in split 'test'"): load_eval_data(_metadata(tmp_path, (('valid', 4),)), EvalOptions(split='test'))
    only_fake = tmp_path/'f'; (only_fake/'gen').mkdir(parents=True); _img(0, True).save(only_fake/'gen'/'a.png')
    with pytest.raises(RealfakeError, match=r'no real images \(only 1 fake\)'): load_eval_data(only_fake)
    with pytest.raises(RealfakeError, match='layout must be one of'): EvalOptions(layout='imagenet')
    with pytest.raises(RealfakeError, match='no such metadata file or folder'): load_eval_data(tmp_path/'nope')
    with pytest.raises(RealfakeError, match=f'{FAKES_JPEG} left out: none of the real images is a JPEG'):
        evaluate(model_dir, _folder_png(tmp_path), out=tmp_path/'r', perturb=FAKES_JPEG, num_workers=0)

def _folder_png(tmp_path):
    root = tmp_path/'png'
    for lab in ('natural', 'gen'):
        (root/lab).mkdir(parents=True)
        for i in range(2): _img(i, lab == 'gen').save(root/lab/f'{i}.png')
    return root

def test_cli_help_and_one_line_errors(model_dir, gen_folder, tmp_path):
    r = run_cli_here('realfake_evaluate', '--help')
    assert r.returncode == 0
    for opt in ('--perturb', '--audit', '--layout', '--unsure_accuracy', '--unsure_coverage', '--save_threshold', '--no_calibration',
                '--watermarks'):
        assert opt in r.stdout, opt
    r = run_cli_here('realfake_evaluate', gen_folder, '--perturb', 'jpeg_q800', '--model', model_dir, '--out', tmp_path/'rep')
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and 'Traceback' not in r.stderr and lines[-1].startswith('realfake_evaluate: error: '), r.stderr[-2000:]
    assert "unknown perturbation 'jpeg_q800'" in lines[-1] and not (tmp_path/'rep').exists()

def test_cli_perturb_runs(model_dir, gen_folder, tmp_path):
    r = run_cli_here('realfake_evaluate', gen_folder, '--model', model_dir, '--out', tmp_path/'rep', '--perturb', 'web,hard,jpeg_q65',
                     '--bs', 8, '--num_workers', 0)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'verdict: inconclusive' in r.stdout and 'report:' in r.stdout
    assert pd.read_csv(tmp_path/'rep'/'audit.csv')['transform'].tolist() == ['clean', 'jpeg_q65', 'web', 'hard']   # GenImage's q65, any quality

def test_genimage_sample(model_dir, genimage_dir, tmp_path):
    "The per-generator table and report on real images of real generators (untrained model: numbers are noise)."
    sub = tmp_path/'sample'                      # 3 images per generator, linked (never copied)
    for g in sorted(p for p in genimage_dir.iterdir() if p.is_dir()):
        (sub/g.name).mkdir(parents=True)
        for f in sorted(g.glob('*.jpg'))[:3]: (sub/g.name/f.name).symlink_to(f)
    res = evaluate(model_dir, sub, out=tmp_path/'rep', bs=32, num_workers=0, perturb='jpeg_q75,fakes_jpeg')
    ps = pd.DataFrame(res['per_source']).set_index('source')
    assert 'natural' in ps.index and len(ps) >= 4
    assert ps.loc['natural', 'n_fake'] == 0 and (ps.drop(['all', 'natural']).n_real == 0).all()
    assert (ps.drop(['all', 'natural']).auc_vs == 'all real').all()
    assert res['n_errors'] == 0 and res['n'] == ps.loc['all', 'n'] == ps.drop('all').n.sum()
    assert [r['transform'] for r in res['audit']] == ['clean', 'jpeg_q75', FAKES_JPEG]
    for f in res['files']: assert (tmp_path/'rep'/f).exists()

def test_heatmaps_drawn_over_the_confident_grids(model_dir, gen_folder, tmp_path):
    "--heatmaps: the most/least confident grids show the model's evidence (realfake.explain) over each image."
    from PIL import Image
    plain = evaluate(model_dir, gen_folder, out=tmp_path/'plain', bs=8, num_workers=0, calibration=False)
    heat = evaluate(model_dir, gen_folder, out=tmp_path/'heat', bs=8, num_workers=0, calibration=False, heatmaps=True)
    assert plain['overall'] == heat['overall']
    a, b = (np.asarray(Image.open(tmp_path/d/'most_confident_fake.png'), np.float32) for d in ('plain', 'heat'))
    assert b.shape == (a.shape[0] + 16, a.shape[1], 3)                 # the heatmap grid has one more line: the key to its colours
    key = b[28:44]
    assert (key.max(-1) - key.min(-1)).max() > 100                    # coloured (the inferno bar), not only black text on white
    assert np.abs(a[28:] - b[44:]).mean() > 1

def test_per_source_marks_small_and_absent_sources(model_dir, tmp_path):
    "A generator with under 10 images is 'too few to judge'; one with no image in the split, or none readable, is listed as absent."
    recs, img = [], tmp_path/'img'; img.mkdir()
    plan = [('test', 'real', 'r', 12), ('test', 'fake', 'g', 11), ('test', 'fake', 'tiny', 1), ('test', 'fake', 'broken', 1),
            ('valid', 'real', 'r', 4), ('valid', 'fake', 'adm', 4)]
    for split, label, src, n in plan:
        for i in range(n):
            p = img/f'{split}_{src}_{i}.png'
            if src == 'broken': p.write_bytes(b'\x89PNG\r\n\x1a\n garbage')
            else: _img(len(recs), label == 'fake').save(p)
            recs.append(dict(path=str(p), label=label, split=split, source=src))
    res = evaluate(model_dir, write_metadata(recs, tmp_path/'m.jsonl'), out=tmp_path/'rep', bs=8, num_workers=0, calibration=False)
    ps = pd.DataFrame(res['per_source']).set_index('source')
    assert ps.judge.to_dict() == {'all': '', 'g': '', 'r': '', 'tiny': 'too few to judge (n < 10)',
                                  'adm': 'absent: no image in split test', 'broken': 'absent: no readable image'}
    assert ps.loc['adm', 'n'] == 0 and np.isnan(ps.loc['adm', 'auc']) and ps.loc['tiny', 'n'] == 1
    html = (tmp_path/'rep'/'report.html').read_text()
    assert 'too few to judge (n &lt; 10)' in html and 'absent: no image in split test' in html

# ---------------------------------------------------------------- provenance beside the score
A1111 = 'a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 48x40, Model: sd15'

def _a1111_folder(root, text:bool):
    "natural: 6 plain PNGs; sd: 4 PNGs, carrying A1111 `parameters` text when `text` (same pixels either way)."
    from PIL.PngImagePlugin import PngInfo
    for k, (src, fake, n) in enumerate([('natural', False, 6), ('sd', True, 4)]):
        (root/src).mkdir(parents=True)
        for i in range(n):
            info = PngInfo()
            if fake and text: info.add_text('parameters', A1111)
            _img(10 * k + i, fake).save(root/src/f'{i}.png', pnginfo=info)
    return root

def test_provenance_per_source_and_the_audit_warning(model_dir, tmp_path):
    "Only the fakes carry A1111 text: provenance.csv counts it per source; the audit warns with the numbers, beside an unchanged verdict."
    res = evaluate(model_dir, _a1111_folder(tmp_path/'d', True), out=tmp_path/'rep', audit=True, bs=8, num_workers=0, calibration=False)
    t = pd.read_csv(tmp_path/'rep'/'provenance.csv').set_index('source')
    assert t.to_dict('index') == {
        'all': dict(n=10, c2pa=0, watermark=0, generator_text=4, watermark_checked=0, unreadable=0),
        'natural': dict(n=6, c2pa=0, watermark=0, generator_text=0, watermark_checked=0, unreadable=0),
        'sd': dict(n=4, c2pa=0, watermark=0, generator_text=4, watermark_checked=0, unreadable=0)}
    p = json.loads((tmp_path/'rep'/'metrics.json').read_text())['provenance']
    assert p['per_class']['text claiming generated'] == {'real': 0, 'fake': 4} and p['per_class']['files'] == {'real': 6, 'fake': 4}
    assert len(p['warnings']) == 1 and p['warnings'][0].startswith('text claiming generated: 4 of 4 fake images (100.0%) carry it, 0 of 6 real (0.0%)')
    assert 'watermarks not decoded' in p['read'] and 'provenance.csv' in res['files']
    html = (tmp_path/'rep'/'report.html').read_text()
    assert 'not part of the verdict' in html and '4 of 4 fake images' in html and 'Provenance evidence per source' in html
    plain = evaluate(model_dir, _a1111_folder(tmp_path/'p', False), out=tmp_path/'rep2', audit=True, bs=8, num_workers=0, calibration=False)
    assert plain['provenance']['warnings'] == [] and plain['verdict'] == res['verdict']          # the warning does not move the verdict
    assert plain['overall'] == res['overall']                                                     # same pixels, same scores
    noaudit = evaluate(model_dir, tmp_path/'d', out=tmp_path/'rep3', bs=8, num_workers=0, calibration=False)
    assert noaudit['provenance']['warnings'] is None and noaudit['provenance']['per_source'] == p['per_source']

def test_scores_unchanged_by_the_provenance_reading(model_dir, tmp_path):
    "evaluate's scores, with watermarks decoded or not, are score_images' scores of the same files (the reading comes after, apart)."
    root = _a1111_folder(tmp_path/'d', True)
    a = evaluate(model_dir, root, out=tmp_path/'a', bs=8, num_workers=0, calibration=False)
    b = evaluate(model_dir, root, out=tmp_path/'b', bs=8, num_workers=0, calibration=False, watermarks=True)
    pa, pb = (pd.read_csv(tmp_path/d/'predictions.csv') for d in 'ab')
    direct = score_images(Classifier.from_dir(model_dir, backend='torch'), pa.path, bs=8, num_workers=0)
    assert pa.prob_fake.tolist() == pb.prob_fake.tolist() and np.allclose(pa.prob_fake, direct.prob_fake, atol=1e-6)
    assert 'watermarks not decoded' in a['provenance']['read'] and b['provenance']['read'] == 'headers and watermarks'
    assert b['options']['watermarks'] is True and b['provenance']['per_source'][0]['generator_text'] == 4

def test_cli_prints_the_provenance_and_its_warning_after_the_verdict(model_dir, tmp_path):
    root = _a1111_folder(tmp_path/'d', True)
    r = run_cli_here('realfake_evaluate', root, '--model', model_dir, '--out', tmp_path/'rep', '--audit', '--no_calibration', '--bs', 8,
                     '--workers', 0)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    v = next(i for i, l in enumerate(out) if l.startswith('verdict: '))
    assert out[v + 1].startswith('provenance (headers only') and 'of 10 images, 0 carry c2pa, 0 carry watermark, 4 carry generator text' in out[v + 1]
    assert out[v + 2].startswith('provenance warning (not part of the verdict): text claiming generated: 4 of 4 fake images (100.0%)')

def test_watermarks_counted_only_when_asked_and_scores_unchanged(model_dir, tmp_path):
    "Fakes marked with SD 1.x's invisible watermark: --watermarks counts them (each image checked); headers only counts none; same scores."
    from test_provenance import embed, photo
    for src, fake in (('natural', False), ('sd', True)):
        (tmp_path/'d'/src).mkdir(parents=True)
        for i in range(3):
            px = photo(320, 320, seed=i + 10 * fake)
            Image.fromarray(embed(px, 'StableDiffusionV1') if fake else px).save(tmp_path/'d'/src/f'{i}.png')
    a = evaluate(model_dir, tmp_path/'d', out=tmp_path/'a', bs=8, num_workers=0, calibration=False)
    b = evaluate(model_dir, tmp_path/'d', out=tmp_path/'b', bs=8, num_workers=0, calibration=False, watermarks=True, audit=True)
    ta, tb = (pd.DataFrame(r['provenance']['per_source']).set_index('source') for r in (a, b))
    assert ta[['watermark', 'watermark_checked']].to_dict('index') == {s: dict(watermark=0, watermark_checked=0) for s in ('all', 'natural', 'sd')}
    assert tb[['watermark', 'watermark_checked']].to_dict('index') == {'all': dict(watermark=3, watermark_checked=6),
                                                                      'natural': dict(watermark=0, watermark_checked=3),
                                                                      'sd': dict(watermark=3, watermark_checked=3)}
    assert b['provenance']['warnings'][0].startswith('watermark claiming generated: 3 of 3 fake images (100.0%) carry it, 0 of 3 real')
    pa, pb = (pd.read_csv(tmp_path/d/'predictions.csv') for d in 'ab')
    assert pa.prob_fake.tolist() == pb.prob_fake.tolist()
