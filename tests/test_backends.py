"""Tests of realfake.backends and the CPU runtimes behind `--backend`: parity of every backend with PyTorch on both
resize policies (JPEG and PNG inputs), stale / corrupt / unrecorded files refused with a message naming the file (and
rebuilt by realfake_export), `auto` never picking an unverified file, int8 refused when its stored agreement report
failed its thresholds unless forced, and the README's install line for the extra."""
import json, re, shutil
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from PIL import Image

pytest.importorskip('onnx'); pytest.importorskip('onnxruntime')
from safetensors.torch import save_file
from realfake.backends import (BACKENDS, FILES, RECORD_FILE, BackendFileError, pick_backend, read_record, verify,
                               int8_ok)
from realfake.modeldir import build_network
from realfake.metadata import write_metadata
from realfake.predict import Classifier, realfake_predict
from realfake.export import export_onnx, export_openvino, export_int8, agreement_report, realfake_export

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip('openvino', reason='the OpenVINO runtime (realfake[cpu])')

def _images(d:Path, n:int=6, seed:int=0) -> list:
    "n small images, alternately JPEG and PNG, of varied sizes (some smaller than the crop)."
    d.mkdir(parents=True, exist_ok=True); rng = np.random.default_rng(seed); out = []
    for i in range(n):
        a = rng.integers(0, 256, (24 + 9 * i, 30 + 7 * i, 3), dtype=np.uint8)
        p = d/f'img{i}.{"jpg" if i % 2 == 0 else "png"}'
        Image.fromarray(a).save(p, quality=90) if i % 2 == 0 else Image.fromarray(a).save(p)
        out.append(p)
    return out

@pytest.fixture(scope='module')
def exported(tiny_model_dir, tmp_path_factory):
    "The tiny model with model.onnx and the OpenVINO IR written and recorded."
    d = tmp_path_factory.mktemp('be')/'model'; shutil.copytree(tiny_model_dir, d)
    export_onnx(d); export_openvino(d)
    return d

@pytest.fixture(scope='module')
def images(tmp_path_factory): return _images(tmp_path_factory.mktemp('imgs'))

def _copy(src, tmp_path, name='m') -> Path:
    d = tmp_path/name; shutil.copytree(src, d); return d

@pytest.mark.parametrize('resize', ['resize', 'native'])
@pytest.mark.parametrize('backend', ['onnx', 'openvino'])
def test_parity_with_torch(exported, images, backend, resize):
    "Every backend gives torch's logits (max |Δ| <= 1e-4) on JPEG and PNG files, resize and native (grid) policy."
    spec = dict(resize='native', crops='grid', max_crops=4) if resize == 'native' else {}
    ct = Classifier.from_dir(exported, backend='torch', device='cpu').with_preprocess(**spec)
    cb = Classifier.from_dir(exported, backend=backend).with_preprocess(**spec)
    assert cb.backend == backend and cb.model is None
    dt, db = ct.predict(images, bs=4), cb.predict(images, bs=4)
    assert dt.error.isna().all() and db.error.isna().all()
    assert (dt.n_crops == db.n_crops).all() and (resize == 'resize' or dt.n_crops.max() > 1)
    assert np.abs(dt.logit - db.logit).max() <= 1e-4 and np.abs(dt.logit).max() > 1e-3
    assert (dt.label == db.label).all()

def test_record_holds_what_was_checked(exported):
    rec = read_record(exported)
    assert set(rec['files']) >= {'onnx/fp32', 'openvino/fp32'}
    for k in ('onnx/fp32', 'openvino/fp32'):
        e = rec['files'][k]
        assert e['parity'] <= 1e-4 and e['img_per_s'] > 0 and len(e['weights_sha256']) == 64
        assert set(e['files']) == set(FILES[tuple(k.split('/'))])

def _stale(d):
    torch.manual_seed(7)
    save_file({k: v.contiguous() for k, v in build_network('convnext_atto').state_dict().items()}, str(d/'model.safetensors'))

