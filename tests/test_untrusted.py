"""Untrusted files: model directories load only safetensors + validated JSON; pickles (.pth/.pkl) are never unpickled
without the explicit flag, and then only with torch.load(weights_only=True); image decoding always has a pixel limit.

The malicious pickles here create a marker file when unpickled: the tests assert it never appears (and a control
proves each pickle really would run its code)."""
from __future__ import annotations
import ast, os, pickle, subprocess, sys, textwrap
from pathlib import Path
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from badfiles import png_declaring, base_image
from helpers import run_cli, make_model_dir

torch = pytest.importorskip('torch')
PKG = Path(__file__).resolve().parents[1] / 'realfake'

class Evil:
    "Unpickling this creates (opens for writing) the marker file: code execution."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (open, (self.marker, 'w'))

def evil_files(d: Path, marker: Path) -> dict:
    "A torch zip checkpoint, a raw .pkl and a fake .bin, each running code when unpickled."
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    torch.save({'state_dict': {'w': Evil(marker)}}, d / 'model.pth'); files['pth'] = d / 'model.pth'
    with open(d / 'model.pkl', 'wb') as f: pickle.dump({'w': Evil(marker)}, f)
    files['pkl'] = d / 'model.pkl'
    torch.save(Evil(marker), d / 'pytorch_model.bin'); files['bin'] = d / 'pytorch_model.bin'
    return files

@pytest.fixture
def marker(tmp_path):
    m = tmp_path / 'PWNED'
    yield m
    assert not m.exists(), 'a pickle ran code (the marker file exists)'

def test_control_the_pickles_are_live(tmp_path):
    "Without the safeguards, each file does run code: so the other tests can fail."
    m = tmp_path / 'control'
    files = evil_files(tmp_path / 'evil', m)
    for k, f in files.items():
        if k == 'pkl':
            with open(f, 'rb') as fh: pickle.load(fh)
        else: torch.load(f, weights_only=False)
        assert m.exists(), k
        m.unlink()

# ---------------------------------------------------------------- model directories
import realfake.modeldir as learner   # the model directory rules (formerly in realfake.learner)

@pytest.fixture(scope='module')
def good_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp('good') / 'model', size=32)

def _no_unpickling(monkeypatch):
    "Make every unpickling entry point explode, to prove a code path never uses one."
    def boom(*a, **k): raise AssertionError('unpickling was attempted')
    monkeypatch.setattr(torch, 'load', boom)
    monkeypatch.setattr(pickle, 'load', boom); monkeypatch.setattr(pickle, 'loads', boom)
    monkeypatch.setattr(pickle, 'Unpickler', boom)

def test_model_dir_ignores_pickles_beside_safetensors(tmp_path, good_dir, marker, monkeypatch):
    import shutil
    d = tmp_path / 'model'; shutil.copytree(good_dir, d)
    evil_files(d, marker)
    _no_unpickling(monkeypatch)
    model, cfg = learner.load_model_dir(d)
    assert cfg.arch == 'convnext_atto' and not model.training
    from realfake.predict import Classifier
    clf = Classifier.from_dir(d, device='cpu', backend='torch')
    assert np.isfinite(clf.prob_fake([base_image()])).all()

@pytest.mark.parametrize('kind', ['pth', 'pkl', 'bin'])
def test_model_dir_with_only_a_pickle_is_refused(tmp_path, good_dir, marker, kind):
    d = tmp_path / 'model'; d.mkdir()
    (d / 'config.json').write_bytes((good_dir / 'config.json').read_bytes())
    f = evil_files(tmp_path / 'evil', marker)[kind]
    os.replace(f, d / f.name)
    with pytest.raises(FileNotFoundError) as ei: learner.load_model_dir(d)
    assert 'safetensors' in str(ei.value), ei.value
    from realfake.predict import Classifier
    with pytest.raises(FileNotFoundError) as ei: Classifier.from_dir(d, device='cpu', backend='torch')
    assert 'safetensors' in str(ei.value) or 'model directory' in str(ei.value), ei.value

def test_corrupt_safetensors_is_a_clear_error(tmp_path, good_dir, marker):
    "Empty, a huge header length, and a pickle named model.safetensors: one clear error naming the file, nothing run."
    d = tmp_path / 'model'; d.mkdir()
    (d / 'config.json').write_bytes((good_dir / 'config.json').read_bytes())
    for data in (b'', (2**62).to_bytes(8, 'little') + b'{}', pickle.dumps({'state_dict': Evil(marker)})):
        (d / 'model.safetensors').write_bytes(data)
        with pytest.raises(learner.RealfakeError) as ei: learner.load_model_dir(d)
        assert 'model.safetensors' in str(ei.value), f'the error does not name the bad file: {type(ei.value).__name__}: {ei.value}'

