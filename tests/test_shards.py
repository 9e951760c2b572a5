"""Tests of realfake_predict on WebDataset tar shards: shards built here like img2dataset's output (`.jpg` + `.json` +
`.txt` per sample), one with a truncated member and one truncated tar; one output per shard; the same scores as files;
resume after SIGKILL; two CPU processes under torchrun; options that changed; realfake_merge."""
from __future__ import annotations
import io, json, os, re, shutil, signal, subprocess, sys, tarfile, textwrap, time
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from PIL import Image

from helpers import cli_env, make_model_dir, run_cli
from realfake.core import RealfakeError
from realfake.predict import Classifier, PredictOptions, predict_shards
from realfake.shards import SHARD_COLUMNS, JOB_FILE, expand_shards, job_summary

pytest.importorskip('webdataset'); pytest.importorskip('pyarrow')


def _jpeg(seed, w=48, h=40) -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(b, 'JPEG', quality=90)
    return b.getvalue()

def write_shard(path:Path, samples:dict) -> Path:
    "An img2dataset-like shard: for each key, KEY.jpg (the bytes given), KEY.json and KEY.txt."
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, 'w') as t:
        for key, data in samples.items():
            for name, b in ((f'{key}.jpg', data), (f'{key}.json', json.dumps({'key': key}).encode()), (f'{key}.txt', b'a caption')):
                ti = tarfile.TarInfo(name); ti.size = len(b); ti.mtime = 0; t.addfile(ti, io.BytesIO(b))
    return path

def make_shards(root:Path, n_shards:int, per_shard:int, seed:int=0) -> dict:
    "`n_shards` good shards of `per_shard` JPEG samples; returns {shard name: {key: bytes}}."
    out = {}
    for s in range(n_shards):
        samples = {f'{s:05d}{i:04d}': _jpeg(seed + 1000 * s + i) for i in range(per_shard)}
        write_shard(root/f'{s:05d}.tar', samples); out[f'{s:05d}'] = samples
    return out

@pytest.fixture(scope='module')
def model_dir(tiny_model_dir): return tiny_model_dir

@pytest.fixture(scope='module')
def clf(model_dir):
    torch.set_num_threads(1)
    return Classifier.from_dir(model_dir, backend='torch', device='cpu')

def _read(out:Path, name:str) -> pd.DataFrame: return pd.read_parquet(out/f'{name}.parquet')


def test_shards_score_like_files_with_bad_member_and_truncated_tar(clf, tmp_path):
    """Three shards: good, one with a truncated JPEG member, one truncated tar. Every sample gets a row with its key and
    shard; the bad member an error row; the truncated tar the rows before the cut, one shard error row, and the job goes
    on. The scores equal those of the same images as files."""
    good = make_shards(tmp_path/'shards', 1, 5)['00000']
    bad_member = {f'0001{i:04d}': _jpeg(50 + i) for i in range(4)}
    bad_member['00010002'] = bad_member['00010002'][:300]                       # a JPEG cut short
    write_shard(tmp_path/'shards'/'00001.tar', bad_member)
    cut = {f'0002{i:04d}': _jpeg(80 + i) for i in range(5)}
    raw = write_shard(tmp_path/'x.tar', cut).read_bytes()
    (tmp_path/'shards'/'00002.tar').write_bytes(raw[:raw.find(cut['00020003']) + 200])   # cut inside the 4th image
    out = tmp_path/'out'
    s = predict_shards([tmp_path/'shards'], clf, out=out, formats='parquet,csv', progress=False, num_workers=0, bs=4)
    assert (s['scored'], s['images'], s['errors'], s['unreadable']) == (3, 5 + 4 + 3, 1, ['00002'])
    for name, n in (('00000', 5), ('00001', 4)):
        df = _read(out, name)
        assert list(df.columns) == SHARD_COLUMNS and len(df) == n and (df.shard == name).all()
        csv_df = pd.read_csv(out/f'{name}.csv', dtype={'key': str})
        assert csv_df.key.tolist() == df.key.tolist() and np.allclose(csv_df.prob_fake, df.prob_fake, equal_nan=True, atol=1e-5)
    bad = _read(out, '00001').set_index('key')
    assert bad.loc['00010002', 'error'].startswith('cannot read image 00001:00010002.jpg') and np.isnan(bad.loc['00010002', 'prob_fake'])
    assert bad.drop('00010002').error.isna().all() and bad.drop('00010002').prob_fake.between(0, 1).all()
    trunc = _read(out, '00002')
    assert trunc.key.tolist() == ['00020000', '00020001', '00020002', '']
    assert trunc.error.iloc[-1].startswith('cannot read shard') and 'after 3 samples' in trunc.error.iloc[-1]
    info = json.loads((out/'00002.json').read_text())
    assert info['shard_error'] and info['n_samples'] == 3
    # the same images as files: the same scores
    (tmp_path/'files').mkdir()
    for k, b in good.items(): (tmp_path/'files'/f'{k}.jpg').write_bytes(b)
    files = clf.predict(sorted((tmp_path/'files').iterdir()))
    np.testing.assert_allclose(_read(out, '00000').prob_fake, files.prob_fake, atol=1e-6)
    np.testing.assert_allclose(_read(out, '00000').logit, files.logit, atol=1e-5)

