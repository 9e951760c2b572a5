"""Train/serve parity: the probabilities training computes on its validation split equal what `Classifier.predict`,
the ONNX backend and the web app's upload path compute for the same files, for both resize policies and for JPEG and
PNG inputs (max |d prob| <= 1e-4, identical labels)."""
import numpy as np, pandas as pd, pytest, torch
from PIL import Image

from realfake.core import LABELS
from realfake.preprocess import Preprocess
from realfake.data import get_dls
from realfake.learner import create_learner, model_config
from realfake.modeldir import save_model_dir
from realfake.predict import Classifier

pytestmark = pytest.mark.usefixtures('one_torch_thread')

SPECS = {'resize': Preprocess(size=32, resize=40), 'native': Preprocess(size=32, resize='native', crops='grid', max_crops=4)}

def _data(d, n=12):
    "Validation files of both formats and odd sizes (larger and smaller than the crop), real and fake."
    rng = np.random.default_rng(0); recs = []
    sizes = [(48, 40), (70, 52), (33, 90), (24, 20)]
    for k in range(n):
        w, h = sizes[k % len(sizes)]
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        fmt = 'jpg' if k % 3 else 'png'
        p = d/f'{k}.{fmt}'; Image.fromarray(a).save(p, quality=85) if fmt == 'jpg' else Image.fromarray(a).save(p)
        recs.append(dict(path=str(p), label=LABELS[k % 2], split='valid'))
    for k in range(4):                                     # a few training rows (never scored here)
        recs.append(dict(path=recs[k]['path'], label=LABELS[k % 2], split='train'))
    return pd.DataFrame(recs)

@pytest.fixture(scope='module', params=list(SPECS))
def parity(request, tmp_path_factory):
    "A learner on the spec, its validation probabilities, and the same model saved as a model directory."
    d = tmp_path_factory.mktemp(request.param)
    df = _data(d)
    torch.manual_seed(0)
    dls = get_dls(df, SPECS[request.param], bs=4, num_workers=0, device='cpu', seed=0)
    learn = create_learner(dls, SPECS[request.param], 'convnext_atto', pretrained=False, path=d)
    for m in learn.model.modules():                        # random but not degenerate BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm1d): m.running_mean.normal_(0, 0.2); m.running_var.uniform_(0.5, 1.5)
    probs, targs = learn.get_preds()
    valid = df[df.split == 'valid'].reset_index(drop=True)
    mdir = save_model_dir(learn.model, model_config(learn), d/'model')
    return dict(valid=valid, train_prob=probs[:, 1].numpy().astype(np.float64), targs=targs.numpy(), mdir=mdir, spec=SPECS[request.param])

def _labels(p): return np.where(p >= 0.5, 'fake', 'real')

def _check(name, got, want):
    diff = np.abs(np.asarray(got, np.float64) - want)
    print(f"{name}: max |d prob| = {diff.max():.2e}")
    assert diff.max() <= 1e-4, (name, diff.max())
    assert (_labels(np.asarray(got)) == _labels(want)).all(), name

@pytest.mark.slow
def test_training_validation_equals_classifier(parity):
    clf = Classifier.from_dir(parity['mdir'], backend='torch', device='cpu')
    assert clf.spec == parity['spec']
    got = clf.predict(parity['valid'].path.tolist(), bs=3)
    assert got.error.isna().all()
    _check('Classifier.predict', got.prob_fake.to_numpy(), parity['train_prob'])
    assert (parity['targs'] == (parity['valid'].label == 'fake').to_numpy()).all()   # same order, same labels
    if parity['spec'].crops == 'grid': assert got.n_crops.max() > 1                  # the grid really combined crops
    assert parity['train_prob'].std() > 0.01                                          # varied scores, so the check can fail
    other = clf.with_preprocess(resize=44) if not parity['spec'].native else clf.with_preprocess(crops='center')
    assert np.abs(other.prob_fake(parity['valid'].path.tolist()) - parity['train_prob']).max() > 1e-3   # another decode differs

def test_onnx_backend_equals_training(parity):
    pytest.importorskip('onnx'); pytest.importorskip('onnxruntime')
    from realfake.export import export_onnx
    export_onnx(parity['mdir'])
    clf = Classifier.from_dir(parity['mdir'], backend='onnx')
    _check('ONNX', clf.prob_fake(parity['valid'].path.tolist()), parity['train_prob'])

def test_app_upload_equals_training(parity):
    pytest.importorskip('fasthtml')
    from starlette.testclient import TestClient
    from realfake.app import make_app
    clf = Classifier.from_dir(parity['mdir'], backend='torch', device='cpu')
    cli = TestClient(make_app(clf, max_files=16))
    files = [('images', (f'{i}{p[-4:]}', open(p, 'rb').read(), 'application/octet-stream'))
             for i, p in enumerate(parity['valid'].path)]
    r = cli.post('/detect', files=files, headers={'accept': 'application/json'})
    assert r.status_code == 200
    got = np.array([x['prob_fake'] for x in r.json()['results']], np.float64)
    _check('app upload', got, parity['train_prob'])
