"""Tests of realfake.preprocess beyond the notebook's: native crops never interpolate, odd and hostile sizes at native
pixels (a score or a clear error, bounded memory), the spec round trip through config.json."""
import io, json, subprocess, sys, textwrap
import numpy as np, pytest
from PIL import Image

from realfake.preprocess import Preprocess, image_crops, crop_boxes, train_crop, pad_reflect
from realfake.modeldir import ModelConfig
from realfake.predict import Classifier

NATIVE = Preprocess(size=32, resize='native', crops='grid', max_crops=9)

def _img(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))

@pytest.mark.parametrize('w,h', [(96, 64), (33, 90), (500, 40)])
def test_native_crops_are_source_slices(w, h):
    "Every native evaluation crop equals the slice of the decoded array at its box: no pixel is interpolated."
    im = _img(w, h)
    c = image_crops(im, NATIVE)
    a = pad_reflect(np.asarray(im), 32)
    assert len(c.boxes) == len(crop_boxes(a.shape[1], a.shape[0], NATIVE)) <= NATIVE.max_crops
    for p, (l, t, r, b) in zip(c.pixels, c.boxes): assert np.array_equal(p, a[t:b, l:r])

def test_native_training_crops_are_source_slices():
    import random
    im = _img(120, 80, seed=3); a = np.asarray(im)
    for s in range(20):
        t = np.asarray(train_crop(im, NATIVE, random.Random(s)))
        hits = [(y, x) for y in range(80 - 31) for x in range(120 - 31) if np.array_equal(a[y:y + 32, x:x + 32], t)]
        assert len(hits) == 1, s

def test_small_images_are_padded_by_reflection_in_training_and_scoring():
    "Decided: an image smaller than the crop is reflected to the crop size (no new values, no resampling), never skipped."
    tiny = _img(5, 3)
    c = image_crops(tiny, NATIVE)
    assert c.pixels.shape == (1, 32, 32, 3) and set(np.unique(c.pixels)) <= set(np.unique(np.asarray(tiny)))
    assert np.asarray(train_crop(tiny, NATIVE)).shape == (32, 32, 3)

def _forged_jpeg(w, h) -> bytes:
    "A small valid JPEG whose header (SOF0) declares w x h pixels."
    b = io.BytesIO(); _img(16, 16).save(b, 'JPEG'); data = bytearray(b.getvalue())
    i = data.index(b'\xff\xc0')
    data[i + 5:i + 7], data[i + 7:i + 9] = h.to_bytes(2, 'big'), w.to_bytes(2, 'big')
    return bytes(data)

def test_odd_and_hostile_sizes_at_native_pixels(tiny_model_dir, tmp_path):
    "1x1 and 4000x10 are scored; a 20000x20000 JPEG is refused from its header, with bounded memory."
    clf = Classifier.from_dir(tiny_model_dir, backend='torch', device='cpu').with_preprocess(resize='native', crops='grid')
    _img(1, 1).save(tmp_path/'one.png'); _img(4000, 10).save(tmp_path/'strip.png')
    (tmp_path/'huge.jpg').write_bytes(_forged_jpeg(20000, 20000))
    df = clf.predict([tmp_path/'one.png', tmp_path/'strip.png', tmp_path/'huge.jpg'])
    assert df.error[:2].isna().all() and df.prob_fake[:2].between(0, 1).all()
    assert df.n_crops[0] == 1 and df.n_crops[1] == 9                     # the strip: 9 crops spread along it
    assert 'decompression bomb refused' in df.error[2] and 'huge.jpg' in df.error[2]

@pytest.mark.slow
def test_huge_image_memory_is_bounded(tmp_path):
    "Peak memory of scoring a 20000x20000 JPEG at native pixels stays small: it is refused before any pixel is decoded."
    (tmp_path/'huge.jpg').write_bytes(_forged_jpeg(20000, 20000))
    code = textwrap.dedent(f'''
        import resource, sys
        from realfake.preprocess import Preprocess, image_crops
        from realfake.images import ImageLoadError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try: image_crops({str(tmp_path/'huge.jpg')!r}, Preprocess(size=224, resize='native', crops='grid'))
        except ImageLoadError as e: print('refused', e.reason)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    ''')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    lines = r.stdout.split('\n')
    assert lines[0].startswith('refused decompression bomb'), r.stdout + r.stderr
    assert int(lines[1]) < 50, f'peak grew by {lines[1]} MB'

def test_spec_round_trip_through_config_json():
    for spec in (Preprocess(), Preprocess(size=64, resize='native', crops='grid', max_crops=16, combine='max')):
        cfg = ModelConfig('convnext_atto', preprocess=spec)
        assert ModelConfig.from_json(cfg.to_json()).preprocess == spec
        assert json.loads(cfg.to_json())['preprocess']['resize'] == spec.resize