def test_rerun_skips_done_and_retries_unreadable_shards(clf, tmp_path):
    shards = make_shards(tmp_path/'s', 2, 3)
    raw = (tmp_path/'s'/'00001.tar').read_bytes()
    (tmp_path/'s'/'00001.tar').write_bytes(raw[:raw.find(shards['00001']['000010001']) + 100])   # cut in its 2nd image
    out = tmp_path/'out'
    predict_shards(tmp_path/'s', clf, out=out, progress=False, num_workers=0)
    mtime = (out/'00000.parquet').stat().st_mtime_ns
    (tmp_path/'s'/'00001.tar').write_bytes(raw)                                   # the shard was repaired meanwhile
    clf.n_forward = 0
    s = predict_shards(tmp_path/'s', clf, out=out, progress=False, num_workers=0)
    assert (s['skipped'], s['scored'], s['images'], s['unreadable']) == (1, 1, 3, []) and clf.n_forward == 3
    assert (out/'00000.parquet').stat().st_mtime_ns == mtime
    assert _read(out, '00001').error.isna().all() and len(_read(out, '00001')) == 3
    summ = job_summary(out)
    assert (summ['done'], summ['images'], summ['unreadable'], summ['todo']) == (['00000', '00001'], 6, [], [])

def test_inputs_pattern_list_folder_and_names(clf, tmp_path):
    make_shards(tmp_path/'s', 3, 1)
    names = lambda x: [s.name for s in expand_shards(x)]
    assert names([tmp_path/'s']) == names(str(tmp_path/'s'/'{00000..00002}.tar')) == \
        names([tmp_path/'s'/'00000.tar', tmp_path/'s'/'00001.tar', tmp_path/'s'/'00002.tar']) == ['00000', '00001', '00002']
    (tmp_path/'t').mkdir(); shutil.copy(tmp_path/'s'/'00000.tar', tmp_path/'t'/'00000.tar')
    with pytest.raises(RealfakeError, match='two shards named 00000'): expand_shards([tmp_path/'s', tmp_path/'t'])
    # a member name that is not UTF-8: a printable, unambiguous key
    (tmp_path/'u').mkdir()
    with tarfile.open(tmp_path/'u'/'00009.tar', 'w', encoding='utf-8', errors='surrogateescape') as t:
        b = _jpeg(1); ti = tarfile.TarInfo(os.fsdecode(b'caf\xe9.jpg')); ti.size = len(b); t.addfile(ti, io.BytesIO(b))
    predict_shards(tmp_path/'u', clf, out=tmp_path/'out', formats='parquet,csv', progress=False, num_workers=0)
    assert _read(tmp_path/'out', '00009').key.tolist() == ['caf\\xe9'] == pd.read_csv(tmp_path/'out'/'00009.csv').key.tolist()

