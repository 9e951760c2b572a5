"""Tests of realfake_predict on WebDataset tar shards: shards built here like img2dataset's output (`.jpg` + `.json` +
`.txt` per sample), one with a truncated member and one truncated tar; one output per shard; the same scores as files;
resume after SIGKILL; two CPU processes under torchrun; options that changed; realfake_merge."""
from __future__ import annotations
import io, json, os, re, shutil, signal, subprocess, sys, tarfile, textwrap, time
import forks
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from PIL import Image

from helpers import cli_env, make_model_dir, run_cli
from realfake.core import RealfakeError
from realfake.predict import Classifier, PredictOptions, predict_shards
from realfake.shards import SHARD_COLUMNS, JOB_FILE, expand_shards, job_summary, merge_outputs

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
    r = run_cli('realfake_predict', tmp_path/'s', '--model', model_dir, '--out', out, '--workers', 0, '--threshold', 0.9)
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
    args = [str(tmp_path/'s'), '--model', str(model_dir), '--out', str(out), '--bs', '2', '--workers', '0', '--no_progress',
            '--formats', 'parquet,csv']
    p = forks.popen([sys.executable, '-c', _SLOW, *args], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    """torchrun --nproc_per_node 2 on the CPU (as `python -m torch.distributed.run`, what the `torchrun` script runs, so the
    launcher and its ranks are forked): each process scores its own shards; together every sample exactly once."""
    shards = make_shards(tmp_path/'s', 5, 3)
    (tmp_path/'run.py').write_text('import sys\nfrom fastcore.script import _run_cli\nfrom realfake.predict import realfake_predict as f\n'
                                   "sys.argv[0] = 'realfake_predict'\n_run_cli(f.__wrapped__, False)\n")
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(tmp_path/'run.py'), str(tmp_path/'s'/'{00000..00004}.tar'),
           '--model', str(model_dir), '--out', str(tmp_path/'out'), '--no_progress', '--workers', '0', '--device', 'cpu']
    r = forks.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = sorted(l for l in r.stdout.splitlines() if l.startswith('process'))
    assert [l.split(':')[0] for l in lines] == ['process 0 of 2', 'process 1 of 2'], r.stdout
    assert '3 shards scored (9 images' in lines[0] and '2 shards scored (6 images' in lines[1]   # shards 0,2,4 and 1,3
    r = run_cli('realfake_merge', tmp_path/'out', '--out', tmp_path/'all.parquet')
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
    r = run_cli('realfake_merge', tmp_path/'out', '--out', tmp_path/'m.csv')
    assert r.returncode == 2 and '2/3 shards done' in r.stderr and '00002' in r.stderr and 'rerun' in r.stderr
    r = run_cli('realfake_merge', tmp_path/'out', '--out', tmp_path/'m.csv', '--partial')
    assert r.returncode == 0, r.stderr
    m = pd.read_csv(tmp_path/'m.csv', dtype={'key': str})
    assert len(m) == 4 and set(m.shard.astype(str).str.zfill(5)) == {'00000', '00001'}


# ---- hostile shards: oversized members, repeated keys, huge patterns, damaged outputs, formula-like names ----

def _sparse_header(name:str, realsize:int) -> bytes:
    "The 512-byte header of an old-GNU sparse member holding no data but declaring `realsize` bytes."
    ti = tarfile.TarInfo(name); ti.size = 0; ti.type = tarfile.GNUTYPE_SPARSE
    buf = bytearray(ti.tobuf(tarfile.GNU_FORMAT))
    buf[483:495] = tarfile.itn(realsize, 12, tarfile.GNU_FORMAT)
    buf[148:156] = b' ' * 8
    buf[148:155] = b'%06o\0' % tarfile.calc_chksums(bytes(buf))[0]
    return bytes(buf)

def write_members(path:Path, members) -> Path:
    "A tar of (name, bytes) pairs (names may repeat); bytes None: a sparse member declaring 10 GB."
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, 'w', format=tarfile.GNU_FORMAT) as t:
        for name, b in members:
            if b is None: t.fileobj.write(_sparse_header(name, 10**10)); t.offset += 512; continue
            ti = tarfile.TarInfo(name); ti.size = len(b); ti.mtime = 0; t.addfile(ti, io.BytesIO(b))
    return path

def test_member_declaring_10_gb_is_an_error_row_not_read(clf, tmp_path):
    "A 10 kB shard with a sparse member declaring 10 GB: the size is checked before reading; the member gets an error row."
    p = write_members(tmp_path/'s'/'00000.tar', [('a.jpg', _jpeg(1)), ('big.jpg', None), ('b.jpg', _jpeg(2))])
    assert p.stat().st_size < 20_000
    with tarfile.open(p) as t: assert [m.size for m in t.getmembers()][1] == 10**10      # what the header declares
    s = predict_shards(tmp_path/'s', clf, out=tmp_path/'out', formats='parquet,csv', progress=False, num_workers=0)
    assert s['unreadable'] == []
    df = _read(tmp_path/'out', '00000').set_index('key')
    assert df.index.tolist() == ['a', 'big', 'b'] and df.drop('big').error.isna().all()
    assert 'big.jpg: 10,000,000,000 bytes, over the' in df.loc['big', 'error'] and np.isnan(df.loc['big', 'prob_fake'])