# ---------------------------------------------------------------- .pth weights: flag + weights_only
@pytest.mark.parametrize('kind', ['pth', 'pkl', 'bin'])
def test_pth_weights_need_the_flag(tmp_path, marker, kind):
    f = evil_files(tmp_path / 'evil', marker)[kind]
    with pytest.raises(learner.WeightsError) as ei: learner.load_pth_weights(f)
    assert 'allow_pth' in str(ei.value)
    with pytest.raises(learner.WeightsError): learner.build_network('convnext_atto', weights=f)

@pytest.mark.parametrize('kind', ['pth', 'pkl', 'bin'])
def test_pth_weights_with_the_flag_use_weights_only(tmp_path, marker, kind, monkeypatch):
    f = evil_files(tmp_path / 'evil', marker)[kind]
    calls, real_load = [], torch.load
    def spy(*a, **k): calls.append(k.get('weights_only')); return real_load(*a, **k)
    monkeypatch.setattr(torch, 'load', spy)
    with pytest.raises(learner.WeightsError): learner.load_pth_weights(f, allow_pth=True)
    with pytest.raises(learner.WeightsError): learner.build_network('convnext_atto', weights=f, allow_pth=True)
    assert calls and all(c is True for c in calls), f'torch.load called with weights_only={calls}'

