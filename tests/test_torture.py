"""Torture tests: the corpus of bad inputs (tests/badfiles.py) through every entry point.

For each entry point one test drives the whole corpus and checks each file's outcome: a correct result for the
valid odd formats, or a clear error naming the file and the reason; never a crash, a hang, or a silently wrong label.
`python tests/test_torture.py` prints the outcome table (bad input x entry point).
"""
from __future__ import annotations
import csv, json, os, sys, math, logging
from pathlib import Path
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from badfiles import make_corpus, reason_ok, Entry
from helpers import deadline, Hang, run_cli, make_model_dir
from realfake.preprocess import Preprocess

import realfake.images as images

# ---------------------------------------------------------------- outcome bookkeeping
def _short(msg, e: Entry) -> str:
    "The reason part of an error message (the text after the file name)."
    m = str(msg)
    for name in (str(e.path), e.path.name):
        if name in m: m = m.split(name, 1)[1]; break
    return m.lstrip(' :').split('\n')[0][:60]

def judge(e: Entry, outcome: str, detail, expect: str | None = None, check=None) -> str:
    """One table cell: 'ok', 'error(<reason>)' or 'FAIL: <why>'.
    `outcome` is 'ok' / 'error' / 'crash' / 'hang' / 'missing'; `detail` the result or the message;
    `check(e, detail)` returns None or a complaint about an 'ok' result."""
    expect = expect or e.expect
    if outcome in ('crash', 'hang', 'missing'): return f'FAIL: {outcome}: {str(detail)[:200]}'
    if expect == 'ok':
        if outcome == 'error': return f'FAIL: valid file refused: {str(detail)[:200]}'
        why = check(e, detail) if check else None
        return f'FAIL: wrong result: {why}' if why else 'ok'
    if outcome == 'ok': return f'FAIL: bad file accepted silently (expected an error: {"/".join(e.reason)})'
    if not reason_ok(detail, e): return f'FAIL: unclear error (must name the file and say {"/".join(e.reason)}): {str(detail)[:200]}'
    return f'error({_short(detail, e)})'

def assert_cells(cells: dict, ep: str):
    fails = {k: v for k, v in cells.items() if v.startswith('FAIL')}
    assert not fails, f"{ep}: {len(fails)} of {len(cells)} corpus files mishandled:\n" + '\n'.join(f'  {k}: {v}' for k, v in fails.items())

# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp('corpus')
    return make_corpus(d / 'bad files')

@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    # size 48 > the corpus images' shorter side (32): crops mode must upscale them (a second load_image)
    return make_model_dir(tmp_path_factory.mktemp('model') / 'model', size=48)

@pytest.fixture(scope='module')
def clf(model_dir):
    from realfake.predict import Classifier
    return Classifier.from_dir(model_dir, device='cpu', backend='torch')

# ---------------------------------------------------------------- realfake.images
def _pixels_check(e: Entry, im):
    if im.mode != 'RGB': return f'mode {im.mode}, not RGB'
    if im.size != e.size: return f'size {im.size}, expected {e.size} (upright)'
    if e.ref is None: return None
    a = np.asarray(im).astype(int); m = e.mask if e.mask is not None else np.ones(a.shape[:2], bool)
    d = np.abs(a - e.ref.astype(int))[m].mean()
    if d > e.tol: return f'pixels differ from the correct decode (mean abs diff {d:.1f} > {e.tol})'

def _size_check(size):
    def check(e, im):
        if im.mode != 'RGB': return f'mode {im.mode}, not RGB'
        if min(im.size) != size: return f'shorter side {min(im.size)}, expected {size}'
        # orientation survives resizing: landscape stays landscape
        if (im.size[0] >= im.size[1]) != (e.size[0] >= e.size[1]): return f'orientation lost: {im.size} vs {e.size}'
    return check

def observe_load(corpus, size=None) -> dict:
    out = {}
    for e in corpus:
        try:
            with deadline(20, 'load_image'): out[e.key] = ('ok', images.load_image(e.path, short_side=size))
        except images.ImageLoadError as x: out[e.key] = ('error', str(x))
        except Hang as x: out[e.key] = ('hang', str(x))
        except Exception as x: out[e.key] = ('crash', f'{type(x).__name__}: {x}')
    return out

def cells_load(corpus, size=None):
    obs = observe_load(corpus, size)
    chk = _pixels_check if size is None else _size_check(size)
    return {e.key: judge(e, *obs[e.key], check=chk) for e in corpus}

