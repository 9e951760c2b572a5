"Tests of realfake.export: ONNX export, parity with PyTorch, the onnxruntime backend of Classifier."
import sys
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image

pytest.importorskip('onnx'); pytest.importorskip('onnxruntime')
from safetensors.torch import save_file
from realfake.modeldir import build_network as build_model, load_model_dir
from realfake.core import RealfakeError
from realfake.predict import Classifier
from realfake.export import export_onnx, onnx_parity, realfake_export

@pytest.fixture(scope='module')
def exported(tiny_model_dir, tmp_path_factory):
    import shutil
    d = tmp_path_factory.mktemp('m')/'model'; shutil.copytree(tiny_model_dir, d)
    export_onnx(d)
    return d

@pytest.mark.slow
def test_parity_random_inputs(exported):
    import onnxruntime as ort
    model, cfg = load_model_dir(exported)
    sess = ort.InferenceSession(str(exported/'model.onnx'), providers=['CPUExecutionProvider'])
    for n, seed in [(1, 0), (7, 1)]:                 # batch sizes the export never saw (dynamic batch axis)
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2
        with torch.inference_mode(): ref = model(x).numpy()
        got = sess.run(None, {'input': x.numpy()})[0]
        assert got.shape == (n, 2)
        assert np.abs(got - ref).max() < 1e-4
        assert np.abs(ref).max() > 1e-3             # not trivially zero outputs
    assert onnx_parity(model, exported/'model.onnx', 32, n=3, seed=5) < 1e-4

def test_parity_detects_a_different_model(exported, tmp_path):
    torch.manual_seed(1)
    other = build_model('convnext_atto').eval()
    assert onnx_parity(other, exported/'model.onnx', 32, n=2) > 1e-3

@pytest.mark.slow
def test_classifier_onnx_backend_same_api(exported):
    imgs = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8)) for i in range(5)]
    ct, co = Classifier.from_dir(exported, backend='torch'), Classifier.from_dir(exported, backend='onnx')
    assert co.backend == 'onnx' and co.model is None
    dt, do = ct.predict(imgs + [b'junk'], bs=2), co.predict(imgs + [b'junk'], bs=2)
    assert np.allclose(dt.prob_fake[:5], do.prob_fake[:5], atol=1e-5) and (dt.label[:5] == do.label[:5]).all()
    assert do.error.notna().tolist() == [False] * 5 + [True]
    grid = dict(resize='native', crops='grid', max_crops=4)
    dc = co.with_preprocess(**grid).predict(imgs[:1])
    assert dc.n_crops[0] == 4 and np.isclose(dc.logit[0], ct.with_preprocess(**grid).predict(imgs[:1]).logit[0], atol=1e-4)

def test_auto_backend_and_stale_file(exported, tmp_path):
    assert Classifier.from_dir(exported, device='cpu').backend == 'onnx'
    import shutil
    d = tmp_path/'m'; shutil.copytree(exported, d)
    torch.manual_seed(3)
    save_file({k: v.contiguous() for k, v in build_model('convnext_atto').state_dict().items()}, str(d/'model.safetensors'))  # new weights, old onnx
    assert Classifier.from_dir(d, device='cpu').backend == 'torch'
    with pytest.raises(RealfakeError, match='realfake_export'):
        Classifier.from_dir(_no_onnx(tmp_path, exported), backend='onnx')

def _no_onnx(tmp_path, src):
    import shutil
    d = tmp_path/'no_onnx'; shutil.copytree(src, d); (d/'model.onnx').unlink(); return d

def test_onnx_only_directory(exported, tmp_path):
    "A directory with config.json + model.onnx only (no PyTorch weights) runs on onnxruntime."
    d = tmp_path/'deploy'; d.mkdir()
    for f in ['config.json', 'model.onnx']: (d/f).write_bytes((exported/f).read_bytes())
    c = Classifier.from_dir(d)
    assert c.backend == 'onnx'
    assert c.predict([np.zeros((40, 40, 3), np.uint8)]).error.isna().all()

def test_cli_writes_checked_file(exported, tmp_path):
    p = realfake_export(model=str(exported), out=str(tmp_path/'x.onnx'))
    assert Path(p) == tmp_path/'x.onnx' and p.stat().st_size > 10_000
    assert not list(tmp_path.glob('.*.tmp'))      # the temporary file is gone

def test_missing_onnxruntime_clear_error(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    with pytest.raises(ImportError, match=r"realfake\[onnx\]"):
        Classifier.from_dir(exported, backend='onnx')
    assert Classifier.from_dir(exported, device='cpu').backend == 'torch'    # auto falls back to torch
