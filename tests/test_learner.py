"Tests of realfake.learner: model config validation, model directories, local weights, untrusted files, checkpoints."
import json, os, pickle, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch
import timm
from safetensors.torch import save_file, load_file

from realfake.core import RealfakeError
from realfake.learner import (ModelConfig, ConfigError, WeightsError, build_model, save_model_dir, load_model_dir,
                              realfake_metrics, write_dir_atomic, read_pointer, load_pth_weights)

ARCH = 'convnext_atto'

@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return build_model(ARCH).eval()

@pytest.fixture
def cfg(): return ModelConfig(ARCH, size=32, resize=36)


pytestmark = pytest.mark.usefixtures('one_torch_thread')

# ---------------------------------------------------------------- ModelConfig
def test_config_roundtrip(cfg):
    back = ModelConfig.from_json(cfg.to_json())
    assert back == cfg and back.vocab == ['real', 'fake'] and back.size == 32

@pytest.mark.parametrize('change, why', [
    ({'unknown_key': 1}, 'unknown keys'),
    ({'size': '224'}, 'size'),
    ({'size': 22.5}, 'size'),
    ({'size': True}, 'size'),
    ({'size': -1}, 'size'),
    ({'resize': 16}, 'resize'),             # smaller than size
    ({'arch': 3}, 'arch'),
    ({'arch': '../../evil'}, 'arch'),
    ({'vocab': ['fake', 'real']}, 'vocab'),  # index 1 must be fake
    ({'vocab': 'real,fake'}, 'vocab'),
    ({'mean': [0.5, 0.5]}, 'mean'),
    ({'std': [0.2, 0.0, 0.2]}, 'std'),
    ({'threshold': 1.5}, 'threshold'),
    ({'threshold': '0.5'}, 'threshold'),
    ({'temperature': 0}, 'temperature'),
    ({'n_out': 2.0}, 'n_out'),
])
def test_config_rejects(cfg, change, why):
    d = {**cfg.to_dict(), **change}
    with pytest.raises(ConfigError, match=why): ModelConfig.from_json(json.dumps(d))

def test_config_rejects_nan_missing_arch_and_non_objects(cfg):
    with pytest.raises(ConfigError, match='NaN'): ModelConfig.from_json(cfg.to_json().replace('0.5', 'NaN'))
    with pytest.raises(ConfigError, match='arch'): ModelConfig.from_json('{"size": 32}')
    with pytest.raises(ConfigError, match='JSON object'): ModelConfig.from_json('[]')
    with pytest.raises(ConfigError, match='invalid JSON'): ModelConfig.from_json('{"arch": ')
    with pytest.raises(ConfigError, match='too large'): ModelConfig.from_json('{"arch": "' + 'a' * 2_000_000 + '"}')

# ---------------------------------------------------------------- model directories
def test_save_load_identical_predictions(model, cfg, tmp_path, monkeypatch):
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(): want = model(x)
    d = save_model_dir(model, cfg, tmp_path/'m')
    assert sorted(p.name for p in d.iterdir()) == ['config.json', 'model.safetensors']
    # loading must never unpickle: make every unpickling entry point explode while loading
    def boom(*a, **k): raise AssertionError('unpickling during load_model_dir')
    monkeypatch.setattr(pickle, 'load', boom); monkeypatch.setattr(pickle, 'loads', boom)
    monkeypatch.setattr(torch, 'load', boom)
    m2, cfg2 = load_model_dir(d)
    assert cfg2 == cfg and not m2.training
    with torch.no_grad(): got = m2(x)
    assert torch.equal(got, want)
    # and a differently initialised model does not give the same predictions (the comparison can fail)
    torch.manual_seed(1)
    with torch.no_grad(): assert not torch.allclose(build_model(ARCH).eval()(x), want)

