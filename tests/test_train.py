"""Training tests (CPU, convnext_atto, tiny images): the demo is learnt, resume == uninterrupted, SIGKILL + resume,
two CPU processes (gloo) with shards / identical weights / only rank 0 writing, unreadable images skipped."""
import json, logging, shutil, signal, subprocess, sys, time
import forks
from helpers import cli_env
from pathlib import Path

import pytest
import torch
from fastai.callback.core import Callback

import realfake.learner as L
from realfake.learner import read_pointer
from realfake.modeldir import load_model_dir, state_tensors, build_network
from realfake.train import train, PRESETS
from realfake.synth import make_demo
from realfake.metadata import read_metadata

TINY = PRESETS['demo'].override(size=32, bs=16, lr=2e-3)        # native 32-pixel crops, a grid of up to 4 for validation
RUN = dict(workers=0, cpu=True, quiet=True)

@pytest.fixture(scope='module')
def tiny_demo(tmp_path_factory):
    "32 images per class at 32 px: enough for the mechanics (resume, kill, unreadable files), not for accuracy."
    return make_demo(tmp_path_factory.mktemp('tiny')/'demo', n=32, size=32, seed=1)

def _weights(model_dir): return state_tensors(load_model_dir(model_dir)[0])

def _max_diff(a, b): return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())

def _history(out):
    lines = (Path(out)/'history.csv').read_text().splitlines()
    return lines[0].split(','), [l.split(',') for l in lines[1:]]


pytestmark = pytest.mark.usefixtures('one_torch_thread')

# ---------------------------------------------------------------- learning
@pytest.mark.slow
def test_tiny_model_learns_easy_demo(trained_demo):
    "The README's demo, scaled down (conftest's session model: both classes PNG, so no format shortcut): it is learnt."
    res = trained_demo
    print(f"demo: {res['seconds']:.1f}s, {res['values']}")
    v = res['values']
    assert v['accuracy'] >= 0.90, v
    assert v['real_accuracy'] >= 0.8 and v['fake_accuracy'] >= 0.8, v
    assert v['roc_auc'] >= 0.95, v
    head, rows = _history(Path(res['log']).parent)
    assert head == ['epoch', 'train_loss', 'valid_loss', 'accuracy', 'roc_auc', 'real_accuracy', 'fake_accuracy',
                    'balanced_accuracy', 'ap', 'eer', 'tpr_at_1fpr', 'tpr_at_5fpr', 'time']
    assert [r[0] for r in rows] == ['0', '1', '2', '3', '4']
    # the final model directory alone reproduces the learner's predictions (on a validation batch, taken after training)
    xb, want = res['batch']['xb'], res['batch']['logits']
    m, cfg = load_model_dir(res['model_dir'])
    with torch.no_grad(): got = m(xb)
    assert torch.allclose(got, want, atol=1e-5)
    assert cfg.arch == 'convnext_atto' and cfg.preprocess == TINY.spec and cfg.vocab == ['real', 'fake']
    assert list(cfg.preprocess.mean) == pytest.approx([0.485, 0.456, 0.406])
    ck = read_pointer(Path(res['checkpoints']), 'latest')
    assert ck.name == 'epoch-004' and (ck/'optimizer.safetensors').is_file()
    assert read_pointer(Path(res['checkpoints']), 'best') is not None

# ---------------------------------------------------------------- resume
class _Interrupt(Exception): pass

class _CrashAfter(Callback):
    "Simulate the process dying right after epoch `n`'s checkpoint was written."
    order = 90
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch == self.n: raise _Interrupt('simulated crash')