def _corrupt(f):
    b = bytearray(f.read_bytes()); b[len(b) // 2] ^= 0xFF; f.write_bytes(bytes(b))

DEFECTS = {'stale': (lambda d, f: _stale(d), 'stale'),
           'corrupt': (lambda d, f: _corrupt(d/f), 'corrupt or replaced'),
           'truncated': (lambda d, f: (d/f).write_bytes((d/f).read_bytes()[:100]), 'corrupt or replaced'),
           'unrecorded': (lambda d, f: (d/RECORD_FILE).write_text(json.dumps(dict(format='realfake-backends', version=1, files={}))), 'not recorded'),
           'missing': (lambda d, f: (d/f).unlink(), 'not found'),
           'bad record': (lambda d, f: (d/RECORD_FILE).write_text('{not json'), 'not JSON')}
FILES_OF = [('onnx', 'model.onnx'), ('openvino', 'model.openvino.xml'), ('openvino', 'model.openvino.bin')]

@pytest.mark.parametrize('defect', list(DEFECTS))
@pytest.mark.parametrize('backend,fname', FILES_OF)
def test_bad_files_refused_by_name(exported, tmp_path, backend, fname, defect):
    "Asked for by name, a stale, corrupt, truncated, unrecorded or missing file is refused with one clear message."
    d = _copy(exported, tmp_path)
    if defect == 'unrecorded' and backend == 'onnx':    # model.onnx alone is still checked by its own metadata (older exports)
        _stale(d)
    make, msg = DEFECTS[defect]
    make(d, fname)
    with pytest.raises(BackendFileError, match=re.escape(msg)) as e:
        Classifier.from_dir(d, backend=backend)
    assert str(d) in str(e.value) or d.name in str(e.value)
    assert Classifier.from_dir(d, device='cpu').backend != backend     # auto never runs it: another good backend, or torch

@pytest.mark.slow
@pytest.mark.parametrize('backend', ['onnx', 'openvino'])
def test_export_rebuilds_stale_files(exported, tmp_path, images, backend):
    d = _copy(exported, tmp_path); _stale(d)
    with pytest.raises(BackendFileError, match='stale'): Classifier.from_dir(d, backend=backend)
    realfake_export(model=str(d))
    verify(d, backend)
    ct, cb = Classifier.from_dir(d, backend='torch', device='cpu'), Classifier.from_dir(d, backend=backend)
    assert np.abs(ct.predict(images).logit - cb.predict(images).logit).max() <= 1e-4

def test_auto_picks_the_fastest_verified(exported, tmp_path):
    d = _copy(exported, tmp_path)
    rec = json.loads((d/RECORD_FILE).read_text())
    for fast in ('onnx', 'openvino'):
        for k, e in rec['files'].items(): e['img_per_s'] = 100.0 if k.startswith(fast) else 1.0
        (d/RECORD_FILE).write_text(json.dumps(rec))
        assert pick_backend(d) == (fast, 'fp32') and Classifier.from_dir(d, device='cpu').backend == fast
    assert pick_backend(d, on_gpu=True) == ('torch', 'fp32')

def test_auto_never_picks_an_unverified_file(exported, tmp_path):
    "An unrecorded file, or one exported without its check, is never what `auto` runs."
    d = _copy(exported, tmp_path)
    rec = json.loads((d/RECORD_FILE).read_text())
    rec['files']['openvino/fp32']['img_per_s'] = 1e9
    rec['files']['openvino/fp32']['verified'] = False
    (d/RECORD_FILE).write_text(json.dumps(rec))
    assert pick_backend(d) == ('onnx', 'fp32')
    del rec['files']['openvino/fp32']; del rec['files']['onnx/fp32']['weights_sha256']    # unrecorded, and a broken entry
    (d/RECORD_FILE).write_text(json.dumps(rec))
    assert pick_backend(d) == ('torch', 'fp32')
    assert Classifier.from_dir(d, device='cpu').backend == 'torch'

def test_backend_choices_are_one_constant():
    assert BACKENDS == ('auto', 'torch', 'onnx', 'openvino')
    with pytest.raises(ValueError, match='openvino'): Classifier.from_dir(ROOT, backend='tensorrt')

def _metadata(tmp_path) -> Path:
    recs = []
    for split, seed in (('valid', 1), ('test', 2)):
        for i, p in enumerate(_images(tmp_path/split, 8, seed)):
            recs.append(dict(path=str(p), label=['real', 'fake'][i % 2], split=split, source=['cam', 'sd'][i % 2]))
    return write_metadata(recs, tmp_path/'meta.jsonl')

@pytest.fixture(scope='module')
def quantized(exported, tmp_path_factory):
    t = tmp_path_factory.mktemp('q')
    d = _copy(exported, t)
    out = export_int8(d, _metadata(t), n_calib=8, max_auc_drop=1.0, max_flips=1.0)
    return d, out

def test_int8_written_with_its_report(quantized):
    d, out = quantized
    assert set(out) == {'onnx', 'openvino'}
    a = out['onnx']['agreement']
    assert a['n'] == 8 and set(a['per_source']) == {'cam', 'sd'} and a['per_source']['cam']['n'] == 4
    assert 0 <= a['p99_dprob'] <= a['max_dprob'] < 1 and a['passed'] and a['calibration']['split'] == 'valid'
    assert read_record(d)['files']['onnx/int8']['agreement'] == json.loads(json.dumps(a))
    assert int8_ok(d, 'onnx') and pick_backend(d, 'auto')[1] == 'int8'
    c = Classifier.from_dir(d, backend='onnx', precision='int8')
    assert c.precision == 'int8' and c.predict([np.zeros((40, 40, 3), np.uint8)]).error.isna().all()

def test_int8_failing_report_refused_unless_forced(quantized, tmp_path, images):
    d = _copy(quantized[0], tmp_path)
    rec = json.loads((d/RECORD_FILE).read_text())
    for b in ('onnx', 'openvino'):
        a = rec['files'][f'{b}/int8']['agreement']; a['passed'], a['failed'] = False, ['AUC fell by 0.0100 > 0.002']
    (d/RECORD_FILE).write_text(json.dumps(rec))
    for b in ('onnx', 'openvino'):
        with pytest.raises(BackendFileError, match='failed its thresholds.*AUC fell'): Classifier.from_dir(d, backend=b, precision='int8')
        assert Classifier.from_dir(d, backend=b, precision='auto').precision == 'fp32'   # auto does not use it
        assert Classifier.from_dir(d, backend=b, precision='int8', force_int8=True).precision == 'int8'
    with pytest.raises(BackendFileError, match='force_int8'): Classifier.from_dir(d, precision='int8')
    assert Classifier.from_dir(d, precision='auto', device='cpu').precision == 'fp32'
    with pytest.raises(BackendFileError, match='force_int8'):
        realfake_predict([str(images[0])], model=str(d), out=str(tmp_path/'p.csv'), precision='int8', no_progress=True)
    s = realfake_predict([str(images[0])], model=str(d), out=str(tmp_path/'p.csv'), precision='int8', force_int8=True, no_progress=True)
    assert s['scored'] == 1
    with pytest.raises(Exception, match='int8 runs on'): Classifier.from_dir(d, backend='torch', precision='int8')

def test_agreement_report_says_when_int8_erases_the_signal():
    f = lambda p: pd.DataFrame(dict(prob_fake=p, error=[None] * len(p)))
    y, src = np.array([0, 0, 1, 1, 0, 1]), np.array(['a', 'a', 'a', 'b', 'b', 'b'])
    pf = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.7])
    same = agreement_report(f(pf), f(pf + 0.001), y, src)
    assert same['passed'] and same['label_flips'] == 0 and np.isclose(same['max_dprob'], 0.001) and 'agrees' in same['note']
    pq = np.array([0.1, 0.2, 0.9, 0.25, 0.3, 0.4])          # source b's fakes lose their trace
    bad = agreement_report(f(pf), f(pq), y, src)
    assert not bad['passed'] and bad['label_flips'] == 2 and np.isclose(bad['max_dprob'], 0.55)
    assert 'erased' in bad['note'] and bad['sources_erased'] == ['b'] and bad['per_source']['a']['label_flips'] == 0
    assert bad['auc_change'] < 0 and json.loads(json.dumps(bad, allow_nan=False))