def test_load_rejects_bad_config_and_mismatched_weights(model, cfg, tmp_path):
    d = save_model_dir(model, cfg, tmp_path/'m')
    good = (d/'config.json').read_text()
    (d/'config.json').write_text(json.dumps({**json.loads(good), 'extra': 1}))
    with pytest.raises(ConfigError, match='unknown keys'): load_model_dir(d)
    (d/'config.json').write_text(json.dumps({**json.loads(good), 'size': 'big'}))
    with pytest.raises(ConfigError, match='size'): load_model_dir(d)
    (d/'config.json').write_text(json.dumps({**json.loads(good), 'arch': 'convnext_femto'}))
    with pytest.raises(RealfakeError, match='do not match'): load_model_dir(d)
    (d/'config.json').unlink()
    with pytest.raises(FileNotFoundError, match='not a model directory'): load_model_dir(d)

def test_save_model_dir_replaces_atomically(model, cfg, tmp_path):
    d = save_model_dir(model, cfg, tmp_path/'m')
    torch.manual_seed(3); other = build_model(ARCH)
    save_model_dir(other, cfg, d)
    assert torch.equal(load_model_dir(d)[0].state_dict()['1.8.weight'], other.state_dict()['1.8.weight'])
    assert [p.name for p in tmp_path.iterdir()] == ['m']  # no temp / old folder left
    # a writer failing midway leaves the previous directory untouched and no temp folder
    def fail(p): p.write_bytes(b'half'); raise OSError('disk full')
    with pytest.raises(OSError): write_dir_atomic(d, {'model.safetensors': fail, 'config.json': b'{}'})
    assert torch.equal(load_model_dir(d)[0].state_dict()['1.8.weight'], other.state_dict()['1.8.weight'])
    assert [p.name for p in tmp_path.iterdir()] == ['m']

_KILL_WRITER = '''
import sys, time, torch
from pathlib import Path
from realfake.learner import build_model, save_model_dir, ModelConfig
import realfake.learner as L
dest, = sys.argv[1:]
orig = L.save_file
def slow_save(*a, **k):  # make the write window wide so the kill lands inside it
    orig(*a, **k); print('in-write', flush=True); time.sleep(0.2)
L.save_file = slow_save
m = build_model('convnext_atto')
for i in range(1000):
    torch.nn.init.constant_(m[1][8].weight, float(i))
    save_model_dir(m, ModelConfig('convnext_atto', size=32, resize=32, threshold=min(i, 100) / 100), dest)
'''

def test_sigkill_during_model_dir_write_never_leaves_half_dir(tmp_path):
    "Kill -9 a process while it rewrites a model directory: what is there always loads and is consistent."
    script = tmp_path/'w.py'; script.write_text(_KILL_WRITER)
    dest = tmp_path/'out'/'model'
    p = subprocess.Popen([sys.executable, str(script), str(dest)], stdout=subprocess.PIPE, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    try:
        n = 0
        for line in p.stdout:  # kill inside the write window, after a few complete writes
            if 'in-write' in line: n += 1
            if n == 3: break
        time.sleep(0.2)
        p.send_signal(signal.SIGKILL)
    finally: p.kill(); p.wait()
    assert p.returncode == -signal.SIGKILL
    if dest.exists():  # (absent only if killed between moving the old folder away and renaming the new one in)
        m, c = load_model_dir(dest)
        i = m.state_dict()['1.8.weight'][0, 0].item()
        assert c.threshold == min(i, 100) / 100  # weights and config come from the same write
    leftovers = [q.name for q in dest.parent.iterdir() if q.name != 'model']
    assert all(q.startswith('.model.') for q in leftovers)  # only hidden temp/old folders, never read

# ---------------------------------------------------------------- pretrained weights from local files
def test_local_safetensors_weights_load_into_backbone(tmp_path):
    torch.manual_seed(123)
    src = timm.create_model(ARCH).state_dict()  # a fresh timm convnext_atto (with its 1000-class head)
    f = tmp_path/'convnext_atto.safetensors'; save_file(src, str(f))
    m = build_model(ARCH, weights=f)
    sd = m.state_dict()
    body = {k: v for k, v in src.items() if not k.startswith('head.fc')}
    assert len(body) > 100
    for k, v in body.items(): assert torch.equal(sd['0.model.' + k], v), k
    torch.manual_seed(0)
    plain = build_model(ARCH).state_dict()  # control: without the file the body differs
    assert not torch.equal(plain['0.model.stem.0.weight'], src['stem.0.weight'])
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 2)