@pytest.mark.slow
def test_train_cli_refuses_pickle_weights(tmp_path, marker):
    "realfake_train --weights evil.pth: refused without --allow_pth, refused by weights_only with it; no code runs."
    from PIL import Image
    from realfake.metadata import write_metadata
    rng = np.random.default_rng(0); recs = []
    for i in range(8):
        p = tmp_path / f'i{i}.png'; Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(p)
        recs.append(dict(path=str(p), label=('real', 'fake')[i % 2], split=('train', 'valid')[i // 4], source='s'))
    meta = write_metadata(recs, tmp_path / 'm.jsonl')
    f = evil_files(tmp_path / 'evil', marker)['pth']
    common = ['--metadata', meta, '--weights', f, '--arch', 'convnext_atto', '--epochs', 1, '--bs', 4, '--size', 16,
              '--resize', 16, '--cpu', '--workers', 0, '--threads', 1, '--quiet', '--out', tmp_path / 'run']
    r = run_cli('realfake_train', *common, timeout=120)
    assert r.returncode not in (0, None) and 'allow_pth' in r.stderr, (r.returncode, r.stderr[-800:])
    assert 'Traceback' not in r.stderr, f'a user error must not end in a traceback:\n{r.stderr[-1500:]}'
    r = run_cli('realfake_train', *common, '--allow_pth', timeout=120)
    assert r.returncode not in (0, None), r.stderr[-800:]
    assert 'not a plain tensor checkpoint' in r.stderr or 'weights_only' in r.stderr.lower(), r.stderr[-800:]
    assert not (tmp_path / 'run' / 'model').exists()

# ---------------------------------------------------------------- static: no unpickling anywhere in the package
def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = (f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else '')
            base = ast.unparse(f.value) if isinstance(f, ast.Attribute) else ''
            yield name, base, node

def test_package_never_unpickles():
    bad = []
    for py in sorted(PKG.glob('*.py')):
        for name, base, node in _calls(ast.parse(py.read_text())):
            where = f'{py.name}:{node.lineno}: {ast.unparse(node)[:120]}'
            kw = {k.arg: k.value for k in node.keywords}
            if base == 'torch' and name == 'load':
                if not (isinstance(kw.get('weights_only'), ast.Constant) and kw['weights_only'].value is True): bad.append(where)
            elif base in ('pickle', 'cPickle', 'dill', 'joblib', 'cloudpickle') and name in ('load', 'loads', 'Unpickler'): bad.append(where)
            elif name in ('load_learner', 'load_model') and base in ('', 'fastai', 'learner'): bad.append(where)
            elif base == 'learn' and name == 'load': bad.append(where)          # fastai Learner.load = torch.load
            elif base in ('torch.jit', 'jit') and name == 'load': bad.append(where)
            elif base in ('np', 'numpy') and name == 'load' and not (isinstance(kw.get('allow_pickle'), ast.Constant) and kw['allow_pickle'].value is False): bad.append(where)
    assert not bad, 'possible unpickling of untrusted data:\n' + '\n'.join(bad)

# ---------------------------------------------------------------- pixel limit
import realfake.images as images

def test_max_image_pixels_set_explicitly():
    "Importing realfake.images sets PIL's limit even when something set it to None (no limit) before."
    code = textwrap.dedent('''
        import PIL.Image as I
        I.MAX_IMAGE_PIXELS = None
        import realfake.images as ri
        assert isinstance(ri.MAX_PIXELS, int) and 0 < ri.MAX_PIXELS <= 200_000_000, ri.MAX_PIXELS
        assert I.MAX_IMAGE_PIXELS == ri.MAX_PIXELS, I.MAX_IMAGE_PIXELS
        print('ok')''')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and 'ok' in r.stdout, r.stderr

def test_modules_that_decode_import_the_limit():
    "Every module calling Image.open imports realfake.images at module level (so the limit is set first)."
    bad = []
    for py in sorted(PKG.glob('*.py')):
        if py.name == 'images.py': continue
        tree = ast.parse(py.read_text())
        opens = [n for name, base, n in _calls(tree) if name == 'open' and base in ('Image', 'PIL.Image')]
        if not opens: continue
        top = [n for n in tree.body]
        top += [m for n in tree.body if isinstance(n, ast.Try) for m in n.body]
        ok = any(isinstance(n, ast.ImportFrom) and (n.module in ('images', 'realfake.images') or (n.level and n.module == 'images'))
                 for n in top)
        if not ok: bad.append(f'{py.name}: Image.open at line {opens[0].lineno} without a module-level import of realfake.images')
    assert not bad, bad

@pytest.mark.parametrize('w,h', [(40000, 40000), (11000, 10000), (150_000_000, 1)])
def test_bombs_refused_before_decoding(tmp_path, w, h):
    "Above the limit (even in PIL's warn-only window 1x..2x, and as a thin strip) the header is enough to refuse."
    p = tmp_path / f'bomb_{w}x{h}.png'; p.write_bytes(png_declaring(w, h))
    if w * h <= images.MAX_PIXELS: pytest.skip('not above the limit')
    for f in (images.probe_image, images.load_image, lambda p: images.load_image(p, short_side=32), lambda p: images.load_image(p.read_bytes())):
        with pytest.raises(images.ImageLoadError) as ei: f(p)
        assert 'bomb' in str(ei.value) or 'pixels' in str(ei.value), ei.value

def test_limit_holds_even_if_pil_limit_is_disabled(tmp_path):
    import PIL.Image
    p = tmp_path / 'bomb.png'; p.write_bytes(png_declaring(40000, 40000))
    old = PIL.Image.MAX_IMAGE_PIXELS
    try:
        PIL.Image.MAX_IMAGE_PIXELS = None     # some other library switched the global off
        with pytest.raises(images.ImageLoadError): images.load_image(p, short_side=32)
        with pytest.raises(images.ImageLoadError): images.probe_image(p)
    finally: PIL.Image.MAX_IMAGE_PIXELS = old

def test_max_pixels_argument(tmp_path):
    from PIL import Image
    p = tmp_path / 'small.png'; Image.fromarray(base_image()).save(p)
    assert images.load_image(p).size == (48, 32)
    with pytest.raises(images.ImageLoadError): images.load_image(p, max_pixels=1000)
    with pytest.raises(images.ImageLoadError): images.load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=1000)
    with pytest.raises(images.ImageLoadError): images.load_image(Image.new('RGB', (100, 100)), max_pixels=1000)

def test_no_module_opens_an_image_by_its_path():
    """`Image.open` outside `realfake.images` gets bytes in memory or a file object, never a path: a path would bypass the
    one opener (container members, the FIFO/device guard, the format list). `images.open_image` is the way to a header."""
    bad = []
    for py in sorted(PKG.glob('*.py')):
        if py.name == 'images.py': continue
        for name, base, n in _calls(ast.parse(py.read_text())):
            if name != 'open' or base not in ('Image', 'PIL.Image'): continue
            arg = n.args[0] if n.args else None
            in_memory = isinstance(arg, ast.Call) and getattr(arg.func, 'attr', getattr(arg.func, 'id', '')) == 'BytesIO'
            if not (in_memory or (isinstance(arg, ast.Name) and arg.id in ('buf', 'f', 'fp'))):
                bad.append(f'{py.name}:{n.lineno}: Image.open({ast.unparse(arg) if arg else ""})')
    assert not bad, bad

def _imports(tree) -> set:
    "Top-level package names a module imports, anywhere in it."
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import): out |= {a.name.split('.')[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module and not n.level: out.add(n.module.split('.')[0])
    return out

def test_brace_patterns_expand_in_one_place():
    """Every command that takes a brace pattern (the shards `realfake_predict` scores, the containers `realfake_prepare`
    lists) expands it through `core.expand_braces`: counted before it is expanded, one limit, one unbalanced-brace error.
    No other module imports braceexpand."""
    bad = [py.name for py in sorted(PKG.glob('*.py')) if py.name != 'core.py' and 'braceexpand' in _imports(ast.parse(py.read_text()))]
    assert bad == [], f'{bad} expand brace patterns themselves: use realfake.core.expand_braces'
    assert _imports(ast.parse('from braceexpand import braceexpand\ndef f():\n    import braceexpand as b')) == {'braceexpand'}   # the check sees both forms