@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_demo, tmp_path, monkeypatch):
    """Interrupted after epoch 1 of 2 + `resume` ends with the same weights as an uninterrupted run.
    Tolerance 1e-5: on CPU with fixed seeds, num_workers=0 and per-epoch reseeding the runs execute the same
    float32 ops in the same order, so we expect (and measure) 0; the slack covers possible reduction-order
    differences in threaded kernels. The negative control (resume without optimizer state) differs by > 1e-3."""
    kw = dict(config=TINY.override(epochs=2), **RUN)
    full = train(str(tiny_demo), out=tmp_path/'full', **kw)
    with pytest.raises(_Interrupt): train(str(tiny_demo), out=tmp_path/'cut', cbs=[_CrashAfter(0)], **kw)
    assert [r[0] for r in _history(tmp_path/'cut')[1]] == ['0']
    shutil.copytree(tmp_path/'cut', tmp_path/'cut_noopt')
    res = train(str(tiny_demo), out=tmp_path/'cut', resume=True, **kw)
    assert res['start_epoch'] == 1
    d = _max_diff(_weights(full['model_dir']), _weights(res['model_dir']))
    print(f"resume vs uninterrupted: max |dW| = {d:.3g}")
    assert d <= 1e-5
    # the log continues: one line per epoch, same values as the uninterrupted run
    _, r_full = _history(tmp_path/'full'); _, r_cut = _history(tmp_path/'cut')
    assert [r[0] for r in r_cut] == ['0', '1']
    for a, b in zip(r_full, r_cut): assert [float(x) for x in a[1:-1]] == pytest.approx([float(x) for x in b[1:-1]], abs=1e-5, nan_ok=True)
    # negative control: dropping the optimizer state on resume changes the result (so this test can fail)
    monkeypatch.setattr(L, '_load_opt_state', lambda *a, **k: None)
    bad = train(str(tiny_demo), out=tmp_path/'cut_noopt', resume=True, **kw)
    d_bad = _max_diff(_weights(full['model_dir']), _weights(bad['model_dir']))
    print(f"resume without optimizer state: max |dW| = {d_bad:.3g}")
    assert d_bad > 1e-3

def test_resume_refuses_a_different_schedule(tiny_demo, tmp_path):
    with pytest.raises(_Interrupt): train(str(tiny_demo), TINY.override(epochs=2), out=tmp_path/'r', cbs=[_CrashAfter(0)], **RUN)
    with pytest.raises(L.RealfakeError, match='schedule'): train(str(tiny_demo), TINY.override(epochs=3), out=tmp_path/'r', resume=True, **RUN)

_KILLED_RUN = '''
import sys
from realfake.train import train, PRESETS
meta, out = sys.argv[1:]
train(meta, PRESETS['demo'].override(epochs=3, size=32, bs=8, lr=2e-3), out=out, workers=0, cpu=True, quiet=True)
'''

