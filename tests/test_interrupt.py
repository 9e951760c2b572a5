"""Interruptions: SIGKILL at chosen moments of realfake_predict, realfake_prepare and realfake_train.

The CLIs run as subprocesses. A moment is chosen either from outside (the test polls the output and sends SIGKILL)
or by a small hook module (`rf_hook`, written by the test, selected by the RF_HOOK env var) that patches one function
and SIGKILLs its own process exactly there (mid-row of the CSV, before an fsync / rename, half-way through writing a
checkpoint file, in the middle of an epoch). After each kill we check what is on disk, then rerun and check the result.
"""
from __future__ import annotations
import csv, io, os, re, signal, subprocess, sys, time
import forks
from pathlib import Path
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import cli_cmd, cli_env, run_cli, make_model_dir, CLI_MODULES
from realfake.core import escape_path

HOOK = r'''
import os, sys, signal, builtins, time

def _die():
    sys.stdout.flush(); sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

def _env(k, d=None): return os.environ.get(k, d)

class _KillingFile:
    "A text file that dies half-way through its Nth write (a CSV row)."
    def __init__(self, f, after): self._f, self._n, self._after = f, 0, after
    def write(self, s):
        if self._n >= self._after:
            cut = max(1, len(s) // 2)
            if _env('RF_CUT') == 'nl' and '\n' in s[:-1]: cut = s.index('\n') + 1   # just after a newline inside a quoted path
            self._f.write(s[:cut]); self._f.flush(); os.fsync(self._f.fileno()); _die()
        self._n += 1
        return self._f.write(s)
    def __getattr__(self, k): return getattr(self._f, k)
    def __enter__(self): return self
    def __exit__(self, *a): return self._f.__exit__(*a)
    def __iter__(self): return iter(self._f)

def install():
    mode = _env('RF_HOOK', '')
    if mode == 'csv_midrow':            # die in the middle of writing data row number RF_AFTER (0-based)
        target, after, real_open = os.path.abspath(_env('RF_TARGET')), int(_env('RF_AFTER')), builtins.open
        def op(file, mode='r', *a, **k):
            f = real_open(file, mode, *a, **k)
            if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == target and 'a' in mode: return _KillingFile(f, after)
            return f
        builtins.open = op
    elif mode == 'slow_predict':        # slow scoring down so the test can kill from outside
        import realfake.predict as P
        orig = P.Classifier.logits
        def logits(self, x): time.sleep(float(_env('RF_SLEEP', '0.1'))); return orig(self, x)
        P.Classifier.logits = logits
    elif mode == 'fsync':               # die just before the Nth fsync (data written, not yet durable nor renamed)
        n, real = [int(_env('RF_N', '1'))], os.fsync
        def fs(fd):
            n[0] -= 1
            if n[0] <= 0: _die()
            return real(fd)
        os.fsync = fs
    elif mode == 'replace':             # die just before the RF_N-th rename of a temp file onto RF_TARGET
        target, real, n = os.path.basename(_env('RF_TARGET')), os.replace, [int(_env('RF_N', '1'))]
        def rp(src, dst, *a, **k):
            if os.path.basename(str(dst)) == target:
                n[0] -= 1
                if n[0] <= 0: _die()
            return real(src, dst, *a, **k)
        os.replace = rp
    elif mode == 'train_batch':         # die after RF_N training batches (mid-epoch)
        from fastai.learner import Learner
        n, orig = [int(_env('RF_N'))], Learner.one_batch
        def one_batch(self, i, b):
            if self.training:
                n[0] -= 1
                if n[0] < 0: _die()
            return orig(self, i, b)
        Learner.one_batch = one_batch
    elif mode == 'ckpt_write':          # die half-way through writing RF_FILE inside a temp folder named like RF_DIR
        import realfake.modeldir as M
        orig, want_dir, want_file = M.save_file, _env('RF_DIR'), _env('RF_FILE', 'model.safetensors')
        def save_file(tensors, filename, metadata=None):
            r = orig(tensors, filename, metadata=metadata)
            if want_dir in os.path.basename(os.path.dirname(str(filename))) and os.path.basename(str(filename)) == want_file:
                size = os.path.getsize(filename)
                with open(filename, 'r+b') as f: f.truncate(size // 2); os.fsync(f.fileno())
                _die()
            return r
        M.save_file = save_file

def main(name, module):
    install()
    import importlib
    from fastcore.script import _run_cli
    f = getattr(importlib.import_module('realfake.' + module), name)
    res = _run_cli(f.__wrapped__, False) if hasattr(f, '__wrapped__') else f()   # what the console script does
    sys.exit(0 if res is None or isinstance(res, dict) else res)
'''

