"Tests of realfake.predict: Classifier and realfake_predict (CPU, untrained convnext_atto at 32 px)."
import csv, json, logging, os, signal, subprocess, sys, textwrap, time
import forks
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from PIL import Image

from realfake.preprocess import crop_boxes, normalize
from realfake.predict import Classifier, CSV_COLUMNS, predict_to_csv, realfake_predict, load_classifier
from realfake.modeldir import ModelNotFound

SIZE = 32

@pytest.fixture(scope='module')
def model_dir(tiny_model_dir): return tiny_model_dir

@pytest.fixture(scope='module')
def clf(model_dir): return Classifier.from_dir(model_dir, backend='torch', device='cpu')

def _rand_img(seed, w=48, h=40):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))

class _Counting(torch.nn.Module):
    "Wraps a model and counts the images it is called on."
    def __init__(self, m): super().__init__(); self.m, self.n = m, 0
    def forward(self, x): self.n += len(x); return self.m(x)

@pytest.fixture
def counting(clf):
    orig = clf.model
    clf.model = _Counting(orig)
    yield clf.model
    clf.model = orig

def _write_good(folder, n, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n): _rand_img(i).save(folder/f'img_{i:03d}.png')

def test_inputs_paths_pil_arrays_agree(clf, tmp_path):
    im = _rand_img(1)
    im.save(tmp_path/'a.png')
    df = clf.predict([tmp_path/'a.png', str(tmp_path/'a.png'), im, np.asarray(im), (tmp_path/'a.png').read_bytes()])
    assert df.error.isna().all()
    assert np.allclose(df.prob_fake, df.prob_fake[0], atol=1e-6)
    assert df.path[0] == str(tmp_path/'a.png') and pd.isna(df.path[2])
    # single item, and prob_fake agrees with predict
    assert np.isclose(clf.prob_fake(im)[0], df.prob_fake[0])

def test_prob_label_threshold_temperature(clf):
    imgs = [_rand_img(i) for i in range(6)]
    df = clf.predict(imgs, bs=4)
    assert np.allclose(df.prob_fake, 1 / (1 + np.exp(-df.logit)), atol=1e-9)
    old_t, old_thr = clf.temperature, clf.threshold
    try:
        clf.temperature = 3.0
        df3 = clf.predict(imgs)
        assert np.allclose(df3.prob_fake, 1 / (1 + np.exp(-df.logit / 3)), atol=1e-9)
        clf.threshold = float(np.median(df3.prob_fake))
        df4 = clf.predict(imgs)
        assert (df4.label == np.where(df4.prob_fake >= clf.threshold, 'fake', 'real')).all()
        assert set(df4.label) == {'real', 'fake'}
    finally: clf.temperature, clf.threshold = old_t, old_thr

def test_batching_does_not_change_scores(clf):
    imgs = [_rand_img(i) for i in range(7)]
    assert np.allclose(clf.prob_fake(imgs, bs=1), clf.prob_fake(imgs, bs=5), atol=1e-5)