@pytest.mark.slow
def test_sigkill_mid_training_then_resume(tiny_demo, tmp_path):
    "SIGKILL during epoch 2 (and possibly mid-checkpoint): the last complete checkpoint loads and --resume finishes."
    out = tmp_path/'run'
    (tmp_path/'k.py').write_text(_KILLED_RUN)
    p = forks.popen([sys.executable, str(tmp_path/'k.py'), str(tiny_demo), str(out)], env=cli_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while read_pointer(out/'checkpoints') is None and p.poll() is None and time.time() - t0 < 90: time.sleep(0.05)
        time.sleep(0.3)
        p.send_signal(signal.SIGKILL)
    finally: p.kill(); p.wait()
    assert p.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
    ck = read_pointer(out/'checkpoints')
    done = L.load_checkpoint(ck)['state']['epoch']  # loads completely: weights, config, optimizer, state
    assert done < 2
    res = train(str(tiny_demo), TINY.override(epochs=3, bs=8), out=out, resume=True, **RUN)
    assert res['start_epoch'] == done + 1
    _, rows = _history(out)
    assert [r[0] for r in rows] == ['0', '1', '2']  # no epoch missing or logged twice
    load_model_dir(res['model_dir'])
    assert not [q for q in (out/'checkpoints').iterdir() if q.name.startswith('.')]  # temp folders cleaned

# ---------------------------------------------------------------- unreadable images
def test_unreadable_train_image_is_reported_and_skipped(tiny_demo, tmp_path, caplog):
    df = read_metadata(tiny_demo)
    d = tmp_path/'demo'; shutil.copytree(tiny_demo.parent, d)
    bad = d/Path(df[df.split == 'train'].path.iloc[3]).relative_to(tiny_demo.parent.resolve())
    assert bad.is_file()
    bad.write_bytes(b'<html>not an image</html>')
    with caplog.at_level(logging.WARNING):
        res = train(str(d/'metadata.jsonl'), TINY.override(epochs=1), out=tmp_path/'run', **RUN)
    assert any(str(bad) in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert len(_history(tmp_path/'run')[1]) == 1 and res['values']['valid_loss'] == res['values']['valid_loss']

def test_log_output_names_each_epoch(tiny_demo, tmp_path, capsys):
    "Not a terminal (a log, a pipe): no progress table, one named line per epoch instead of fastai's bare list."
    train(str(tiny_demo), TINY.override(epochs=2), out=tmp_path/'run', workers=0, cpu=True)
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith('epoch ')]
    assert [l.split(':')[0] for l in lines] == ['epoch 0', 'epoch 1'] and all('valid_loss=' in l for l in lines), out
    assert not any(l.lstrip().startswith('[0,') for l in out.splitlines()), out

# ---------------------------------------------------------------- two CPU processes (gloo)
_DDP_DRIVER = '''
import sys, os, json, builtins
out, rec = sys.argv[1:]
rank = int(os.environ['RANK'])
writes = []
def hook(event, args):
    if event in ('open', 'os.rename', 'os.mkdir', 'os.remove', 'os.rmdir', 'shutil.rmtree', 'tempfile.mkstemp', 'tempfile.mkdtemp', 'os.truncate'):
        if event == 'open':
            path, mode, flags = args
            if not ((mode and any(c in mode for c in 'wax+')) or (flags and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))): return
        p = str(args[0])
        if p.startswith(out): writes.append([event, p])
sys.addaudithook(hook)
from realfake import train as T
seen = []
orig = T._DistributedDL.get_idxs
def get_idxs(self):
    r = orig(self); seen.append([int(i) for i in r]); return r
T._DistributedDL.get_idxs = get_idxs
res = T.train(None, T.PRESETS['demo'].override(epochs=2, size=32, bs=8, lr=2e-3), out=out, workers=0, cpu=True, quiet=True, demo_n=24)
from realfake.modeldir import state_tensors
from safetensors.torch import save_file
learn = res['learn']
save_file(state_tensors(learn.model), f'{rec}/weights{rank}.safetensors')
n_train = len(learn.dls.train.dataset)
with open(f'{rec}/rank{rank}.json', 'w') as f:
    json.dump(dict(seen=seen, writes=writes, values=res['values'], n_train=n_train, world=int(os.environ['WORLD_SIZE'])), f)
'''

@pytest.mark.slow
def test_two_cpu_processes(tmp_path):
    "torchrun, 2 processes, gloo: each rank its own shard, identical weights after training, only rank 0 writes."
    out, rec = tmp_path/'run', tmp_path/'rec'; rec.mkdir()
    (tmp_path/'driver.py').write_text(_DDP_DRIVER)
    env = cli_env()
    r = forks.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        str(tmp_path/'driver.py'), str(out), str(rec)], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r0, r1 = [json.loads((rec/f'rank{i}.json').read_text()) for i in (0, 1)]
    assert r0['world'] == r1['world'] == 2
    # shards: per epoch, train then valid index lists; each rank sees half, disjoint except fastai's padding
    n = r0['n_train']
    s0, s1 = r0['seen'][0], r1['seen'][0]
    assert len(s0) == len(s1) == (n + 1) // 2
    assert set(s0) | set(s1) == set(range(n))
    assert len(set(s0) & set(s1)) == 2 * ((n + 1) // 2) - n
    assert r0['seen'][2] != s0  # reshuffled next epoch
    # identical weights on both ranks, and training changed them
    from safetensors.torch import load_file
    w0, w1 = load_file(str(rec/'weights0.safetensors')), load_file(str(rec/'weights1.safetensors'))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    init = state_tensors(build_network('convnext_atto'))
    assert not torch.equal(w0['0.model.stem.0.weight'], init['0.model.stem.0.weight'])
    # both ranks computed the same validation metrics (gathered over the whole valid set)
    assert r0['values'] == r1['values']
    # only rank 0 wrote into the run folder (the audit hook sees rank 0's writes, so it would see rank 1's)
    assert r1['writes'] == [], r1['writes'][:5]
    assert any(p.endswith('history.csv') for _, p in r0['writes']) and any(e == 'tempfile.mkdtemp' for e, _ in r0['writes'])
    assert (out/'model'/'model.safetensors').is_file() and (out/'history.csv').is_file()
    assert torch.equal(load_file(str(out/'model'/'model.safetensors'))['1.8.weight'], w0['1.8.weight'])