def hooked(tmp: Path, name: str, *args, env: dict, timeout=100, popen=False):
    "Run CLI `name` with the hook installed (env RF_HOOK=...)."
    (tmp / 'rf_hook.py').write_text(HOOK)
    code = f'import sys; sys.argv[0] = {name!r}; import rf_hook; rf_hook.main({name!r}, {CLI_MODULES[name]!r})'
    e = cli_env(PYTHONPATH=str(tmp) + os.pathsep + os.environ.get('PYTHONPATH', ''), **env)
    cmd = [sys.executable, '-c', code] + [str(a) for a in args]
    if popen: return forks.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    return forks.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)

def killed(r) -> bool: return r.returncode == -signal.SIGKILL

def _pngs(dest: Path, n: int, size=16, seed=0, prefix='img', newline=False, latin1=False):
    from PIL import Image
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = dest / (f'{prefix} "new\nline" {i:03d}.png' if newline else f'{prefix} {i:03d}.png')
        if latin1: p = Path(os.fsdecode(os.fsencode(dest) + b'/%s caf\xe9\r %03d.png' % (prefix.encode(), i)))   # not UTF-8, and a CR
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p); out.append(p)
    return out

# ---------------------------------------------------------------- realfake_predict
COLS = ['path', 'prob_fake', 'label', 'logit', 'n_crops', 'top_crop', 'error']

def _check_csv_prefix(path: Path):
    "Every complete line is a full, valid row; returns (complete rows, partial tail bytes)."
    data = path.read_bytes()
    end = len(data)
    while end and (data[end - 1:end] != b'\n' or data[:end].count(b'"') % 2):   # last newline outside quotes
        end -= 1
    rows = list(csv.reader(io.StringIO(data[:end].decode('utf-8'), newline='')))
    assert rows and rows[0] == COLS, rows[:1]
    for r in rows[1:]:
        assert len(r) == len(COLS), f'broken row {r}'
        assert r[5] == '' and 0 <= float(r[1]) <= 1 and r[2] in ('real', 'fake'), f'invalid row {r}'
    return rows[1:], data[end:]

def _check_complete(path: Path, files):
    rows, tail = _check_csv_prefix(path)
    assert tail == b'', f'partial last line after the rerun: {tail[:80]!r}'
    paths = [r[0] for r in rows]
    dup = sorted({p for p in paths if paths.count(p) > 1})
    assert not dup, f'scored twice: {dup[:3]}'
    assert sorted(paths) == sorted(escape_path(f) for f in files), 'missing or extra rows'
    return rows

@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp('model') / 'model', size=32)

def _rerun_predict(folder, model_dir, out, n_files, n_done):
    r = run_cli('realfake_predict', folder, '--model', model_dir, '--out', out, '--bs', 2, '--workers', 0,
                '--no_progress', '--backend', 'torch', '--device', 'cpu', timeout=90)
    assert r.returncode is not None and 'Traceback' not in r.stderr, r.stderr[-1500:]
    m = re.search(r'(\d+) scored \(\d+ fake\), (\d+) errors, (\d+) already done', r.stdout)
    assert m, r.stdout
    scored, errors, done = map(int, m.groups())
    assert done == n_done, f'rerun says {done} already done, the CSV held {n_done} complete rows'
    assert scored + errors == n_files - n_done, f'rerun scored {scored}+{errors}, expected {n_files - n_done}: a file scored twice or skipped'
    return r

@pytest.mark.parametrize('names', ['plain', 'newline', 'latin1'])
@pytest.mark.slow
def test_predict_killed_mid_row(tmp_path, model_dir, names):
    """SIGKILL while a CSV row is half written (for 'newline', right after a newline inside a quoted file name; for
    'latin1', names that are not UTF-8 and hold a carriage return):
    the complete rows stay valid; the rerun drops the half row, scores only the rest, and the CSV is complete."""
    files = _pngs(tmp_path / 'imgs', 12, newline=names == 'newline', latin1=names == 'latin1')
    out = tmp_path / 'pred.csv'
    r = hooked(tmp_path, 'realfake_predict', tmp_path / 'imgs', '--model', model_dir, '--out', out, '--bs', 2,
               '--workers', 0, '--no_progress', '--backend', 'torch', '--device', 'cpu',
               env=dict(RF_HOOK='csv_midrow', RF_TARGET=out, RF_AFTER=5, RF_CUT='nl' if names == 'newline' else 'half'))
    assert killed(r), (r.returncode, r.stderr[-800:])
    rows, tail = _check_csv_prefix(out)
    assert len(rows) == 5 and tail, f'expected 5 complete rows and a partial one, got {len(rows)} rows, tail {tail!r}'
    if names == 'newline': assert tail.endswith(b'\n'), 'the cut was meant to end on a newline inside quotes'
    _rerun_predict(tmp_path / 'imgs', model_dir, out, len(files), 5)
    final = _check_complete(out, files)
    assert [r[0] for r in final[:5]] == [r[0] for r in rows], 'the rows written before the kill were rewritten'