def test_load_image_full(corpus): assert_cells(cells_load(corpus), 'load_image(path)')

def test_load_image_resized(corpus): assert_cells(cells_load(corpus, 16), 'load_image(path, short_side=16)')

def test_load_image_other_sources(corpus):
    "bytes / PIL / array inputs of the valid files decode like the path; bad bytes raise ImageLoadError, never crash."
    bad = []
    for e in corpus:
        if e.expect != 'ok' or not os.access(e.path, os.R_OK) or e.key == 'no_read_perm': continue
        data = e.path.read_bytes()
        ref = np.asarray(images.load_image(e.path, short_side=16))
        for src in (data, images.load_image(e.path), np.asarray(images.load_image(e.path))):
            got = np.asarray(images.load_image(src, short_side=16))
            if got.shape != ref.shape or np.abs(got.astype(int) - ref).mean() > 3: bad.append(f'{e.key} from {type(src).__name__}')
    for e in corpus:
        if e.expect == 'error' and e.path.is_file() and not e.path.is_symlink():
            try: images.load_image(e.path.read_bytes(), short_side=16); bad.append(f'{e.key} bytes accepted')
            except images.ImageLoadError as x: assert '<bytes>' in str(x)
    assert not bad, bad

def cells_probe(corpus):
    out = {}
    def check(e, d):
        if (d.get('width'), d.get('height')) != e.size: return f"probe says {d.get('width')}x{d.get('height')}, expected {e.size[0]}x{e.size[1]}"
        if not d.get('format'): return 'no format'
    for e in corpus:
        try:
            with deadline(20, 'probe_image'): r = ('ok', images.probe_image(e.path))
        except images.ImageLoadError as x: r = ('error', str(x))
        except Hang as x: r = ('hang', str(x))
        except Exception as x: r = ('crash', f'{type(x).__name__}: {x}')
        if e.probe == 'ok' and r[0] == 'ok':   # header-only probing cannot see a truncated body
            out[e.key] = 'ok (header only)' if r[1].get('width') else 'FAIL: no size'
        elif e.probe == 'ok' and r[0] == 'error' and reason_ok(r[1], e): out[e.key] = f'error({_short(r[1], e)})'
        else: out[e.key] = judge(e, *r, expect=e.probe_expect, check=check)
    return out

def test_probe_image(corpus): assert_cells(cells_probe(corpus), 'probe_image')

# ---------------------------------------------------------------- Python API: Classifier
def _prob_check(e, row):
    p = row['prob_fake']
    if not (isinstance(p, float) and 0 <= p <= 1): return f'prob_fake {p!r} not in [0, 1]'
    if row['label'] not in ('real', 'fake'): return f"label {row['label']!r}"
    if row.get('error') not in (None, '') and not (isinstance(row.get('error'), float) and math.isnan(row['error'])):
        return f"error column set on a scored row: {row['error']!r}"

def _row_outcome(row):
    err = row.get('error')
    has_err = isinstance(err, str) and err != ''
    return ('error', err) if has_err else ('ok', row)

NATIVE_GRID = dict(resize='native', crops='grid', max_crops=4)

def cells_classifier(corpus, clf, native=False):
    items = [str(e.path) for e in corpus]
    if native: clf = clf.with_preprocess(**NATIVE_GRID)
    try:
        with deadline(120, 'Classifier.predict'): df = clf.predict(items, bs=4)
    except (Exception, Hang) as x:
        return {e.key: f'FAIL: predict raised {type(x).__name__}: {x}' for e in corpus}, None
    if len(df) != len(items) or list(df['path']) != items:
        return {e.key: f'FAIL: rows do not match the items ({len(df)} rows for {len(items)} items)' for e in corpus}, df
    rows = df.to_dict('records')
    return {e.key: judge(e, *_row_outcome(r), check=_prob_check) for e, r in zip(corpus, rows)}, df