def test_pth_weights_need_explicit_flag(tmp_path):
    torch.manual_seed(5)
    src = timm.create_model(ARCH).state_dict()
    f = tmp_path/'w.pth'; torch.save({'state_dict': src}, f)
    with pytest.raises(WeightsError, match='allow_pth'): build_model(ARCH, weights=f)
    m = build_model(ARCH, weights=f, allow_pth=True)
    assert torch.equal(m.state_dict()['0.model.stages.2.blocks.0.conv_dw.weight'], src['stages.2.blocks.0.conv_dw.weight'])
    (tmp_path/'w.txt').write_text('x')
    with pytest.raises(WeightsError, match='unknown weights format'): build_model(ARCH, weights=tmp_path/'w.txt')
    with pytest.raises(WeightsError, match='not found'): build_model(ARCH, weights=tmp_path/'missing.safetensors')

class _Evil:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (open, (self.marker, 'w'))  # unpickling creates the marker file

def test_malicious_pth_is_never_executed(tmp_path, cfg, model):
    marker = tmp_path/'pwned'
    f = tmp_path/'evil.pth'
    with open(f, 'wb') as fh: pickle.dump({'state_dict': _Evil(str(marker))}, fh)
    with pytest.raises(WeightsError, match='allow_pth'): build_model(ARCH, weights=f)
    assert not marker.exists()
    with pytest.raises(WeightsError, match='not a plain tensor checkpoint'): build_model(ARCH, weights=f, allow_pth=True)
    with pytest.raises(WeightsError): load_pth_weights(f, allow_pth=True)
    assert not marker.exists()
    # a model directory whose weights file is that pickle is refused too (safetensors only)
    d = save_model_dir(model, cfg, tmp_path/'m')
    (d/'model.safetensors').write_bytes(f.read_bytes())
    with pytest.raises(Exception): load_model_dir(d)
    assert not marker.exists()
    # control: the payload is real, plain unpickling runs it (so this test can fail)
    with open(f, 'rb') as fh: pickle.load(fh)
    assert marker.exists()

# ---------------------------------------------------------------- metrics
def test_metrics():
    ms = realfake_metrics()
    assert [m.name for m in ms] == ['accuracy', 'roc_auc', 'real_accuracy', 'fake_accuracy']
    logits = torch.tensor([[2., 0], [0, 2], [0, 2], [0, 2], [1, 0]])
    t = torch.tensor([0, 0, 1, 1, 1])
    for m in ms:
        m.reset(); m.accum_values(logits.softmax(1)[:, 1] if m.name == 'roc_auc' else logits.argmax(1), t)
    v = {m.name: m.value for m in ms}
    assert v['accuracy'] == pytest.approx(3 / 5) and v['real_accuracy'] == pytest.approx(1 / 2)
    assert v['fake_accuracy'] == pytest.approx(2 / 3)
    from sklearn.metrics import roc_auc_score
    assert v['roc_auc'] == pytest.approx(roc_auc_score(t.numpy(), logits.softmax(1)[:, 1].numpy()))
    # a one-class validation set gives NaN, not an exception
    m = ms[1]; m.reset(); m.accum_values(torch.tensor([0.2, 0.9]), torch.tensor([1, 1]))
    assert m.value != m.value

def test_read_pointer_rejects_path_tricks(tmp_path):
    (tmp_path/'latest.json').write_text(json.dumps({'dir': '../../etc'}))
    with pytest.raises(RealfakeError, match='invalid pointer'): read_pointer(tmp_path)
    (tmp_path/'latest.json').write_text(json.dumps({'dir': 'epoch-002'}))
    assert read_pointer(tmp_path) == tmp_path/'epoch-002'
    assert read_pointer(tmp_path, 'best') is None