DUPLICATES = {   # members of a shard -> (keys of the rows, the key that must be an error row)
    'adjacent repeat': ([('a.jpg', 1), ('b.jpg', 2), ('b.jpg', 3), ('c.jpg', 4), ('d.jpg', 5)], 'b'),
    'apart': ([('a.jpg', 1), ('b.jpg', 2), ('c.jpg', 3), ('a.jpg', 4), ('d.jpg', 5)], 'a'),
    'two extensions': ([('a.jpg', 1), ('c.jpg', 2), ('c.png', 3), ('b.jpg', 4), ('d.jpg', 5)], 'c'),
}

@pytest.mark.parametrize('case', list(DUPLICATES))
def test_repeated_key_gives_one_error_row_and_the_shard_goes_on(clf, tmp_path, case):
    members, dup = DUPLICATES[case]
    write_members(tmp_path/'s'/'00000.tar', [(n, _jpeg(i)) for n, i in members])
    out = tmp_path/'out'
    s = predict_shards(tmp_path/'s', clf, out=out, progress=False, num_workers=0)
    df = _read(out, '00000')
    assert sorted(df.key) == sorted({n.split('.')[0] for n, _ in members}) and df.key.is_unique      # each sample once
    assert s['unreadable'] == [] and 'already read from' in df.set_index('key').loc[dup, 'error']
    assert df[df.key != dup].error.isna().all()
    assert job_summary(out)['done'] == ['00000']                                                    # not retried on a rerun
    assert predict_shards(tmp_path/'s', clf, out=out, progress=False, num_workers=0)['scored'] == 0

@pytest.mark.slow
def test_brace_pattern_is_counted_before_expanding_and_todo_is_linear(clf, tmp_path):
    with pytest.raises(RealfakeError, match='more than 2,000,000 shards'):
        expand_shards(str(tmp_path/'{000000..999999}{000000..999999}.tar'))
    make_shards(tmp_path/'good', 2, 1)
    shards = expand_shards(str(tmp_path/'good'/'{00000..99999}.tar'))          # 100,000 names, 2 of them there
    from realfake.shards import shards_todo
    todo, missing = shards_todo(shards, tmp_path/'out', ('parquet',), {})     # quadratic, this took hours
    assert [s.name for s in todo] == ['00000', '00001'] and len(missing) == 99_998

def _job(clf, tmp_path, formats='parquet,csv', members=None):
    write_members(tmp_path/'s'/'00000.tar', members or [('a.jpg', _jpeg(1)), ('b.jpg', _jpeg(2))])
    write_members(tmp_path/'s'/'00001.tar', [('c.jpg', _jpeg(3))])
    predict_shards(tmp_path/'s', clf, out=tmp_path/'out', formats=formats, progress=False, num_workers=0)
    return tmp_path/'out'

DAMAGED = {
    'truncated': lambda t: t[:-7],
    'another header': lambda t: t + ','.join(SHARD_COLUMNS) + '\n',
    'three columns': lambda t: t + 'x,00000,0.5\n',
    'another header first': lambda t: 'path,prob_fake\n' + t.split('\n', 1)[1],
}

@pytest.mark.parametrize('damage', list(DAMAGED))
@pytest.mark.parametrize('dest', ['m.csv', 'm.parquet'])
def test_merge_refuses_a_damaged_shard_csv(clf, tmp_path, damage, dest):
    out = _job(clf, tmp_path, formats='csv')
    p = out/'00001.csv'; p.write_text(DAMAGED[damage](p.read_text()))
    with pytest.raises(RealfakeError, match=r'00001\.csv: .*not the output realfake_predict wrote'): merge_outputs(out, tmp_path/dest)
    assert not (tmp_path/dest).exists()

def test_merge_cli_exits_2_on_a_damaged_shard(clf, tmp_path):
    out = _job(clf, tmp_path, formats='csv')
    p = out/'00000.csv'; p.write_text(p.read_text() + 'x,00000,0.5\n')
    r = run_cli('realfake_merge', out, '--out', tmp_path/'m.csv')
    assert r.returncode == 2 and 'record 4: 3 fields, not 8' in r.stderr and '00000.csv' in r.stderr, r.stderr

