"""Hostile model folders and state files, tested by kind (issue 22, round 3).

Every model-folder file (config.json, model.safetensors, model.onnx) x every bad kind (a FIFO, a link to /dev/zero,
a folder, a sparse file over the kind's cap, missing) x every entry point that loads a model folder: each gives a
one-line user error naming the file, or falls back (a bad model.onnx: torch, with a warning naming it), and never
hangs (`deadline` turns a hang into a failure). Then every state file read on resume x every wrong JSON shape:
a one-line error naming the file and saying to delete it (a shard record: the shard is scored again)."""
from __future__ import annotations
import json, logging, os, shutil, sys
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from helpers import deadline, make_model_dir, run_cli

from realfake.core import USER_ERRORS, RealfakeError, StateFileError, error_line
from realfake.modeldir import MODEL_FILE_KINDS, ModelConfig, open_model_file
from realfake.predict import Classifier, load_classifier, realfake_predict

pytest.importorskip('onnx'); pytest.importorskip('onnxruntime')

FILES = {'config.json': 'config', 'model.safetensors': 'weights', 'model.onnx': 'onnx'}
BAD = ['fifo', 'zero', 'dir', 'big', 'missing']

@pytest.fixture(scope='module')
def good(tmp_path_factory):
    "A valid model folder with an up-to-date model.onnx, and one image to score."
    from realfake.export import export_onnx
    d = tmp_path_factory.mktemp('guard')
    m = make_model_dir(d/'model')
    export_onnx(m)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8)).save(d/'img.png')
    return m, d/'img.png'

def spoil(p:Path, kind:str):
    "Replace the file `p` by a bad file of `kind`."
    p.unlink()
    if kind == 'fifo': os.mkfifo(p)
    elif kind == 'zero': p.symlink_to('/dev/zero')
    elif kind == 'dir': p.mkdir()
    elif kind == 'big':
        with open(p, 'wb') as f: f.truncate(MODEL_FILE_KINDS[FILES[p.name]][1] + 1)   # sparse: no disk used

def _from_dir(m, tmp): return Classifier.from_dir(m, device='cpu')
def _from_dir_onnx(m, tmp): return Classifier.from_dir(m, device='cpu', backend='onnx')
def _predict_cli(m, tmp): return realfake_predict([str(tmp/'img.png')], model=str(m), out=str(tmp/'p.csv'), device='cpu', workers=0)
def _evaluate_cli(m, tmp):
    from realfake.evaluate import realfake_evaluate   # the model loads first; then the missing data folder is the error
    return realfake_evaluate(str(tmp/'no-such-data'), model=str(m), out=str(tmp/'rep'), device='cpu')
def _push_dry_run(m, tmp):
    from realfake.hub import push_model
    return push_model(m, 'org/name', dry_run=True)
def _app(m, tmp):
    from realfake.app import make_app                  # what realfake_app does before it serves
    return make_app(load_classifier(str(m), 'cpu'), None, tmp/'votes.sqlite')
def _export(m, tmp):
    from realfake.export import export_onnx
    return export_onnx(m, tmp/'out.onnx', check=False)

ENTRIES = {'from_dir': _from_dir, 'from_dir_onnx': _from_dir_onnx, 'realfake_predict': _predict_cli,
           'realfake_evaluate': _evaluate_cli, 'realfake_push_dry_run': _push_dry_run, 'app': _app, 'realfake_export': _export}

def expected_ok(entry:str, fname:str, kind:str) -> bool:
    "Which cases load anyway: the ONNX backend needs no weights; every other path falls back from a bad model.onnx to torch."
    if fname == 'config.json': return False
    if fname == 'model.onnx': return entry != 'from_dir_onnx'
    if entry == 'from_dir_onnx': return True
    # a missing model.safetensors beside a current model.onnx: 'auto' uses the ONNX model (export and push need the weights)
    return kind == 'missing' and entry in ('from_dir', 'realfake_predict', 'realfake_evaluate', 'app')

CASES = [(e, f, k) for e in ENTRIES for f in FILES for k in BAD]

def test_the_grid_covers_every_entry_point_and_kind():
    assert len(CASES) == len(ENTRIES) * len(FILES) * len(BAD) == 105

@pytest.mark.parametrize('entry,fname,kind', CASES)
def test_bad_model_file(good, tmp_path, caplog, entry, fname, kind):
    m0, img = good
    m = tmp_path/'model'; shutil.copytree(m0, m); shutil.copy(img, tmp_path/'img.png')
    spoil(m/fname, kind)
    caplog.set_level(logging.WARNING, logger='realfake')
    try:
        with deadline(120, f'{entry} with a {kind} {fname}'): ENTRIES[entry](m, tmp_path)
        err = None
    except USER_ERRORS as e: err = e
    if entry == 'realfake_evaluate' and err is not None and 'no-such-data' in str(err): err = None   # the model loaded
    if expected_ok(entry, fname, kind):
        assert err is None, f"{entry} refused a usable folder: {err!r}"
        if fname == 'model.onnx' and kind != 'missing' and entry != 'realfake_export':
            assert any('model.onnx' in r.getMessage() for r in caplog.records), "the fallback from a bad model.onnx is not logged"
    else:
        assert err is not None, f"{entry} accepted a {kind} {fname}"
        line = error_line(err)
        assert fname in line or (kind == 'missing' and fname == 'model.onnx' and 'realfake_export' in line), line
        assert '\n' not in str(err)