def _bad_files(d):
    d.mkdir(parents=True, exist_ok=True)
    (d/'zero.jpg').write_bytes(b'')
    (d/'page.jpg').write_bytes(b'<!doctype html><html><body>404</body></html>')
    (d/'noise.jpg').write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    _rand_img(5, 64, 64).save(d/'full.png')
    data = (d/'full.png').read_bytes(); (d/'trunc.png').write_bytes(data[:len(data)//2]); (d/'full.png').unlink()
    return ['zero.jpg', 'page.jpg', 'noise.jpg', 'trunc.png']

def test_cli_folder_good_and_bad(model_dir, tmp_path):
    d = tmp_path/'in'
    _write_good(d/'sub', 3)
    _rand_img(9).convert('RGB').save(d/'photo one é.jpg', quality=90)
    bad = _bad_files(d/'bad')
    out = tmp_path/'pred.csv'
    s = realfake_predict([str(d)], model=str(model_dir), out=str(out), bs=2, workers=0, no_progress=True)
    assert (s['scored'], s['errors']) == (4, len(bad))
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == CSV_COLUMNS and len(df) == 4 + len(bad)
    assert df.path.is_unique
    names = df.path.map(lambda p: Path(p).name)
    for b in bad:
        row = df[names == b].iloc[0]
        assert row.error.startswith('cannot read image') and b in row.error, row.error
        assert row.prob_fake == '' and row.label == ''
    good = df[~names.isin(bad)]
    assert (good.error == '').all()
    p = good.prob_fake.astype(float)
    assert p.between(0, 1).all() and set(good.label) <= {'real', 'fake'}

def test_cli_missing_input_gets_error_row(model_dir, tmp_path):
    _write_good(tmp_path/'in', 1)
    out = tmp_path/'p.csv'
    s = predict_to_csv([tmp_path/'in', tmp_path/'nope.jpg'], load_classifier(model_dir), out=out, progress=False, num_workers=0)
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 2 and s['errors'] == 1
    assert 'no such file' in df[df.path.str.endswith('nope.jpg')].error.iloc[0]

def test_worker_processes(clf, tmp_path):
    "Decoding in worker processes gives the same rows as in-process decoding (errors included)."
    d = tmp_path/'in'; _write_good(d, 6); _bad_files(d)
    a = predict_to_csv([d], clf, out=tmp_path/'a.csv', bs=2, num_workers=2, progress=False)
    b = predict_to_csv([d], clf, out=tmp_path/'b.csv', bs=2, num_workers=0, progress=False)
    assert a['scored'] == b['scored'] == 6 and a['errors'] == b['errors'] == 4
    da, db = pd.read_csv(tmp_path/'a.csv'), pd.read_csv(tmp_path/'b.csv')
    pd.testing.assert_frame_equal(da, db)

def test_resume_skips_done_files(clf, counting, tmp_path):
    d = tmp_path/'in'; _write_good(d, 5)
    out = tmp_path/'p.csv'
    predict_to_csv([d], clf, out=out, bs=2, num_workers=0, progress=False)
    assert counting.n == 5
    _write_good(d, 2, start=5)                                  # two new files arrive
    s = predict_to_csv([d, d/'img_000.png'], clf, out=out, bs=2, num_workers=0, progress=False)
    assert counting.n == 7 and (s['skipped'], s['scored']) == (5, 2)   # only the new ones went through the model
    s = predict_to_csv([d], clf, out=out, bs=2, num_workers=0, progress=False)
    assert counting.n == 7 and s['scored'] == 0
    df = pd.read_csv(out)
    assert len(df) == 7 and df.path.is_unique

def test_killed_run_partial_line_recovered(clf, counting, tmp_path):
    d = tmp_path/'in'; _write_good(d, 5)
    out = tmp_path/'p.csv'
    predict_to_csv([d], clf, out=out, bs=2, num_workers=0, progress=False)
    full = pd.read_csv(out)
    lines = out.read_text().splitlines(keepends=True)
    # as if killed while writing the 3rd row: header + 2 rows + half a row
    out.write_text(''.join(lines[:3]) + lines[3][:len(lines[3]) // 2])
    counting.n = 0
    predict_to_csv([d], clf, out=out, bs=2, num_workers=0, progress=False)
    assert counting.n == 3                           # the half-written row's file is scored again, the others not
    df = pd.read_csv(out)
    assert len(df) == 5 and df.path.is_unique and df.error.isna().all()
    pd.testing.assert_frame_equal(df.sort_values('path').reset_index(drop=True),
                                  full.sort_values('path').reset_index(drop=True), atol=1e-5)

def test_foreign_csv_refused(clf, tmp_path):
    (tmp_path/'x.csv').write_text('a,b\n1,2\n')
    with pytest.raises(RealfakeError, match='not a realfake_predict CSV'):
        predict_to_csv([tmp_path], clf, out=tmp_path/'x.csv', progress=False)
    assert (tmp_path/'x.csv').read_text() == 'a,b\n1,2\n'

_SLOW_RUN = textwrap.dedent('''
    import sys, time
    import realfake.predict as P
    orig = P.Classifier.logits
    def slow(self, x):
        time.sleep(0.4); return orig(self, x)
    P.Classifier.logits = slow
    P.predict_to_csv([sys.argv[1]], P.load_classifier(sys.argv[2], backend='torch'), out=sys.argv[3], bs=1, num_workers=0, progress=False)
''')

@pytest.mark.slow
def test_sigkill_midway_then_rerun(model_dir, clf, counting, tmp_path):
    "A run killed with SIGKILL leaves a CSV valid up to its last complete row; a rerun completes it, no file twice."
    d = tmp_path/'in'; _write_good(d, 12)
    out = tmp_path/'p.csv'
    env = cli_env(PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get('PYTHONPATH', '')]))
    proc = forks.popen([sys.executable, '-c', _SLOW_RUN, str(d), str(model_dir), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while time.time() - t0 < 60:
            if out.exists() and out.read_text().count('\n') >= 3: break   # header + at least 2 rows
            if proc.poll() is not None: break
            time.sleep(0.05)
        assert proc.poll() is None, 'the run finished before it could be killed'
        proc.send_signal(signal.SIGKILL); proc.wait(10)
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    done = pd.read_csv(out)                          # valid CSV as left by the kill
    assert 2 <= len(done) < 12 and done.error.isna().all()
    predict_to_csv([d], clf, out=out, bs=4, num_workers=0, progress=False)
    df = pd.read_csv(out)
    assert len(df) == 12 and df.path.is_unique
    assert counting.n == 12 - len(done)

def test_native_grid_crops(clf, tmp_path):
    "A native-pixel grid: the score combines the logits of crops that are exact slices of the image, as the spec says."
    big = _rand_img(3, w=100, h=70)                  # larger than the 32 px crop
    big.save(tmp_path/'big.png')
    native = clf.with_preprocess(resize='native', crops='grid', max_crops=9)
    df = native.predict([tmp_path/'big.png'])
    boxes = crop_boxes(100, 70, native.spec)
    assert df.n_crops[0] == len(boxes) == 9
    x = normalize(np.stack([np.asarray(big)[t:b, l:r] for l, t, r, b in boxes]), native.spec)
    lg = clf.logits(x)
    assert np.isclose(df.logit[0], (lg[:, 1] - lg[:, 0]).mean(), atol=1e-5)
    top = boxes[int(np.argmax(lg[:, 1] - lg[:, 0]))]
    assert df.top_crop[0] == ','.join(map(str, top))            # which crop looked most generated
    dmax = clf.with_preprocess(resize='native', crops='grid', max_crops=9, combine='max').predict([tmp_path/'big.png'])
    assert np.isclose(dmax.logit[0], (lg[:, 1] - lg[:, 0]).max(), atol=1e-5)
    # and differs from the model's own policy, which sees a downscaled image
    assert not np.isclose(df.logit[0], clf.predict([big]).logit[0], atol=1e-4)
    assert clf.spec.resize == 36                                 # with_preprocess left the original alone

def test_cli_native_grid(model_dir, tmp_path):
    d = tmp_path/'in'; d.mkdir()
    _rand_img(0, 96, 64).save(d/'a.png'); _rand_img(1, 20, 20).save(d/'small.png')
    realfake_predict([str(d)], model=str(model_dir), out=str(tmp_path/'p.csv'), resize='native', crops='grid', max_crops=4,
                     combine='max', no_progress=True, num_workers=0)
    df = pd.read_csv(tmp_path/'p.csv').set_index(pd.read_csv(tmp_path/'p.csv').path.map(lambda p: Path(p).name))
    assert df.loc['a.png', 'n_crops'] == 4 and df.loc['small.png', 'n_crops'] == 1   # a small image: one crop, padded by reflection
    assert df.error.isna().all() and isinstance(df.loc['a.png', 'top_crop'], str) and pd.isna(df.loc['small.png', 'top_crop'])

def test_bad_options(clf, model_dir):
    with pytest.raises(ValueError, match='crops'): clf.with_preprocess(crops='zoom')
    with pytest.raises(ValueError, match='combine'): clf.with_preprocess(combine='median')
    with pytest.raises(ValueError, match='resize'): load_classifier(model_dir, resize='huge')
    with pytest.raises(ValueError, match='threshold'): load_classifier(model_dir, threshold=2)
    with pytest.raises(ModelNotFound, match='not found'): Classifier.from_dir('/nonexistent/model')

def _console(name):
    p = Path(sys.executable).parent/name
    if not p.exists(): pytest.skip(f'{name} console script not installed (pip install -e .)')
    return str(p)

@pytest.mark.slow
def test_console_script_exit_codes(model_dir, tmp_path, run_cli):
    "The installed console script: success exits 0 with a summary line; a user error exits 2 with one clean line (no traceback)."
    _write_good(tmp_path/'in', 2)
    r = subprocess.run([_console('realfake_predict'), str(tmp_path/'in'), '--model', str(model_dir), '--out',
                        str(tmp_path/'p.csv'), '--no_progress'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    assert '2 scored' in r.stdout and len(pd.read_csv(tmp_path/'p.csv')) == 2
    r = run_cli('realfake_predict', tmp_path/'in', '--model', tmp_path/'no_model', '--out', tmp_path/'q.csv', '--no_progress')
    assert r.returncode == 2 and 'Traceback' not in r.stderr and 'no_model' in r.stderr


# ------------------------------------------------------------------ issue 13/14: options, CSV repair, odd file names
from realfake.core import escape_path, unescape_path, RealfakeError
from realfake.predict import PredictOptions, _open_resume, sidecar_path, csv_complete_length
from realfake.shards import csv_line
from helpers import cli_env

AWKWARD = ['/d/plain.jpg', '/d/comma, here.jpg', '/d/quote "q" .png', '/d/new\nline.png', '/d/cr\rreturn.png',
           '/d/ünï cødé 漢字.jpg', escape_path(os.fsdecode(b'/d/caf\xe9.jpg')), escape_path('/d/back\\slash.png'), '/d/"',
           '/d/ends with newline\n', '/d/""', '/d/=cmd.png']

def _awkward_csv():
    "CSV bytes as predict_to_csv writes them (header, rows with awkward paths, some error rows), and each record's end offset."
    data = csv_line(CSV_COLUMNS).encode(); ends, rows = [len(data)], []
    for i, p in enumerate(AWKWARD):
        err = f'cannot read image {p}: "bad"\nheader' if i % 4 == 2 else ''
        r = [p, '' if err else f'{i / 20:.6g}', '' if err else ('fake' if i % 2 else 'real'), '' if err else f'{i - 6:.6g}',
             '0' if err else str(1 + i % 3), '' if err or i % 3 else '0,0,32,32', err]
        data += csv_line(r).encode(); rows.append(r); ends.append(len(data))
    return data, rows, ends

def test_csv_repair_at_every_byte_offset(tmp_path, caplog, monkeypatch):
    """A kill can cut the CSV at any byte, inside quotes, a multi-byte character, a doubled quote or a newline that
    belongs to a file name. At every offset the repair leaves a valid CSV holding exactly the complete records before
    the cut (minus error rows, which are retried), and the done set is their paths."""
    data, rows, ends = _awkward_csv()
    rec = dict(weights_sha256='ab', threshold=0.5)
    out = tmp_path/'p.csv'
    header = (','.join(CSV_COLUMNS) + '\n').encode()
    caplog.set_level(logging.ERROR, logger='realfake')           # one warning per cut otherwise
    monkeypatch.setattr(os, 'fsync', lambda fd: None)            # durability is not what this test is about: speed
    for cut in range(len(data) + 1):
        out.write_bytes(data[:cut]); sidecar_path(out).unlink(missing_ok=True)
        n = sum(e <= cut for e in ends[1:]) if cut >= ends[0] else 0
        want = [r for r in rows[:n] if not r[-1]]
        done = _open_resume(out, rec)
        got = list(csv.reader(open(out, newline='', encoding='utf-8')))
        assert got == [CSV_COLUMNS] + want, f'cut at byte {cut}'
        assert done == {r[0] for r in want}, f'cut at byte {cut}'
        assert out.read_bytes().startswith(header)
    # the tail scan agrees with a scan of the whole file, wherever the scan starts
    for cut in range(0, len(data) + 1, 7):
        assert all(csv_complete_length(data[:cut], tail) == csv_complete_length(data[:cut], len(data)) for tail in (1, 5, 64))

@pytest.mark.slow
def test_options_stored_refused_rescored(clf, model_dir, tmp_path, run_cli):
    "The options live in predictions.csv.json; other options are refused (exit 2, one line) or rescored; bs/workers do not count."
    d = tmp_path/'in'; _write_good(d, 3)
    out = tmp_path/'p.csv'
    opts = PredictOptions(model=str(model_dir), device='cpu', backend='torch', num_workers=0)
    s = predict_to_csv([d], opts, out=out, progress=False)
    side = json.loads(sidecar_path(out).read_text())
    assert side['columns'] == CSV_COLUMNS and side['scored_with']['threshold'] == 0.5 and len(side['scored_with']['weights_sha256']) == 64
    assert predict_to_csv([d], opts.replace(bs=1, num_workers=0), out=out, progress=False)['skipped'] == 3   # speed settings
    with pytest.raises(RealfakeError, match=r'was scored with threshold 0.5, not 0.8: score into another --out, or pass --rescore'):
        predict_to_csv([d], opts.replace(threshold=0.8), out=out, progress=False)
    with pytest.raises(RealfakeError, match=r"was scored with preprocess .*\(and 1 more: threshold\)|was scored with preprocess"):
        predict_to_csv([d], opts.replace(resize='native', crops='grid'), out=out, progress=False)
    r = run_cli('realfake_predict', d, '--model', model_dir, '--out', out, '--threshold', 0.8, '--no_progress', '--workers', 0)
    assert r.returncode == 2 and 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-800:]
    assert 'threshold 0.5, not 0.8' in r.stderr
    s = predict_to_csv([d], opts.replace(threshold=0.8), out=out, progress=False, rescore=True)
    assert (s['scored'], s['skipped']) == (3, 0)
    df = pd.read_csv(out)
    assert len(df) == 3 and (df.label == np.where(df.prob_fake >= 0.8, 'fake', 'real')).all()
    assert json.loads(sidecar_path(out).read_text())['scored_with']['threshold'] == 0.8
    assert predict_to_csv([d], opts.replace(threshold=0.8), out=out, progress=False)['skipped'] == 3        # resumable again

def test_error_rows_retried(clf, counting, tmp_path):
    "A file that could not be read is tried again on the next run; the CSV keeps one row per file."
    d = tmp_path/'in'; _write_good(d, 3)
    (d/'late.png').write_bytes(b'')                                 # still being written when the first run saw it
    out = tmp_path/'p.csv'
    s = predict_to_csv([d, tmp_path/'gone.jpg'], clf, out=out, bs=2, num_workers=0, progress=False)
    assert (s['scored'], s['errors']) == (3, 2) and counting.n == 3
    _rand_img(7).save(d/'late.png', format='PNG')
    s = predict_to_csv([d, tmp_path/'gone.jpg'], clf, out=out, bs=2, num_workers=0, progress=False)
    assert (s['skipped'], s['scored'], s['errors']) == (3, 1, 1) and counting.n == 4     # only the failed file again
    df = pd.read_csv(out)
    assert len(df) == 5 and df.path.is_unique
    assert df.set_index('path').loc[str(d/'late.png')].notna()['prob_fake']
    assert df.error.notna().sum() == 1 and 'gone.jpg' in df.error.dropna().iloc[0]

def test_load_classifier_leaves_a_passed_classifier_alone(clf):
    c = load_classifier(clf, threshold=0.7)
    assert c.threshold == 0.7 and clf.threshold == 0.5 and c.model is clf.model

def _latin1_folder(root: Path) -> list[Path]:
    "Files whose names are Latin-1 bytes (not UTF-8), one with a newline, one unreadable; the folder name too."
    d = Path(os.fsdecode(os.fsencode(root) + b'/d\xe9j\xe0'))
    try: d.mkdir(parents=True)
    except (OSError, UnicodeError): pytest.skip('this file system refuses non-UTF-8 names')
    names = [b'caf\xe9.png', b'na\xefve\nline.png', b'\xff\xfe.png', b'plain.png', b'cr\xe8me.jpg', b'car\rriage, "q".png']
    out = []
    for i, n in enumerate(names):
        p = Path(os.fsdecode(os.fsencode(d) + b'/' + n))
        _rand_img(i).save(p, format='PNG'); out.append(p)
    bad = Path(os.fsdecode(os.fsencode(d) + b'/cass\xe9.jpg')); bad.write_bytes(b'not an image')
    return out + [bad]

@pytest.mark.slow
def test_undecodable_names_end_to_end(model_dir, clf, tmp_path, run_cli):
    """Latin-1 file names on a Linux disk: listed, scored (in worker processes), written escaped into the CSV, named in
    the error row and the summary line, and resumed without scoring anything twice."""
    files = _latin1_folder(tmp_path)
    out = Path(os.fsdecode(os.fsencode(tmp_path) + b'/r\xe9sultats.csv'))
    args = ['realfake_predict', files[0].parent, '--model', model_dir, '--out', out, '--bs', 2, '--workers', 2,
            '--no_progress', '--device', 'cpu']
    r = forks.run([sys.executable, '-c', 'import sys, os; from fastcore.script import _run_cli; from realfake.predict import '
                        "realfake_predict as f; sys.argv[0] = 'realfake_predict'; _run_cli(f.__wrapped__, False)"] +
                       [os.fsencode(a) if isinstance(a, (str, Path)) else str(a) for a in args[1:]],
                       capture_output=True, timeout=180, env=cli_env())
    stdout, stderr = r.stdout.decode(), r.stderr.decode('utf-8', 'replace')
    assert r.returncode == 0, stderr[-1500:]
    assert '6 scored' in stdout and '1 errors' in stdout and escape_path(out) in stdout
    df = pd.read_csv(out, keep_default_na=False)
    assert sorted(df.path) == sorted(escape_path(f) for f in files)
    assert all(Path(unescape_path(p)).exists() for p in df.path)                   # back to the very files
    bad = df[df.error != '']
    assert len(bad) == 1 and escape_path(files[-1]) in bad.error.iloc[0]
    assert '\\xe9' in bad.path.iloc[0] and df.path.map(lambda p: '\n' in p).sum() == 1
    # rerun: all done except the unreadable file, retried
    s = predict_to_csv([files[0].parent], clf, out=out, bs=2, num_workers=2, progress=False)
    assert (s['skipped'], s['scored'], s['errors']) == (6, 0, 1)
    assert len(pd.read_csv(out)) == 7
    # from Python: the path column holds the escaped names too (valid UTF-8 text for pandas/pyarrow string columns)
    pr = clf.predict(files)
    assert pr.path.tolist() == [escape_path(f) for f in files] and pr.error.notna().sum() == 1

@pytest.mark.slow
def test_cli_heatmaps(model_dir, tmp_path, run_cli):
    "--heatmaps DIR: one overlay PNG per readable image (same-named files kept apart), an index, a rerun redoing only what is missing."
    d = tmp_path/'in'; _write_good(d, 1); _write_good(d/'sub', 1)          # two files named img_000.png
    (d/'broken.jpg').write_bytes(b'\xff\xd8\xff' + b'\0' * 50)
    maps, out = tmp_path/'maps', tmp_path/'p.csv'
    args = ('realfake_predict', d, '--model', model_dir, '--out', out, '--heatmaps', maps, '--heatmap_kind', 'crops', '--no_progress')
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-800:]
    assert '2 heatmaps written, 0 already there, 0 failed' in r.stdout
    idx = pd.read_csv(maps/'heatmaps.csv', keep_default_na=False)
    assert sorted(idx.path) == sorted(str(p.resolve()) for p in (d/'img_000.png', d/'sub'/'img_000.png'))
    assert len(set(idx.heatmap)) == 2 and all(h.startswith('img_000-') for h in idx.heatmap)
    png = Image.open(maps/idx.heatmap[0])
    src = Image.open(idx.path[0])
    assert png.size == src.size and np.abs(np.asarray(png, float) - np.asarray(src.convert('RGB'), float)).mean() > 5   # drawn over
    (maps/idx.heatmap[1]).unlink()
    r = run_cli(*args)
    assert r.returncode == 0 and '1 heatmaps written, 1 already there' in r.stdout, r.stderr[-800:]
    r = run_cli(*args[:-2], 'nothing', '--no_progress')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--heatmap_kind must be one of cam, crops" in r.stderr
    r = run_cli('realfake_predict', d, '--model', model_dir, '--out', tmp_path/'q.csv', '--heatmaps', '--no_progress')
    assert r.returncode == 0 and '2 heatmaps written' in r.stdout, r.stderr[-800:]     # --heatmaps alone: beside the CSV
    assert len(pd.read_csv(tmp_path/'q_heatmaps'/'heatmaps.csv')) == 2
    shard = tmp_path/'s.tar'; shard.write_bytes(b'\0' * 1024)
    r = run_cli('realfake_predict', shard, '--model', model_dir, '--heatmaps', maps, '--no_progress')
    assert r.returncode == 2 and 'not tar shards' in r.stderr and 'Traceback' not in r.stderr

# ---- decoding one batch ahead on a thread (issue 24)
from realfake.predict import _one_ahead
import threading

@pytest.mark.parametrize('bs', [1, 2, 3])
def test_decode_ahead_same_rows_in_order(clf, tmp_path, monkeypatch, bs):
    "Decoding ahead on a thread gives the rows of decoding in series, in order, each unreadable file's error in its place."
    import realfake.predict as P
    d = tmp_path/'in'; _write_good(d, 5); _bad_files(d)
    files = sorted(d.iterdir())
    where, prep = [], P.prepare_input
    monkeypatch.setattr(P, 'prepare_input', lambda *a, **k: where.append(threading.current_thread().name) or prep(*a, **k))
    a = clf.predict(files, bs=bs, decode_ahead=True)
    assert len(where) == 9 and all(w.startswith('realfake-decode') for w in where)
    where.clear()
    b = clf.predict(files, bs=bs, decode_ahead=False)
    assert where == ['MainThread'] * 9
    pd.testing.assert_frame_equal(a, b)
    assert list(a.path) == [escape_path(f) for f in files] and a.error.notna().sum() == 4
    assert all('cannot read image' in e for e in a.error.dropna())

def test_decode_ahead_at_most_one_batch_ahead(clf, monkeypatch):
    "While the caller holds batch j, at most batch j+1 has been decoded (memory of one more batch)."
    import realfake.predict as P
    decoded, prep = [], P.prepare_input
    monkeypatch.setattr(P, 'prepare_input', lambda *a, **k: decoded.append(1) or prep(*a, **k))
    imgs = [_rand_img(i) for i in range(10)]
    for j, df in enumerate(clf.iter_predict(imgs, bs=2, decode_ahead=True)):
        time.sleep(0.05)                                   # a slow caller: the decoder must wait, not run on
        assert len(df) == 2 and len(decoded) <= 2 * (j + 2), (j, len(decoded))
    assert len(decoded) == 10

def test_decode_ahead_off_by_default_and_with_workers(clf, monkeypatch):
    "Decoding stays on the calling thread unless asked for; asked for with workers, it is not used (workers decode)."
    import realfake.predict as P
    where, prep = [], P.prepare_input
    monkeypatch.setattr(P, 'prepare_input', lambda *a, **k: where.append(threading.current_thread().name) or prep(*a, **k))
    imgs = [_rand_img(i) for i in range(3)]
    clf.predict(imgs, bs=1); assert where == ['MainThread'] * 3
    where.clear(); clf.predict(imgs, bs=1, decode_ahead=True); assert len(where) == 3 and all(w.startswith('realfake-decode') for w in where)

def test_one_ahead_raises_in_place():
    def gen():
        yield 1; yield 2; raise OSError('disk gone')
    got = []
    with pytest.raises(OSError, match='disk gone'):
        for v in _one_ahead(gen()): got.append(v)
    assert got == [1, 2]
