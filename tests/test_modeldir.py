"Tests of realfake.modeldir: config validation (old and new layouts), model directories, the network, local weights, untrusted files."
import json, os, pickle, signal, subprocess, sys, time
import forks
from helpers import cli_env

import pytest
import torch
import timm
from safetensors.torch import save_file

from realfake.core import RealfakeError, write_dir_atomic
from realfake.preprocess import Preprocess
from realfake.modeldir import (ModelConfig, ConfigError, WeightsError, build_network as build_model, save_model_dir,
                               load_model_dir)

ARCH = 'convnext_atto'

@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return build_model(ARCH).eval()

@pytest.fixture
def cfg(): return ModelConfig(ARCH, preprocess=Preprocess(size=32, resize=36))


pytestmark = pytest.mark.usefixtures('one_torch_thread')

# ---------------------------------------------------------------- ModelConfig
def test_config_roundtrip(cfg):
    back = ModelConfig.from_json(cfg.to_json())
    assert back == cfg and back.vocab == ['real', 'fake'] and back.preprocess.size == 32

_V1 = {'arch': ARCH, 'n_out': 2, 'vocab': ['real', 'fake'], 'size': 32, 'resize': 36, 'mean': [0.485, 0.456, 0.406],
       'std': [0.229, 0.224, 0.225], 'threshold': 0.5, 'temperature': 1.0}

def test_version_1_configs_still_load():
    "Model directories written before the preprocessing spec existed keep loading, with the same meaning."
    c = ModelConfig.from_json(json.dumps(_V1))
    assert c.preprocess == Preprocess(size=32, resize=36) and c.arch == ARCH
    assert ModelConfig.from_json(c.to_json()) == c and json.loads(c.to_json())['version'] == 2

@pytest.mark.parametrize('change, why', [
    ({'unknown_key': 1}, 'unknown keys'),
    ({'size': '224'}, 'size'),
    ({'size': 22.5}, 'size'),
    ({'size': True}, 'size'),
    ({'size': -1}, 'size'),
    ({'size': 8192}, 'size'),               # bounded: a hostile config cannot ask for absurd inputs
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
def test_config_rejects(change, why):
    "Each bad value, in the version 1 layout (top-level size/resize/mean/std) and, for the others, in version 2."
    with pytest.raises(ConfigError, match=why): ModelConfig.from_json(json.dumps({**_V1, **change}))
    pre = {'size', 'resize', 'mean', 'std'}
    if not set(change) & pre:
        d = {**ModelConfig(ARCH).to_dict(), **change}
        with pytest.raises(ConfigError, match=why): ModelConfig.from_json(json.dumps(d))
    else:
        d = ModelConfig(ARCH).to_dict(); d['preprocess'] = {**d['preprocess'], **change}
        with pytest.raises(ConfigError, match=why): ModelConfig.from_json(json.dumps(d))

def test_config_rejects_nan_missing_arch_and_non_objects(cfg):
    with pytest.raises(ConfigError, match='NaN'): ModelConfig.from_json(cfg.to_json().replace('0.5', 'NaN'))
    with pytest.raises(ConfigError, match='arch'): ModelConfig.from_json('{"size": 32}')
    with pytest.raises(ConfigError, match='repeated key'): ModelConfig.from_json('{"arch": "convnext_atto", "arch": "x"}')
    with pytest.raises(ConfigError, match='JSON object'): ModelConfig.from_json('[]')
    with pytest.raises(ConfigError, match='invalid JSON'): ModelConfig.from_json('{"arch": ')
    with pytest.raises(ConfigError, match='invalid JSON'): ModelConfig.from_json('')
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
    bad = json.loads(good); bad['preprocess']['size'] = 'big'
    (d/'config.json').write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match='size'): load_model_dir(d)
    (d/'config.json').write_text(json.dumps({**json.loads(good), 'arch': 'convnext_femto'}))
    with pytest.raises(RealfakeError, match='do not match'): load_model_dir(d)
    (d/'config.json').write_text(json.dumps({**json.loads(good), 'arch': 'os.system'}))   # a valid name, but not timm's
    with pytest.raises(ConfigError, match='timm architecture'): load_model_dir(d)
    (d/'config.json').unlink()
    with pytest.raises(FileNotFoundError, match='config.json'): load_model_dir(d)
    (d/'model.safetensors').unlink()
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
from realfake.modeldir import build_network, save_model_dir, ModelConfig
import realfake.modeldir as M
dest, = sys.argv[1:]
orig = M.save_file
def slow_save(*a, **k):  # make the write window wide so the kill lands inside it
    orig(*a, **k); print('in-write', flush=True); time.sleep(0.2)
M.save_file = slow_save
m = build_network('convnext_atto')
for i in range(1000):
    torch.nn.init.constant_(m[1][8].weight, float(i))
    save_model_dir(m, ModelConfig('convnext_atto', threshold=min(i, 100) / 100), dest)
'''

@pytest.mark.slow
def test_sigkill_during_model_dir_write_never_leaves_half_dir(tmp_path):
    "Kill -9 a process while it rewrites a model directory: what is there always loads and is consistent."
    script = tmp_path/'w.py'; script.write_text(_KILL_WRITER)
    dest = tmp_path/'out'/'model'
    p = forks.popen([sys.executable, str(script), str(dest)], stdout=subprocess.PIPE, text=True, env=cli_env())
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

# ---------------------------------------------------------------- the network without fastai
def test_network_matches_fastai_vision_learner():
    "build_network (timm + torch) has fastai's create_timm_model layout: same keys, shapes, and outputs for the same weights."
    from fastai.vision.learner import create_timm_model
    ref, _ = create_timm_model(ARCH, 2, pretrained=False)
    ours = build_model(ARCH)
    a, b = ref.state_dict(), ours.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    ours.load_state_dict(a)
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad(): assert torch.allclose(ref.eval()(x), ours.eval()(x), atol=1e-6)

@pytest.mark.slow
def test_inference_imports_no_training_code():
    "Reading a model and scoring never imports fastai, the data pipeline or the learner."
    code = ("import sys, realfake.predict, realfake.export, realfake.modeldir; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'fastai' or m in ('realfake.learner', 'realfake.data', 'realfake.train')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr

def test_checks_before_building(tmp_path, model, cfg):
    "A config naming a gigantic architecture, weights for another model, or special files fail before any real allocation."
    d = save_model_dir(model, cfg, tmp_path/'m')
    good = json.loads((d/'config.json').read_text())
    (d/'config.json').write_text(json.dumps({**good, 'arch': 'convnext_xxlarge'}))
    with pytest.raises(RealfakeError, match='do not match convnext_xxlarge'): load_model_dir(d)
    (d/'config.json').write_text(json.dumps({**good, 'arch': 'not_a_timm_model'}))
    with pytest.raises(ConfigError, match='not a timm architecture'): load_model_dir(d)
    (d/'config.json').write_text(json.dumps(good))
    (d/'model.safetensors').unlink(); os.mkfifo(d/'model.safetensors')
    with pytest.raises(RealfakeError, match='a FIFO, not a regular file'): load_model_dir(d)
    (d/'model.safetensors').unlink()
    with open(d/'model.safetensors', 'wb') as f: f.truncate(20 * 2**30)          # a 20 GB sparse file
    with pytest.raises(RealfakeError, match='more than the'): load_model_dir(d)