@pytest.mark.parametrize('kind', ['fifo', 'zero', 'dir', 'big'])
def test_open_model_file_refuses_without_blocking(tmp_path, kind):
    p = tmp_path/'model.onnx'; p.write_bytes(b'x'); spoil(p, kind)
    with deadline(10, 'open_model_file'), pytest.raises(RealfakeError, match='model.onnx'): open_model_file(p, 'onnx')

@pytest.mark.slow
def test_cli_exit_2_on_a_fifo_model_onnx(good, tmp_path):
    "Through the console scripts: one line, exit 2, no hang (subprocess timeout)."
    m = tmp_path/'model'; shutil.copytree(good[0], m); spoil(m/'model.onnx', 'fifo')
    r = run_cli('realfake_predict', good[1], '--model', m, '--backend', 'onnx', '--out', tmp_path/'p.csv', timeout=120)
    assert r.returncode == 2 and 'model.onnx' in r.stderr and 'a FIFO' in r.stderr, r.stderr[-500:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    spoil(m/'model.safetensors', 'zero')
    r = run_cli('realfake_push', '--model', m, '--repo', 'org/name', '--dry_run', timeout=120)
    assert r.returncode == 2 and 'model.safetensors' in r.stderr and 'a device' in r.stderr, r.stderr[-500:]

# ---- Medium 5: the crop pixels a config may ask for

def test_crop_pixel_cap():
    from realfake.preprocess import Preprocess
    from realfake.modeldir import MAX_CROP_PIXELS
    with pytest.raises(RealfakeError, match='input pixels per image'):
        ModelConfig.from_dict(dict(version=2, arch='convnext_atto', preprocess=dict(size=1024, resize=4096, crops='grid', max_crops=64)))
    ok = ModelConfig('convnext_atto', preprocess=Preprocess(size=512, resize=1024, crops='grid', max_crops=64))
    assert ok.preprocess.size ** 2 * ok.preprocess.max_crops == MAX_CROP_PIXELS
    with pytest.raises(RealfakeError, match='input pixels per image'):   # a spec change at scoring time is capped too
        ok.replace(preprocess=ok.preprocess.replace(size=520))

# ---- Medium 6: the shape of every state file read on resume

SHAPES = ['[]', '[1]', '"x"', '5', 'null', '{}', '{broken']

def _sidecar(tmp, m, img):
    from realfake.predict import predict_to_csv
    predict_to_csv([str(img)], Classifier.from_dir(m, device='cpu', backend='torch'), out=tmp/'p.csv', num_workers=0)
    return tmp/'p.csv.json', lambda: predict_to_csv([str(img)], Classifier.from_dir(m, device='cpu', backend='torch'),
                                                     out=tmp/'p.csv', num_workers=0)

def _job(tmp, m, img):
    from realfake.shards import JOB_FILE, open_job, Shard
    sh = [Shard(name='s0', url=str(tmp/'s0.tar'))]
    open_job(tmp/'out', sh, {'a': 1}, ['csv'])
    return tmp/'out'/JOB_FILE, lambda: open_job(tmp/'out', sh, {'a': 1}, ['csv'])

def _job_summary(tmp, m, img):
    from realfake.shards import JOB_FILE, open_job, job_summary, Shard
    open_job(tmp/'out', [Shard(name='s0', url=str(tmp/'s0.tar'))], {'a': 1}, ['csv'])
    return tmp/'out'/JOB_FILE, lambda: job_summary(tmp/'out')

def _pointer(tmp, m, img):
    from realfake.learner import read_pointer
    (tmp/'ck').mkdir(); (tmp/'ck'/'latest.json').write_text('{"dir": "epoch-001"}')
    return tmp/'ck'/'latest.json', lambda: read_pointer(tmp/'ck')

def _ckpt_state(tmp, m, img):
    from realfake.learner import load_checkpoint
    ck = tmp/'epoch-000'; shutil.copytree(m, ck)
    for f in ('optimizer.safetensors',): shutil.copy(m/'model.safetensors', ck/f)
    (ck/'state.json').write_text('{}')
    return ck/'state.json', lambda: load_checkpoint(ck)

def _generate_settings(tmp, m, img):
    from realfake.generate import record_settings
    (tmp/'gen').mkdir(); record_settings(tmp/'gen', {'n': 1})
    return tmp/'gen'/'run.json', lambda: record_settings(tmp/'gen', {'n': 1})

def _reconstruct_settings(tmp, m, img):
    from realfake.reconstruct import record_settings
    (tmp/'rec').mkdir(); record_settings(tmp/'rec', {'n': 1})
    return tmp/'rec'/'reconstruct.json', lambda: record_settings(tmp/'rec', {'n': 1})

STATE_FILES = {'predictions sidecar': _sidecar, 'shard job (resume)': _job, 'shard job (merge)': _job_summary,
               'checkpoint pointer': _pointer, 'checkpoint state': _ckpt_state, 'generate run.json': _generate_settings,
               'reconstruct settings': _reconstruct_settings}
WRONG = {'predictions sidecar': ['{"scored_with": 5}'], 'shard job (resume)': ['{"scored_with": {}, "shards": [1]}', '{"scored_with": {}}'],
         'shard job (merge)': ['{"scored_with": {}, "shards": [{"name": 3}]}', '{"scored_with": {}, "shards": [], "formats": 5}'],
         'checkpoint pointer': ['{"dir": 5}'], 'checkpoint state': ['{"format": 1}', '{"format": "1"}'],
         'generate run.json': [], 'reconstruct settings': []}

@pytest.mark.parametrize('which,content', [(w, c) for w in STATE_FILES for c in SHAPES + WRONG[w]
                                           if not (c == '{}' and w in ('generate run.json', 'reconstruct settings'))])
def test_state_file_of_the_wrong_shape(good, tmp_path, which, content):
    f, resume = STATE_FILES[which](tmp_path, *good)
    f.write_text(content)
    with deadline(60, which), pytest.raises(StateFileError) as e: resume()
    msg = str(e.value)
    assert f.name in msg and 'delete it' in msg and '\n' not in msg, msg

@pytest.mark.parametrize('content', ['[1]', '"x"', '{"scored_with": {}, "n_errors": 0, "n_fake": 0}', '{"scored_with": 5, "n_samples": 1, "n_errors": 0, "n_fake": 0}'])
def test_shard_record_of_the_wrong_shape_is_scored_again(tmp_path, caplog, content):
    from realfake.shards import shard_state
    (tmp_path/'s0.json').write_text(content); (tmp_path/'s0.csv').write_text('')
    caplog.set_level(logging.WARNING, logger='realfake')
    assert shard_state(tmp_path, 's0', ['csv'], {}) == 'todo'
    assert any('s0.json' in r.getMessage() and 'scoring the shard again' in r.getMessage() for r in caplog.records)

def test_progress_ledger_lines_of_another_shape_are_redone(tmp_path):
    from realfake.generate import read_progress
    from realfake.reconstruct import read_progress as rec_progress
    (tmp_path/'progress').mkdir(); (tmp_path/'images').mkdir(); (tmp_path/'images'/'a.png').write_bytes(b'')
    good = dict(kind='images', group='g', i=0, path='images/a.png', seed=1, prompt='p', width=8, height=8)
    lines = ['[1]', '"x"', '5', json.dumps(dict(good, path=5)), json.dumps({k: v for k, v in good.items() if k != 'i'}), json.dumps(good)]
    (tmp_path/'progress'/'rank0.jsonl').write_text('\n'.join(lines) + '\n')
    assert list(read_progress(tmp_path)) == [('images', 'g', 0)]
    (tmp_path/'progress'/'rank0.jsonl').write_text('\n'.join(['[1]', '{"ae": 5, "rel": "a"}', '{"ae": "x", "rel": "a.png"}']) + '\n')
    assert list(rec_progress(tmp_path)) == [('x', 'a.png')]

# ---- Low items

def test_model_folder_honours_the_umask(tmp_path):
    from realfake.core import _UMASK
    m = make_model_dir(tmp_path/'model')
    assert m.stat().st_mode & 0o777 == 0o777 & ~_UMASK
    assert (m/'model.safetensors').stat().st_mode & 0o777 == 0o666 & ~_UMASK

@pytest.mark.parametrize('bs', [0, -1, 10**23, 1.5, True])
def test_bad_batch_size(good, bs):
    with pytest.raises(ValueError, match='batch size'): Classifier.from_dir(good[0], device='cpu', bs=bs)

@pytest.mark.parametrize('backend', ['torch', 'onnx', 'openvino', 'auto'])
def test_unknown_precision_refused_on_every_backend(good, backend):
    with pytest.raises(ValueError, match="precision must be one of 'fp32', 'bf16'"):
        Classifier.from_dir(good[0], device='cpu', backend=backend, precision='fp8')

def test_formats_refused_for_image_files(good, tmp_path):
    with pytest.raises(RealfakeError, match='--formats is for tar shards'):
        realfake_predict([str(good[1])], model=str(good[0]), out=str(tmp_path/'p.csv'), formats='csv')

def test_card_source_names_are_public():
    from realfake.report import md_table, _limits_section
    t = md_table([dict(source='/home/alice/photos', n=1), dict(source='phone@alice-laptop', n=2)])
    assert 'alice' not in t and 'photos' in t and 'phone' in t
    s = _limits_section(dict(sources={'fake': []}), dict(per_source=[dict(source='/home/alice/sdxl@alice-laptop', n_fake=3)]))
    assert 'alice' not in s and 'sdxl' in s