def test_undecodable_shard_names_and_errors(clf, tmp_path):
    "Shards whose names are not UTF-8: outputs named with the escaped name; an error that quotes such a path is written too."
    root = os.fsencode(tmp_path)
    good = Path(os.fsdecode(root + b'/caf\xe9.tar'))
    try: write_shard(good, {'k1': _jpeg(1), 'k2': _jpeg(2)})
    except (OSError, UnicodeError): pytest.skip('this file system refuses non-UTF-8 names')
    odd = 'pipe:cat ' + os.fsdecode(root + b'/d\xe9j\xe0.tar')                     # a command that fails on a missing file
    s = predict_shards([good, odd], clf, out=tmp_path/'out', formats='parquet,csv', progress=False, num_workers=0)
    assert (s['scored'], s['images'], s['unreadable']) == (2, 2, ['d\\xe9j\\xe0'])
    assert _read(tmp_path/'out', 'caf\\xe9').key.tolist() == ['k1', 'k2']
    err = _read(tmp_path/'out', 'd\\xe9j\\xe0').error.iloc[-1]                  # the error quotes the command: still valid text
    assert err.startswith('cannot read shard pipe:cat ') and 'd\\xe9j\\xe0.tar' in err, err
    assert job_summary(tmp_path/'out')['unreadable'] == ['d\\xe9j\\xe0']