def test_readme_install_line_for_the_extra():
    readme, ini = (ROOT/'README.md').read_text(encoding='utf-8'), (ROOT/'settings.ini').read_text(encoding='utf-8')
    assert 'pip install -e ".[cpu]"' in readme
    extra = re.search(r'^extra_cpu = (.*)$', ini, re.M).group(1).split()
    assert {re.split('[<>=]', r)[0] for r in extra} == {'openvino', 'onnx', 'onnxruntime'}
    assert 'openvino' in re.search(r'^dev_requirements = (.*)$', ini, re.M).group(1)

def test_missing_openvino_clear_error(exported, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'openvino', None)
    with pytest.raises(ImportError, match=r"realfake\[cpu\]"): Classifier.from_dir(exported, backend='openvino')
    assert Classifier.from_dir(exported, device='cpu').backend == 'onnx'

@pytest.mark.slow
def test_cli_refuses_a_corrupt_file_in_one_line(exported, tmp_path, images, run_cli):
    "realfake_predict --backend openvino on a corrupt IR: exit 2, one line naming the file; realfake_export rebuilds it."
    d = _copy(exported, tmp_path); _corrupt(d/'model.openvino.bin')
    r = run_cli('realfake_predict', images[0], '--model', d, '--backend', 'openvino', '--out', tmp_path/'p.csv', timeout=120)
    assert r.returncode == 2 and 'model.openvino.bin' in r.stderr and 'corrupt or replaced' in r.stderr, r.stderr
    assert len([l for l in r.stderr.splitlines() if l.strip()]) == 1 and not (tmp_path/'p.csv').exists()
    r = run_cli('realfake_export', '--model', d, timeout=180)
    assert r.returncode == 0 and 'model.openvino.xml' in r.stdout, r.stderr
    r = run_cli('realfake_predict', images[0], '--model', d, '--backend', 'openvino', '--out', tmp_path/'p.csv', timeout=120)
    assert r.returncode == 0 and '1 scored' in r.stdout, r.stderr