@pytest.mark.slow
@pytest.mark.parametrize('formats', ['csv', 'parquet'])
def test_merge_refuses_to_write_inside_the_job_folder(clf, tmp_path, formats):
    out = _job(clf, tmp_path, formats=formats)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = run_cli('realfake_merge', out, '--out', out/f'00000.{formats}')
    assert r.returncode == 2 and 'inside the job' in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    r = run_cli('realfake_merge', out, '--out', tmp_path/'m.csv')
    assert r.returncode == 0 and len(pd.read_csv(tmp_path/'m.csv')) == 3

FORMULA = '=cmd|calc'

def _shard_csvs(clf, tmp_path):
    "Every CSV written from a shard with member `=cmd|calc.jpg` (and `-2.jpg`, `@x.jpg`): the shard's, and merged ones."
    members = [(f'{FORMULA}.jpg', _jpeg(1)), ('@x.jpg', b'not an image'), ('+y.jpg', _jpeg(2))]
    out = _job(clf, tmp_path/'c', 'csv', members); _job(clf, tmp_path/'p', 'parquet', members)
    for src, dest in ((tmp_path/'c'/'out', tmp_path/'from_csv.csv'), (tmp_path/'p'/'out', tmp_path/'from_parquet.csv')):
        merge_outputs(src, dest)
    return {'shard csv': out/'00000.csv', 'merged from csv': tmp_path/'from_csv.csv', 'merged from parquet': tmp_path/'from_parquet.csv'}

@pytest.mark.parametrize('which', ['shard csv', 'merged from csv', 'merged from parquet'])
def test_every_shard_csv_is_spreadsheet_safe(clf, tmp_path, which):
    import csv as _csv
    path = _shard_csvs(clf, tmp_path)[which]
    cells = [c for r in _csv.reader(path.open(encoding='utf-8', newline='')) for c in r]
    assert "'" + FORMULA in cells and "'@x" in cells and "'+y" in cells
    num = re.compile(r'[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?')
    assert not [c for c in cells if c[:1] in ('=', '+', '-', '@', '\t', '\r') and not num.fullmatch(c)]
    rows = list(_csv.DictReader(path.open(encoding='utf-8', newline='')))
    assert [num.fullmatch(r['logit']) is not None for r in rows] == [not r['error'] for r in rows]   # numbers stay numbers

def _cells(path:Path) -> list[str]:
    import csv as _csv
    return [c for r in _csv.reader(path.open(encoding='utf-8', newline='')) for c in r]

def _predict_csv(clf, tmp_path):
    from realfake.predict import predict_to_csv
    d = tmp_path/'imgs'; d.mkdir(); (d/f'{FORMULA}.jpg').write_bytes(_jpeg(1)); (d/'@x.jpg').write_bytes(b'junk')
    predict_to_csv([d, tmp_path/'=missing.jpg'], clf, out=tmp_path/'p.csv', progress=False, num_workers=0)
    return tmp_path/'p.csv'

def _heatmap_index(clf, tmp_path):
    from realfake.explain import write_heatmaps, HEATMAP_INDEX
    d = tmp_path/'imgs'; d.mkdir(); (d/f'{FORMULA}.jpg').write_bytes(_jpeg(1)); (d/'@x.jpg').write_bytes(b'junk')
    write_heatmaps(sorted(d.iterdir()), clf, tmp_path/'maps')
    return tmp_path/'maps'/HEATMAP_INDEX

def _evaluate_table(clf, tmp_path):
    from realfake.evaluate import write_csv
    write_csv(pd.DataFrame(dict(path=[FORMULA, '@x'], source=['+y', 'ok'], prob_fake=[-0.5, 0.25])), tmp_path/'e.csv')
    return tmp_path/'e.csv'

CSV_WRITERS = {'shard csv': lambda c, t: _shard_csvs(c, t)['shard csv'],
               'merged from csv': lambda c, t: _shard_csvs(c, t)['merged from csv'],
               'merged from parquet': lambda c, t: _shard_csvs(c, t)['merged from parquet'],
               'predict_to_csv': _predict_csv, 'heatmaps.csv': _heatmap_index, 'evaluate tables': _evaluate_table}

@pytest.mark.parametrize('writer', list(CSV_WRITERS))
def test_no_csv_the_project_writes_starts_a_cell_with_a_formula(clf, tmp_path, writer):
    "Every CSV writer, fed names like `=cmd|calc`: no text cell starts with = + - @ (numbers stay numbers)."
    cells = _cells(CSV_WRITERS[writer](clf, tmp_path))
    num = re.compile(r'[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?')
    assert not [c for c in cells if c[:1] in ('=', '+', '-', '@', '\t', '\r') and not num.fullmatch(c)]
    assert any(FORMULA in c for c in cells)                    # the name is there, made harmless