def test_classifier_predict(corpus, clf):
    cells, df = cells_classifier(corpus, clf)
    assert_cells(cells, 'Classifier.predict')
    # no silently wrong label: each valid file gets the same score in the mixed batch as alone (no row shift)
    ok = [(e, p) for e, p in zip(corpus, df['prob_fake']) if e.expect == 'ok']
    solo = clf.predict([str(e.path) for e, _ in ok], bs=1)
    for (e, p), q in zip(ok, solo['prob_fake']):
        assert abs(p - q) < 1e-4, f'{e.key}: prob_fake {p} in a mixed batch but {q} alone: results shifted between rows'
    assert len({round(p, 5) for _, p in ok}) > 2, 'model outputs are constant: the row alignment check cannot fail'
    by = dict(zip([e.key for e in corpus], df['prob_fake']))
    assert by['name_unicode'] == pytest.approx(by['plain_png'], abs=1e-6), 'same pixels, different name: different score'
    thr = clf.threshold
    for e, r in zip(corpus, df.to_dict('records')):
        if e.expect == 'ok': assert r['label'] == ('fake' if r['prob_fake'] > thr else 'real') or r['prob_fake'] == thr

def test_classifier_crops(corpus, clf):
    cells, df = cells_classifier(corpus, clf, native=True)
    assert_cells(cells, "Classifier.predict at native pixels, grid of crops")
    # a path scores like its upright pixels given as an array (EXIF applied exactly once)
    ok = [e for e in corpus if e.expect == 'ok']
    arr = clf.with_preprocess(**NATIVE_GRID).predict([np.asarray(images.load_image(e.path)) for e in ok], bs=4)
    by = dict(zip([e.key for e in corpus], df['prob_fake']))
    bad = [f'{e.key}: path {by[e.key]:.5f} vs upright array {q:.5f}' for e, q in zip(ok, arr['prob_fake']) if abs(by[e.key] - q) > 1e-4]
    assert not bad, "native crops score a file differently from its decoded pixels:\n" + '\n'.join(bad)


def test_classifier_odd_items(clf):
    "The Python API takes paths, bytes, PIL images and arrays: odd ones are scored, wrong ones get an error row."
    from PIL import Image
    items = {'none': (None, 'error'), 'float_array': (np.zeros((4, 4), np.float32), 'error'),
             'empty_array': (np.zeros((0, 0, 3), np.uint8), 'error'), 'tiny_array': (np.zeros((4, 4, 3), np.uint8), 'ok'),
             'empty_bytes': (b'', 'error'), 'text_bytes': (b'garbage', 'error'), 'int': (42, 'error'),
             'rgba_pil': (Image.new('RGBA', (5, 5)), 'ok'), 'i16_pil': (Image.new('I;16', (5, 5)), 'ok'),
             'bilevel_pil': (Image.new('1', (9, 9)), 'ok')}
    df = clf.predict([v for v, _ in items.values()], bs=3)
    assert len(df) == len(items)
    bad = []
    for (k, (_, want)), r in zip(items.items(), df.to_dict('records')):
        err = r['error'] if isinstance(r['error'], str) else None
        if want == 'ok' and (err or not 0 <= r['prob_fake'] <= 1 or r['label'] not in ('real', 'fake')): bad.append(f'{k}: {r}')
        if want == 'error' and (not err or not np.isnan(r['prob_fake']) or r['label'] in ('real', 'fake')): bad.append(f'{k}: {r}')
    assert not bad, '\n'.join(bad)

# ---------------------------------------------------------------- realfake_predict CLI
def _read_csv(path):
    with open(path, newline='', encoding='utf-8') as f: return list(csv.DictReader(f))

def _csv_row_check(e, r):
    try: p = float(r['prob_fake'])
    except ValueError: return f"prob_fake {r['prob_fake']!r}"
    if not 0 <= p <= 1: return f'prob_fake {p}'
    if r['label'] not in ('real', 'fake'): return f"label {r['label']!r}"

def _stderr_names(e, stderr):
    "A folder scan may skip an unlistable file (symlink loop) with a logged warning naming it and the reason."
    for line in stderr.splitlines():
        if (str(e.path) in line or e.path.name in line) and reason_ok(line, e): return line
    return None