@pytest.mark.slow
def test_predict_killed_from_outside(tmp_path, model_dir):
    "SIGKILL from another process at a moment chosen by polling the CSV; then a rerun completes it."
    files = _pngs(tmp_path / 'imgs', 16)
    out = tmp_path / 'pred.csv'
    p = hooked(tmp_path, 'realfake_predict', tmp_path / 'imgs', '--model', model_dir, '--out', out, '--bs', 2,
               '--workers', 0, '--no_progress', '--backend', 'torch', '--device', 'cpu',
               env=dict(RF_HOOK='slow_predict', RF_SLEEP=0.15), popen=True)
    t0 = time.time()
    try:
        while time.time() - t0 < 60:
            if out.exists() and out.read_bytes().count(b'\n') >= 1 + 5: break
            if p.poll() is not None: break
            time.sleep(0.01)
        if p.poll() is None: os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait(10); p.stdout.close(); p.stderr.close()
    assert p.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
    rows, tail = _check_csv_prefix(out)
    assert 5 <= len(rows) < len(files), len(rows)
    _rerun_predict(tmp_path / 'imgs', model_dir, out, len(files), len(rows))
    _check_complete(out, files)

# ---------------------------------------------------------------- realfake_prepare
def _prepare_args(tmp, out):
    return [f'real:folder:{tmp / "real"}', f'fake:folder:{tmp / "fake"}', '--out', out, '--no_progress', '--workers', 1]

@pytest.mark.parametrize('hook', ['fsync', 'replace'])
def test_prepare_killed_while_writing(tmp_path, hook):
    "SIGKILL after the records are written to the temp file but before fsync / before the rename: no file at --out."
    _pngs(tmp_path / 'real', 20, prefix='r'); _pngs(tmp_path / 'fake', 20, prefix='f')
    out = tmp_path / 'out' / 'metadata.jsonl'
    r = hooked(tmp_path, 'realfake_prepare', *_prepare_args(tmp_path, out), env=dict(RF_HOOK=hook, RF_N=1, RF_TARGET=out))
    assert killed(r), (r.returncode, r.stdout[-500:], r.stderr[-800:])
    assert not out.exists(), f'a partial metadata file was left at the output path ({out.stat().st_size} bytes)'
    leftovers = [f.name for f in out.parent.iterdir()] if out.parent.exists() else []
    # the rerun (no --overwrite) must not be blocked by the leftovers and must write the complete file
    r = run_cli('realfake_prepare', *_prepare_args(tmp_path, out), timeout=60)
    assert r.returncode == 0, r.stderr[-800:]
    from realfake.metadata import read_metadata
    df = read_metadata(out)
    assert len(df) == 40 and sorted(df.label.value_counts()) == [20, 20]
    assert all(n.endswith('.tmp') and n.startswith('.') for n in leftovers), f'unexpected leftovers {leftovers}'

