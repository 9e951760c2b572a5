"""The audit verdict on models that really learned something, trained here on data made here.

* **Format only.** Both classes come from the same generator of images (crops of procedural textures with
  camera-like noise, sigma 8): the *only* difference is the encoding, reals saved as JPEG at quality 50-80 (which
  smooths the noise away), fakes as PNG. A model that scores these well can only have learned the format.
* **Content.** `realfake.synth.make_demo(same_format='PNG')`: both classes PNG, the fakes carry simulated traces of a
  generator's upsampling decoder. Nothing about the file format tells them apart.

Architecture: timm's `test_resnet` (0.37M parameters, BatchNorm). From scratch, ConvNeXt-atto does not learn the pure
JPEG-vs-PNG difference in this budget (measured: AUC 0.43-0.49 after 4-8 epochs on these images, with or without
augmentation): its patchify stem is followed by a LayerNorm per position, which normalises away the local energy of
the fine detail that JPEG removes. A BatchNorm network keeps it. Augmentation is off for both models (fastai's
RandomErasing paints noise that hides the format signal). 5 epochs of 400 32-pixel images take 7-12 s on 2 shared
CPU cores; measured results (valid split; the test split is scored by the tests):

    format only: valid AUC 0.997; test AUC 0.95 (balanced accuracy 0.88 at the stored threshold), then with both
                 classes at JPEG 95 AUC 0.83 and balanced accuracy 0.53 (fakes 0.77 -> 0.07 caught), at JPEG 75 0.64,
                 with only the fakes JPEG-compressed at the reals' qualities 0.58
                 -> fragile to compression/resizing; one-class re-encoding hurts too, so a format shortcut can be
                    neither shown nor ruled out (both explanations fit a model whose only evidence JPEG removes)
    content:     valid AUC 0.999; test AUC 0.997, then 1.000 at JPEG 95, 75 and 50, 0.997 at WebP 75, balanced
                 accuracy 0.975 throughout; downscaled to half (16 px) AUC 0.78, fakes 0.95 -> 0.20 caught
                 -> fragile to compression/resizing, by the resizing alone (the one-class contrast does not apply:
                    no image is a JPEG, and the verdict says so)
"""
import numpy as np, pandas as pd, pytest
from PIL import Image

from realfake.evaluate import evaluate
from realfake.metadata import write_metadata
from realfake.perturb import FAKES_JPEG
from realfake.synth import make_real, procedural_photos
from realfake.train import train, PRESETS

RECIPE = PRESETS['demo'].override(arch='test_resnet', size=32, bs=16, epochs=5, lr=3e-3, max_crops=4, aug=False)
RUN = dict(workers=0, cpu=True, quiet=True)

pytestmark = pytest.mark.usefixtures('one_torch_thread')

def _format_only_data(dest, n=200, seed=7):
    "n images per class, identical content distribution; reals JPEG (quality 50-80), fakes PNG."
    photos, recs = procedural_photos(), []
    dest.mkdir(parents=True)
    for li, label in enumerate(('real', 'fake')):
        for i in range(n):
            rng = np.random.default_rng([seed, li, i])
            im = make_real(rng, photos, 32)
            a = np.asarray(im, np.float32) + rng.normal(0, 8, (im.height, im.width, 3))
            im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
            split = 'train' if i < 0.7 * n else 'valid' if i < 0.85 * n else 'test'
            p = dest/(f'r{i}.jpg' if label == 'real' else f'f{i}.png')
            if label == 'real': im.save(p, quality=int(rng.integers(50, 81)))
            else: im.save(p)
            recs.append(dict(path=str(p), label=label, split=split, source='camera' if label == 'real' else 'png-generator'))
    return write_metadata(recs, dest/'metadata.jsonl')

@pytest.fixture(scope='module')
def format_model(tmp_path_factory):
    d = tmp_path_factory.mktemp('format_only')
    meta = _format_only_data(d/'data')
    res = train(str(meta), RECIPE, out=d/'run', **RUN)
    return res['model_dir'], meta, res['values']

@pytest.fixture(scope='module')
def content_model(trained_demo):
    "conftest's session model: both classes PNG, fakes with simulated decoder traces; nothing about the format tells them apart."
    return trained_demo['model_dir'], trained_demo['metadata'], trained_demo['values']

def _audit(model_dir, meta, out):
    res = evaluate(model_dir, meta, out=out, audit=True, bs=64, num_workers=0)
    return res, pd.DataFrame(res['audit']).set_index('transform')

@pytest.mark.slow
def test_format_only_model_is_not_called_robust(format_model, tmp_path):
    model_dir, meta, values = format_model
    assert values['roc_auc'] >= 0.9, values                 # it did learn: the format is all there is to learn
    res, a = _audit(model_dir, meta, tmp_path/'rep')
    print(a[['auc', 'd_auc', 'balanced_accuracy', 'acc_real', 'acc_fake']].round(3).to_string())
    assert a.loc['clean', 'auc'] >= 0.85
    v = res['verdict']
    assert v['verdict'] == 'fragile to compression/resizing', v['reason']
    assert 'a format shortcut can be neither shown nor ruled out' in v['reason']
    assert a.loc[FAKES_JPEG, 'd_auc'] <= -0.2 and a.loc['jpeg_q75', 'd_auc'] <= -0.1
    assert a.loc[FAKES_JPEG, 'acc_fake'] < a.loc['clean', 'acc_fake'] - 0.3   # compressed fakes pass as real
    assert v['covers'] == ['jpeg_q95', 'jpeg_q75', 'jpeg_q50', 'webp_q75', 'down_0.5', FAKES_JPEG]
    assert {'jpeg_q75', 'webp_q75', FAKES_JPEG} <= {e['perturbation'] for e in v['evidence'] if e['hurts']}
    assert 'fragile to compression/resizing' in (tmp_path/'rep'/'report.html').read_text()

@pytest.mark.slow
def test_content_model_survives_reencoding(content_model, tmp_path):
    model_dir, meta, values = content_model
    assert values['roc_auc'] >= 0.9, values
    res, a = _audit(model_dir, meta, tmp_path/'rep')
    print(a[['auc', 'd_auc', 'balanced_accuracy', 'acc_real', 'acc_fake']].round(3).to_string())
    v = res['verdict']
    assert a.loc['clean', 'auc'] >= 0.9 and (a.loc[['jpeg_q95', 'jpeg_q75', 'jpeg_q50', 'webp_q75'], 'd_auc'] > -0.1).all()
    assert (a.loc[['jpeg_q95', 'jpeg_q75', 'jpeg_q50', 'webp_q75'], 'd_balanced_accuracy'] > -0.1).all()
    hurt = {e['perturbation'] for e in v['evidence'] if e['hurts']}
    # re-encoding costs nothing; halving a 32-pixel image does: the verdict says fragile, and names the resizing
    assert hurt <= {'down_0.5'} and v['verdict'] == ('fragile to compression/resizing' if hurt else 'robust'), v['reason']
    assert not hurt or v['reason'].startswith('down_0.5')
    assert any('no one-class contrast' in n for n in v['notes'])   # both classes PNG: no JPEG quality to match either way

@pytest.mark.slow
def test_an_untrained_model_is_inconclusive(tiny_model_dir, content_model, tmp_path):
    "A model at chance cannot lose anything under any perturbation: a flat audit of it proves nothing."
    _, meta, _ = content_model
    res, a = _audit(tiny_model_dir, meta, tmp_path/'rep')
    assert abs(a.loc['clean', 'auc'] - 0.5) < 0.2
    assert res['verdict']['verdict'] == 'inconclusive' and 'near chance' in res['verdict']['reason']