def cells_predict_cli(corpus, model_dir, tmp, folder=False):
    out = Path(tmp) / ('pred_folder.csv' if folder else 'pred_files.csv')
    inputs = [str(corpus[0].path.parent)] if folder else [str(e.path) for e in corpus]
    r = run_cli('realfake_predict', *inputs, '--model', model_dir, '--out', out, '--bs', 4, '--workers', 0,
                '--no_progress', '--backend', 'torch', '--device', 'cpu', timeout=120)
    if r.returncode is None or not out.exists():
        why = 'hang' if r.returncode is None else f'crash: rc={r.returncode}'
        return {e.key: f'FAIL: {why}: {r.stderr[-300:]}' for e in corpus}, r, []
    rows = _read_csv(out)
    by = {}
    for row in rows: by.setdefault(row['path'], []).append(row)
    cells = {}
    for e in corpus:
        got = by.get(os.path.abspath(e.path), [])
        if len(got) > 1: cells[e.key] = f'FAIL: {len(got)} rows (scored twice)'; continue
        if not got:
            line = _stderr_names(e, r.stderr) if folder and e.expect == 'error' else None
            cells[e.key] = f'error(skipped with warning: {_short(line, e)})' if line else 'FAIL: missing: no CSV row and no warning'
            continue
        row = got[0]
        cells[e.key] = judge(e, *(('error', row['error']) if row['error'] else ('ok', row)), check=_csv_row_check)
    extra = [p for p in by if p not in {os.path.abspath(e.path) for e in corpus}]
    if extra: cells['(extra rows)'] = f'FAIL: rows for files not in the corpus (a symlinked folder scanned twice?): {extra[:3]}'
    return cells, r, rows

@pytest.mark.slow
def test_predict_cli_files(corpus, model_dir, clf, tmp_path):
    cells, r, rows = cells_predict_cli(corpus, model_dir, tmp_path)
    assert_cells(cells, 'realfake_predict FILES')
    assert r.returncode == 0, f'realfake_predict exit status {r.returncode} after a run where every file was handled; stderr tail:\n{r.stderr[-500:]}'
    n_err = sum(e.expect == 'error' for e in corpus)
    assert f'{n_err} errors' in r.stdout, r.stdout
    # same scores as the Python API (one preprocessing for both entry points)
    okp = [str(Path(row['path'])) for row in rows if row['prob_fake']]
    api = clf.predict(okp, bs=4)
    cli = {row['path']: float(row['prob_fake']) for row in rows if row['prob_fake']}
    for p, q in zip(api['path'], api['prob_fake']): assert abs(cli[p] - q) < 1e-4, (p, cli[p], q)

@pytest.mark.slow
def test_predict_cli_folder(corpus, model_dir, tmp_path):
    "The corpus folder (with a symlink back to itself inside) is scanned once, every file accounted for."
    cells, r, rows = cells_predict_cli(corpus, model_dir, tmp_path, folder=True)
    assert_cells(cells, 'realfake_predict FOLDER')
    assert r.returncode == 0, f'realfake_predict exit status {r.returncode}; stderr tail:\n{r.stderr[-500:]}'


# ---------------------------------------------------------------- realfake_prepare --probe
def _clean_pngs(dest, n, seed=0):
    "n small clean PNGs (the other label's source, so sampling can balance)."
    from PIL import Image
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n): Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(dest / f'clean_{i:02d}.png')
    return dest

def cells_prepare(corpus, tmp):
    tmp = Path(tmp); out = tmp / 'prepared.jsonl'
    clean = _clean_pngs(tmp / 'clean', len(corpus) + 6)
    r = run_cli('realfake_prepare', f'real:folder:{corpus[0].path.parent}', f'fake:folder:{clean}', '--probe',
                '--out', out, '--valid_pct', 0.25, '--no_progress', '--workers', 2, timeout=120)
    if r.returncode is None or r.returncode != 0 or not out.exists():
        return {e.key: f'FAIL: rc={r.returncode}: {r.stderr[-300:]}' for e in corpus}, r, None
    from realfake.metadata import read_metadata
    df = read_metadata(out)
    recs = {p: rec for p, rec in zip(df['path'], df.to_dict('records'))}
    dropped = {}   # "  <path>: <reason>" lines of the report
    for line in r.stdout.splitlines():
        for e in corpus:
            if line.strip().startswith(str(e.path) + ':'): dropped[e.key] = line.strip()
    cells = {}
    for e in corpus:
        rec = recs.get(str(e.path)) or recs.get(os.path.abspath(e.path))
        if e.probe_expect == 'ok':
            if rec is None: cells[e.key] = 'FAIL: readable file missing from the metadata' + (f' (dropped: {dropped[e.key]})' if e.key in dropped else ''); continue
            if (rec['width'], rec['height']) != e.size: cells[e.key] = f"FAIL: recorded {rec['width']}x{rec['height']}, expected {e.size}"; continue
            if rec['label'] != 'real': cells[e.key] = f"FAIL: label {rec['label']}"; continue
            cells[e.key] = 'ok' if e.expect == 'ok' else 'ok (header only: kept, the loader skips it later)'
        else:
            if rec is not None: cells[e.key] = 'FAIL: unreadable file kept in the metadata'; continue
            line = dropped.get(e.key) or _stderr_names(e, r.stderr)
            cells[e.key] = (f'error(dropped: {_short(line, e)})' if line and reason_ok(line, e)
                            else f'FAIL: dropped without a clear report (line: {line!r})')
    return cells, r, df