@pytest.mark.slow
def test_prepare_killed_from_outside(tmp_path):
    "SIGKILL at several moments: the output path holds nothing or the complete file, never a part of it."
    _pngs(tmp_path / 'real', 150, size=8, prefix='r'); _pngs(tmp_path / 'fake', 150, size=8, prefix='f')
    from realfake.metadata import read_metadata
    t = time.monotonic()
    r = run_cli('realfake_prepare', *_prepare_args(tmp_path, tmp_path / 'whole' / 'metadata.jsonl'), '--probe', timeout=120)
    whole = time.monotonic() - t                               # one uninterrupted run: the kills below fall across it
    assert r.returncode == 0, r.stderr[-800:]
    seen = set()
    for i, frac in enumerate([0.1, 0.3, 0.5, 0.7, 0.9]):
        out, delay = tmp_path / f'out{i}' / 'metadata.jsonl', frac * whole
        p = forks.popen(cli_cmd('realfake_prepare') + [str(a) for a in _prepare_args(tmp_path, out)] + ['--probe'],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
        time.sleep(delay)
        try: os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError: pass
        p.wait(10)
        if out.exists():
            assert len(read_metadata(out)) == 300, f'partial metadata after a kill at {delay}s'
            seen.add('complete')
        else: seen.add('absent')
    assert seen, seen

# ---------------------------------------------------------------- realfake_train
EPOCHS, BS, N_TRAIN = 3, 8, 32   # 4 training batches per epoch

@pytest.fixture
def train_meta(tmp_path):
    from realfake.metadata import write_metadata
    recs = []
    for split, n in (('train', N_TRAIN), ('valid', 8)):
        for lab in ('real', 'fake'):
            for p in _pngs(tmp_path / 'data' / split / lab, n // 2, seed=('train', 'valid').index(split) * 2 + ('real', 'fake').index(lab), prefix=lab):
                recs.append(dict(path=str(p), label=lab, split=split, source='s'))
    return write_metadata(recs, tmp_path / 'data' / 'metadata.jsonl')

def _train_args(meta, run):
    return ['--metadata', meta, '--preset', 'demo', '--epochs', EPOCHS, '--bs', BS, '--size', 32,
            '--cpu', '--workers', 0, '--threads', 1, '--quiet', '--out', run, '--seed', 1]

def _history(run):
    rows = list(csv.reader(open(run / 'history.csv')))
    return rows[0], rows[1:]

def _check_checkpoint(run, epoch):
    "The pointer names the last complete checkpoint; it loads into the model (strict)."
    from realfake.learner import read_pointer, load_checkpoint
    from realfake.modeldir import build_network
    ck = read_pointer(run / 'checkpoints', 'latest')
    assert ck is not None and ck.name == f'epoch-{epoch:03d}', ck
    c = load_checkpoint(ck)
    assert c['state']['epoch'] == epoch
    build_network(c['config'].arch).load_state_dict(c['model'], strict=True)
    return c

def _resume_and_check(meta, run, from_epoch, hist_before):
    r = run_cli('realfake_train', *_train_args(meta, run), '--resume', timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    assert f'at epoch {from_epoch}' in r.stderr, f'did not resume at epoch {from_epoch}:\n{r.stderr[-800:]}'
    _check_checkpoint(run, EPOCHS - 1)
    head, rows = _history(run)
    assert [int(r[0]) for r in rows] == list(range(EPOCHS)), f'history epochs {[r[0] for r in rows]}'
    assert rows[:len(hist_before)] == hist_before, 'epochs logged before the kill were changed'
    from realfake.modeldir import load_model_dir
    load_model_dir(run / 'model')
    # half-written checkpoint folders are swept (a stale '.latest.json.*.tmp' file may stay: never read, see BUGS.md core)
    assert not [d.name for d in (run / 'checkpoints').iterdir() if d.name.startswith('.') and d.is_dir()], 'temp checkpoint folders left after the resume'

@pytest.mark.slow
def test_train_killed_mid_epoch(tmp_path, train_meta):
    "SIGKILL after 2 batches of epoch 1: epoch 0's checkpoint loads and --resume continues at epoch 1."
    run = tmp_path / 'run'
    r = hooked(tmp_path, 'realfake_train', *_train_args(train_meta, run), env=dict(RF_HOOK='train_batch', RF_N=N_TRAIN // BS + 2), timeout=120)
    assert killed(r), (r.returncode, r.stderr[-1500:])
    _check_checkpoint(run, 0)
    head, rows = _history(run)
    assert [int(x[0]) for x in rows] == [0], rows
    assert not (run / 'model').exists()
    _resume_and_check(train_meta, run, 1, rows)

@pytest.mark.parametrize('moment', ['weights', 'pointer'])
@pytest.mark.slow
def test_train_killed_during_checkpoint_write(tmp_path, train_meta, moment):
    """SIGKILL while epoch 1's checkpoint is written: half-way through its model.safetensors ('weights'), or after its
    folder is complete but before latest.json is replaced ('pointer'). latest.json still names epoch 0, which loads;
    --resume redoes epoch 1 and finishes."""
    run = tmp_path / 'run'
    env = (dict(RF_HOOK='ckpt_write', RF_DIR='.epoch-001') if moment == 'weights'
           else dict(RF_HOOK='replace', RF_TARGET='latest.json', RF_N=2))
    r = hooked(tmp_path, 'realfake_train', *_train_args(train_meta, run), env=env, timeout=120)
    assert killed(r), (r.returncode, r.stderr[-1500:])
    if moment == 'weights':
        partial = [d for d in (run / 'checkpoints').iterdir() if d.name.startswith('.epoch-001')]
        assert partial and (partial[0] / 'model.safetensors').exists(), 'the kill did not happen during the write'
        assert not (run / 'checkpoints' / 'epoch-001').exists()
    else: assert (run / 'checkpoints' / 'epoch-001' / 'state.json').exists(), 'the kill did not happen before the pointer update'
    _check_checkpoint(run, 0)
    head, rows = _history(run)
    _resume_and_check(train_meta, run, 1, [r for r in rows if int(r[0]) < 1])