@pytest.mark.slow
def test_changed_options_refused_or_rescored(clf, model_dir, tmp_path):
    "Other options: refused (nothing touched; the command exits 2 with one line), or rescored with rescore; then resumable."
    make_shards(tmp_path/'s', 2, 2)
    out = tmp_path/'out'
    opts = PredictOptions(model=str(model_dir), device='cpu', num_workers=0)
    s = predict_shards(tmp_path/'s', opts, out=out, progress=False)
    assert s['scored'] == 2
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(RealfakeError, match=r'was scored with threshold 0.5, not 0.9: .*--rescore'):
        predict_shards(tmp_path/'s', opts.replace(threshold=0.9), out=out, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before          # nothing touched
    r = run_cli('realfake_predict', tmp_path/'s', '--model', model_dir, '--out', out, '--num_workers', 0, '--threshold', 0.9)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-1000:]
    assert r.stderr.strip().splitlines()[-1].startswith('realfake_predict: error: ') and 'threshold 0.5, not 0.9' in r.stderr
    s = predict_shards(tmp_path/'s', opts.replace(threshold=0.9), out=out, progress=False, rescore=True)
    assert s['scored'] == 2 and json.loads((out/'00000.json').read_text())['scored_with']['threshold'] == 0.9
    s = predict_shards(tmp_path/'s', opts.replace(threshold=0.9), out=out, progress=False)
    assert (s['scored'], s['skipped']) == (0, 2)
    other = make_model_dir(tmp_path/'other', seed=1, resize=36, mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(RealfakeError, match='was scored with weights_sha256'):
        predict_shards(tmp_path/'s', opts.replace(model=str(other), threshold=0.9), out=out, progress=False)
    (tmp_path/'img.jpg').write_bytes(_jpeg(3))
    from realfake.predict import realfake_predict
    with pytest.raises(RealfakeError, match='separate runs'): realfake_predict([tmp_path/'s', tmp_path/'img.jpg'], model=clf, out=tmp_path/'o2')

_SLOW = textwrap.dedent('''
    import sys, time
    import realfake.predict as P
    orig = P.Classifier.logits
    def slow(self, x):
        time.sleep(0.3); return orig(self, x)
    P.Classifier.logits = slow
    from fastcore.script import _run_cli
    sys.argv[0] = 'realfake_predict'
    _run_cli(P.realfake_predict.__wrapped__, False)
''')

@pytest.mark.slow
def test_sigkill_then_rerun_completes(model_dir, tmp_path):
    "SIGKILL while shards are being scored: finished shards stay, nothing partial is visible; the same command completes the job."
    shards = make_shards(tmp_path/'s', 6, 3)
    out = tmp_path/'out'
    args = [str(tmp_path/'s'), '--model', str(model_dir), '--out', str(out), '--bs', '2', '--num_workers', '0', '--no_progress',
            '--formats', 'parquet,csv']
    p = subprocess.Popen([sys.executable, '-c', _SLOW, *args], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while time.time() - t0 < 120 and p.poll() is None and len(list(out.glob('0*.json'))) < 2: time.sleep(0.05)
        assert p.poll() is None, f'the run ended before it could be killed: {p.stderr.read()[-800:]}'
        p.send_signal(signal.SIGKILL); p.wait(10)
    finally:
        if p.poll() is None: p.kill(); p.wait()
        p.stdout.close(); p.stderr.close()
    done = sorted(f.stem for f in out.glob('0*.json'))
    assert 2 <= len(done) < 6
    for f in out.iterdir():                                                      # what is visible is complete
        if f.suffix == '.parquet': assert len(pd.read_parquet(f)) == 3, f.name
        if f.suffix == '.csv': assert len(pd.read_csv(f)) == 3, f.name
        assert f.name.startswith('.') or f.name == JOB_FILE or f.stem in shards, f.name
    r = run_cli('realfake_predict', *args)
    assert r.returncode == 0, r.stderr[-1500:]
    m = re.search(r'(\d+) shards scored \((\d+) images.*, (\d+) already done', r.stdout)
    assert m and (int(m[1]), int(m[2]), int(m[3])) == (6 - len(done), 3 * (6 - len(done)), len(done)), r.stdout
    assert not [f for f in out.iterdir() if f.name.endswith('.tmp')]
    rows = pd.concat([_read(out, n) for n in shards], ignore_index=True)
    assert sorted(rows.key) == sorted(k for v in shards.values() for k in v) and rows.error.isna().all()

@pytest.mark.slow
def test_two_processes_under_torchrun(model_dir, tmp_path):
    "torchrun --nproc_per_node 2 on the CPU: each process scores its own shards; together every sample exactly once."
    torchrun = shutil.which('torchrun') or str(Path(sys.executable).parent/'torchrun')
    if not Path(torchrun).exists(): pytest.skip('torchrun not installed')
    shards = make_shards(tmp_path/'s', 5, 3)
    (tmp_path/'run.py').write_text('import sys\nfrom fastcore.script import _run_cli\nfrom realfake.predict import realfake_predict as f\n'
                                   "sys.argv[0] = 'realfake_predict'\n_run_cli(f.__wrapped__, False)\n")
    cmd = [torchrun, '--standalone', '--nproc_per_node', '2', str(tmp_path/'run.py'), str(tmp_path/'s'/'{00000..00004}.tar'),
           '--model', str(model_dir), '--out', str(tmp_path/'out'), '--no_progress', '--num_workers', '0', '--device', 'cpu']
    r = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = sorted(l for l in r.stdout.splitlines() if l.startswith('process'))
    assert [l.split(':')[0] for l in lines] == ['process 0 of 2', 'process 1 of 2'], r.stdout
    assert '3 shards scored (9 images' in lines[0] and '2 shards scored (6 images' in lines[1]   # shards 0,2,4 and 1,3
    r = run_cli('realfake_merge', tmp_path/'out', '--to', tmp_path/'all.parquet')
    assert r.returncode == 0 and r.stdout.startswith('5/5 shards done: 15 images'), r.stdout + r.stderr[-800:]
    merged = pd.read_parquet(tmp_path/'all.parquet')
    want = [(n, k) for n, v in shards.items() for k in v]
    assert sorted(zip(merged.shard, merged.key)) == sorted(want) and len(merged) == len(want)    # each sample exactly once

@pytest.mark.slow
def test_merge_reports_unfinished_job(clf, tmp_path):
    make_shards(tmp_path/'s', 3, 2)
    predict_shards([tmp_path/'s'/'00000.tar'], clf, out=tmp_path/'out', progress=False, num_workers=0)
    predict_shards(tmp_path/'s', clf, out=tmp_path/'out', progress=False, num_workers=0)     # job file: all 3
    (tmp_path/'out'/'00002.json').unlink()                                                   # as if killed before the mark
    r = run_cli('realfake_merge', tmp_path/'out', '--to', tmp_path/'m.csv')
    assert r.returncode == 2 and '2/3 shards done' in r.stderr and '00002' in r.stderr and 'rerun' in r.stderr
    r = run_cli('realfake_merge', tmp_path/'out', '--to', tmp_path/'m.csv', '--partial')
    assert r.returncode == 0, r.stderr
    m = pd.read_csv(tmp_path/'m.csv', dtype={'key': str})
    assert len(m) == 4 and set(m.shard.astype(str).str.zfill(5)) == {'00000', '00001'}