@pytest.mark.slow
def test_old_spellings_still_work_with_a_notice(model_dir, tmp_path):
    "realfake_predict --num_workers (now --workers) and realfake_merge --to (now --out): accepted, each with a one-line notice."
    make_shards(tmp_path/'s', 2, 2)
    r = run_cli('realfake_predict', tmp_path/'s', '--model', model_dir, '--out', tmp_path/'out', '--num_workers', 0, '--no_progress',
                '--device', 'cpu')
    assert r.returncode == 0 and '--num_workers is now --workers' in r.stderr, r.stderr
    r = run_cli('realfake_merge', tmp_path/'out', '--to', tmp_path/'m.csv')
    assert r.returncode == 0 and '--to is now --out' in r.stderr, r.stderr
    assert len(pd.read_csv(tmp_path/'m.csv')) == 4


# ---- --provenance on shards: the evidence in each member's bytes, beside its score ----

A1111 = 'a cat on a sofa\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Model: sd_xl_base_1.0, Version: v1.9.0'

def _a1111_png() -> bytes:
    "A small PNG carrying A1111's `parameters` text chunk, as the web UI saves its images."
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo(); info.add_text('parameters', A1111)
    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(b, 'PNG', pnginfo=info)
    return b.getvalue()

def test_provenance_column_in_shard_outputs_and_merge(clf, model_dir, tmp_path):
    """A shard with an A1111 PNG and a plain JPEG, scored with and without provenance: the column (Parquet and CSV) names
    A1111 for the PNG, is empty for the JPEG, holds the same text `predict` gives the same bytes; the scores are identical;
    merged files keep it; a job without it keeps its 8 columns; a rerun with the other choice is refused, or rescored."""
    from realfake.predict import realfake_predict
    from realfake.shards import realfake_merge
    png, jpg = _a1111_png(), _jpeg(1)
    write_members(tmp_path/'s'/'00000.tar', [('gen.png', png), ('photo.jpg', jpg), ('big.jpg', None)])
    kw = dict(formats='parquet,csv', progress=False, num_workers=0)
    predict_shards(tmp_path/'s', clf, out=tmp_path/'plain', **kw)
    s = predict_shards(tmp_path/'s', clf, out=tmp_path/'prov', provenance=True, **kw)
    assert (s['scored'], s['images']) == (1, 3)
    plain, prov = _read(tmp_path/'plain', '00000'), _read(tmp_path/'prov', '00000')
    assert list(plain.columns) == SHARD_COLUMNS and list(prov.columns) == SHARD_COLUMNS + ['provenance']
    want = ['text/asserted: A1111 parameters (model sd_xl_base_1.0)', '', '']      # the 10 GB member is not read: empty
    assert prov.provenance.tolist() == want
    assert want[:2] == clf.predict([png, jpg], provenance=True).provenance.tolist()   # the text the CSV path writes
    pd.testing.assert_frame_equal(prov.drop(columns='provenance'), plain)          # the scores never change
    assert pd.read_csv(tmp_path/'prov'/'00000.csv', keep_default_na=False).provenance.tolist() == want
    assert pd.read_csv(tmp_path/'plain'/'00000.csv').columns.tolist() == SHARD_COLUMNS
    assert json.loads((tmp_path/'prov'/'00000.json').read_text())['scored_with']['provenance'] is True
    # merged: the column kept from Parquet and from CSV outputs; a job without it merges as before
    realfake_merge(tmp_path/'prov', out=tmp_path/'m.parquet'); realfake_merge(tmp_path/'prov', out=tmp_path/'m.csv')
    assert pd.read_parquet(tmp_path/'m.parquet').provenance.tolist() == want
    assert pd.read_csv(tmp_path/'m.csv', keep_default_na=False).provenance.tolist() == want
    predict_shards(tmp_path/'s', clf, out=tmp_path/'prov_csv', provenance=True, formats='csv', progress=False, num_workers=0)
    merge_outputs(tmp_path/'prov_csv', tmp_path/'from_csv.parquet')                 # read back from the shard's CSV
    assert pd.read_parquet(tmp_path/'from_csv.parquet').provenance.tolist() == want
    merge_outputs(tmp_path/'plain', tmp_path/'p.parquet')
    assert list(pd.read_parquet(tmp_path/'p.parquet').columns) == SHARD_COLUMNS
    # the other choice on a rerun: refused (nothing touched), or rescored with rescore; the command passes it on
    with pytest.raises(RealfakeError, match='was scored with provenance'):
        predict_shards(tmp_path/'s', clf, out=tmp_path/'plain', provenance=True, **kw)
    assert list(_read(tmp_path/'plain', '00000').columns) == SHARD_COLUMNS
    realfake_predict([str(tmp_path/'s')], model=str(model_dir), out=str(tmp_path/'plain'), formats='parquet,csv', provenance=True,
                     rescore=True, workers=1, device='cpu', no_progress=True)      # a decoding process reads the provenance
    assert _read(tmp_path/'plain', '00000').provenance.tolist() == want