def test_prepare_probe(corpus, tmp_path):
    cells, r, df = cells_prepare(corpus, tmp_path)
    assert_cells(cells, 'realfake_prepare --probe')
    assert df['label'].value_counts().to_dict().get('fake') == df['label'].value_counts().to_dict().get('real'), 'not balanced'


# ---------------------------------------------------------------- training DataLoaders
def _corpus_df(corpus, splits=('train', 'valid')):
    import pandas as pd
    rows = [dict(path=str(e.path), label=e.label, split=sp, source='corpus') for sp in splits for e in corpus]
    return pd.DataFrame(rows)

class _Collect(logging.Handler):
    def __init__(self): super().__init__(logging.WARNING); self.msgs = []
    def emit(self, record): self.msgs.append(record.getMessage())

def cells_dls(corpus, num_workers=0, aug=False, robust=None):
    "Warnings from worker processes are not seen here: with workers only skipped_images is checked."
    import realfake.data as data
    df = _corpus_df(corpus)
    n = len(corpus)
    h = _Collect(); lg = logging.getLogger('realfake'); lg.addHandler(h)
    old_level = lg.level; lg.setLevel(logging.WARNING) if lg.level in (0,) or lg.level > logging.WARNING else None
    try:
        with deadline(90, 'get_dls + one pass'):
            dls = data.get_dls(df, Preprocess(size=16, resize=18), bs=4, num_workers=num_workers, aug=aug, robust=robust, seed=0, device='cpu')
            n_train = sum(len(xb) for xb, yb in dls.train)
            ys = []
            for xb, yb, counts in dls.valid:
                assert tuple(xb.shape[1:]) == (3, 16, 16), xb.shape
                ys += [int(v) for v in yb]
    except (Exception, Hang) as x:
        return {e.key: f'FAIL: {type(x).__name__}: {str(x)[:300]}' for e in corpus}, None
    finally: lg.removeHandler(h); lg.setLevel(old_level)
    cells = {}
    if n_train < (n // 4) * 4: cells['(train batches)'] = f'FAIL: {n_train} training items from {n} rows'
    exp_y = [('real', 'fake').index(e.label) for e in corpus]
    if ys != exp_y: cells['(valid labels)'] = f'FAIL: valid labels {ys} != metadata labels {exp_y} (a substitute of the wrong class?)'
    skipped = set(data.skipped_images(dls))
    logs = h.msgs
    for e in corpus:
        if e.expect == 'ok':
            cells[e.key] = 'FAIL: valid file skipped as unreadable' if str(e.path) in skipped else 'ok'
        elif str(e.path) not in skipped: cells[e.key] = 'FAIL: bad file not reported by skipped_images (silently used?)'
        elif num_workers == 0:
            line = next((m for m in logs if str(e.path) in m), None)
            cells[e.key] = f'error(skipped: {_short(line, e)})' if line and reason_ok(line, e) else f'FAIL: no clear warning: {line!r}'
        else: cells[e.key] = 'error(skipped)'
    return cells, dls

def test_get_dls(corpus):
    "Bad files are reported (warning naming file + reason, skipped_images) and replaced; batches keep coming."
    cells, dls = cells_dls(corpus, 0)
    assert_cells(cells, 'get_dls (num_workers=0)')

def test_get_dls_workers(corpus):
    "With worker processes (and every augmentation on), the skip list still collects every bad file (shared memory)."
    cells, dls = cells_dls(corpus, 2, aug=True, robust=1.0)
    assert_cells(cells, 'get_dls (num_workers=2)')

# ---------------------------------------------------------------- realfake_evaluate
def cells_evaluate(corpus, model_dir, tmp):
    from realfake.metadata import write_metadata
    tmp = Path(tmp); meta = tmp / 'corpus.jsonl'; out = tmp / 'report'
    write_metadata(_corpus_df(corpus, ('test',)), meta)
    r = run_cli('realfake_evaluate', meta, '--model', model_dir, '--out', out, '--bs', 4, '--num_workers', 0,
                '--no_progress', '--backend', 'torch', '--device', 'cpu', timeout=150)
    pred = out / 'predictions.csv'
    if r.returncode is None or not pred.exists():
        return {e.key: f'FAIL: rc={r.returncode}: {r.stderr[-300:]}' for e in corpus}, r, None
    rows = {row['path']: row for row in _read_csv(pred)}
    cells = {}
    for e in corpus:
        row = rows.get(str(e.path))
        if row is None: cells[e.key] = 'FAIL: no row in predictions.csv'; continue
        if row['error']: cells[e.key] = judge(e, 'error', row['error']); continue
        def chk(e, row):
            if row['label'] != e.label: return f"label column {row['label']!r} != metadata label {e.label!r}"
            if row['pred'] not in ('real', 'fake'): return f"pred {row['pred']!r}"
            return _csv_row_check(e, row)
        cells[e.key] = judge(e, 'ok', row, check=chk)
    metrics = json.loads((out / 'metrics.json').read_text()) if (out / 'metrics.json').exists() else None
    return cells, r, metrics

@pytest.mark.slow
def test_evaluate_cli(corpus, model_dir, tmp_path):
    cells, r, metrics = cells_evaluate(corpus, model_dir, tmp_path)
    assert_cells(cells, 'realfake_evaluate')
    n_ok = sum(e.expect == 'ok' for e in corpus)
    assert metrics is not None, 'no metrics.json'
    assert (metrics['n'], metrics['n_errors']) == (n_ok, len(corpus) - n_ok), 'metrics must count only the readable images'
    assert r.returncode == 0, f'realfake_evaluate exit status {r.returncode}; stderr tail:\n{r.stderr[-500:]}'


# ---------------------------------------------------------------- CLI user errors: a clear line, no traceback
@pytest.mark.slow
def test_cli_user_errors_are_clean(corpus, model_dir, tmp_path):
    import shutil
    bad_model = tmp_path / 'half copied model'; shutil.copytree(model_dir, bad_model)
    data = (bad_model / 'model.safetensors').read_bytes()
    (bad_model / 'model.safetensors').write_bytes(data[:len(data) // 2])          # a killed copy
    fails = []
    r = run_cli('realfake_predict', corpus[0].path, '--model', bad_model, '--out', tmp_path / 'p.csv', '--no_progress',
                '--backend', 'torch', '--device', 'cpu')
    if r.returncode in (0, None) or 'Traceback' in r.stderr or 'model.safetensors' not in r.stderr:
        fails.append(f'realfake_predict with a truncated model.safetensors: rc={r.returncode}, stderr tail: {r.stderr[-400:]}')
    r = run_cli('realfake_evaluate', tmp_path / 'missing.jsonl', '--model', model_dir, '--out', tmp_path / 'ev', '--no_progress')
    if r.returncode in (0, None) or 'Traceback' in r.stderr or 'missing.jsonl' not in r.stderr:
        fails.append(f'realfake_evaluate with a missing metadata file: rc={r.returncode}, stderr tail: {r.stderr[-400:]}')
    assert not fails, '\n'.join(fails)


# ---------------------------------------------------------------- special files: never a hang
def test_fifo_never_hangs(tmp_path):
    """A named pipe called .jpg (open() would block forever): a clear error within seconds. (The corpus has one too, so
    every entry point meets it; this test fails fast instead of waiting for their timeouts.)"""
    fifo = tmp_path / 'pipe.jpg'; os.mkfifo(fifo)
    fails = []
    for name, f in (('load_image', images.load_image), ('probe_image', images.probe_image)):
        try:
            with deadline(5, name): f(fifo)
            fails.append(f'{name}: accepted a FIFO')
        except images.ImageLoadError as e:
            if 'pipe.jpg' not in str(e): fails.append(f'{name}: unclear error {e}')
        except Hang: fails.append(f'{name}: hangs on a FIFO')
    assert not fails, '\n'.join(fails)

def test_impossible_paths(tmp_path, clf):
    "Paths no file can have (NUL byte, over-long name), a folder named .jpg, a missing file: errors, never a crash."
    d = tmp_path / 'folder.jpg'; d.mkdir()
    paths = {'nul_byte': str(tmp_path / 'bad\x00name.png'), 'name_too_long': str(tmp_path / ('x' * 300 + '.jpg')),
             'folder_named_jpg': str(d), 'missing': str(tmp_path / 'missing.jpg')}
    fails = []
    for k, p in paths.items():
        for name, f in (('load_image', images.load_image), ('probe_image', images.probe_image)):
            try: f(p); fails.append(f'{k}: {name} accepted it')
            except images.ImageLoadError: pass
            except Exception as e: fails.append(f'{k}: {name} raised {type(e).__name__}: {e} (not ImageLoadError)')
    df = clf.predict(list(paths.values()), bs=2)
    if df['error'].isna().any() or len(df) != len(paths): fails.append(f'Classifier: {df.to_dict("records")}')
    import realfake.data as data
    import pandas as pd
    from PIL import Image
    recs = []
    for i in range(8):
        q = tmp_path / f'ok{i}.png'; Image.fromarray(np.full((16, 16, 3), i * 20, np.uint8)).save(q)
        recs.append(dict(path=str(q), label=('real', 'fake')[i % 2], split=('train', 'valid')[i // 4]))
    recs += [dict(path=p, label='real', split=s) for p in paths.values() for s in ('train', 'valid')]
    try:
        with deadline(60, 'get_dls'):
            dls = data.get_dls(pd.DataFrame(recs), Preprocess(size=16, resize=16), bs=2, num_workers=0, aug=False, device='cpu')
            for dl in (dls.train, dls.valid):
                for _ in dl: pass
        missing = set(paths.values()) - set(data.skipped_images(dls))
        if missing: fails.append(f'get_dls: not reported as skipped: {missing}')
    except (Exception, Hang) as e: fails.append(f'get_dls: {type(e).__name__}: {e}')
    assert not fails, '\n'.join(fails)


@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() != 0, reason='not root: the corpus entry no_read_perm already expects the error')
def test_unreadable_file_unprivileged():
    "As root chmod 000 blocks nothing, so drop to uid/gid 65534 (nobody) for a moment: a clear 'permission denied' error."
    import tempfile, shutil
    from PIL import Image
    d = Path(tempfile.mkdtemp(prefix='realfake-perm-')); os.chmod(d, 0o755)
    try:
        f = d / 'secret photo.jpg'; Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(f); os.chmod(f, 0)
        got = []
        os.setegid(65534); os.seteuid(65534)
        try:
            for fn in (images.load_image, images.probe_image):
                try: fn(f); got.append('ok')
                except Exception as e: got.append(f'{type(e).__name__}: {e}')
        finally: os.seteuid(0); os.setegid(0)
        for g in got:
            assert g.startswith('ImageLoadError') and 'permission' in g.lower() and 'secret photo.jpg' in g, got
    finally: shutil.rmtree(d, ignore_errors=True)

# ---------------------------------------------------------------- table

def _table(entries, cols: dict) -> str:
    keys = [e.key for e in entries] + sorted({k for c in cols.values() for k in c if k not in {e.key for e in entries}})
    lines = ['| input | ' + ' | '.join(cols) + ' |', '|' + '---|' * (len(cols) + 1)]
    for k in keys: lines.append(f'| {k} | ' + ' | '.join(cols[c].get(k, '-') for c in cols) + ' |')
    return '\n'.join(lines)

if __name__ == '__main__':  # print the outcome table
    import tempfile
    with tempfile.TemporaryDirectory() as td:
        td = Path(td); entries = make_corpus(td / 'bad files'); md = make_model_dir(td / 'model', size=48)
        from realfake.predict import Classifier
        c = Classifier.from_dir(md, device='cpu', backend='torch')
        cols = {'load_image': cells_load(entries), 'load_image(size)': cells_load(entries, 16), 'probe_image': cells_probe(entries),
                'Classifier': cells_classifier(entries, c)[0], 'Classifier native grid': cells_classifier(entries, c, native=True)[0], 'realfake_predict files': cells_predict_cli(entries, md, td)[0],
                'realfake_predict folder': cells_predict_cli(entries, md, td, folder=True)[0],
                'realfake_prepare --probe': cells_prepare(entries, td / 'prep')[0],
                'get_dls': cells_dls(entries, 0)[0], 'realfake_evaluate': cells_evaluate(entries, md, td / 'ev')[0]}
        print(_table(entries, cols))