@pytest.mark.parametrize('backend', ['onnx', 'openvino'])
def test_batches_run_in_pieces_with_the_same_logits(exported, backend):
    "A batch runs as pieces (OpenVINO: models compiled once for static batches 4 and 1; ONNX Runtime with max_batch=8: slices of 8) and gives torch's logits in order."
    from realfake.backends import open_session, OrtSession
    from realfake.modeldir import read_model_file
    from realfake.modeldir import load_model_dir
    model, cfg = load_model_dir(exported, device='cpu')
    S = cfg.preprocess.size
    s = open_session(exported, backend) if backend == 'openvino' else OrtSession(read_model_file(exported/'model.onnx', 'onnx'), max_batch=8)
    x = np.random.default_rng(0).standard_normal((11, 3, S, S)).astype(np.float32)
    calls = []
    if backend == 'onnx':
        run = s.sess.run
        s.sess = type('Rec', (), {'run': lambda self, o, feed: calls.append(len(feed[s.input])) or run(o, feed)})()
    with torch.inference_mode(): ref = model.eval()(torch.from_numpy(x)).numpy()
    got = s(x)
    assert got.shape == (11, 2) and np.abs(got - ref).max() <= 1e-4
    if backend == 'onnx': assert calls == [8, 3]
    else:
        assert set(s.requests) == {(4, 3, S, S), (1, 3, S, S)}
        reqs = dict(s.requests)
        assert np.abs(s(x[:9]) - ref[:9]).max() <= 1e-4
        assert s.requests == reqs                       # no new compilation for another batch size
    assert s(x[:0]).shape == (0, 2)

def test_openvino_session_shared_by_threads(exported):
    "Calls from several threads on one session (the app with score_slots > 1) each get their own batch's logits."
    from concurrent.futures import ThreadPoolExecutor
    from realfake.backends import open_session
    s = open_session(exported, 'openvino', threads=1)
    S = Classifier.from_dir(exported, backend='torch', device='cpu').spec.size
    xs = [np.random.default_rng(k).standard_normal((1 + k % 3, 3, S, S)).astype(np.float32) for k in range(8)]
    ref = [s(x) for x in xs]
    with ThreadPoolExecutor(4) as ex: got = list(ex.map(s, xs))
    assert all(np.array_equal(a, b) for a, b in zip(got, ref)) and len({r.tobytes() for r in ref}) == 8
