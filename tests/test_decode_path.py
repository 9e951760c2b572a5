"""One decode path for every format (issue 23 item 1, issue 22's decoder items): the same pixels as PNG and as JPEG
give the same network input under both resize policies; a no-op perturbation leaves every score unchanged; each
image is opened once; truncated data is an error for every format; bomb errors quote realfake's limits."""
import io
import numpy as np
import pytest
from PIL import Image

import realfake.images as ri
from realfake.images import ImageLoadError, load_image, probe_image, _png_header
from realfake.preprocess import Preprocess, image_crops, image_input
from realfake.perturb import Perturbation
from realfake.evaluate import _GridItems

SPECS = {'resize': Preprocess(size=224, resize=256), 'native': Preprocess(size=224, resize='native', crops='grid', max_crops=4)}
# The bound asserted for PNG vs JPEG q100 4:4:4 of the same pixels, in grey levels of the uint8 crops (mean, max):
# JPEG q100's own rounding, measured 0.18-0.19 / 2 (resize) and 0.46-0.48 / 4 (native) on these images.
BOUND = {'resize': (0.3, 3), 'native': (0.6, 5)}


def photo(w, h, seed=0, cell=16):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // cell + 2, w // cell + 2, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def encoded(im, fmt, **kw):
    b = io.BytesIO(); im.save(b, fmt, **kw); return b.getvalue()


def png_and_jpeg(im): return encoded(im, 'PNG'), encoded(im, 'JPEG', quality=100, subsampling=0)


@pytest.mark.parametrize('policy', list(SPECS))
@pytest.mark.parametrize('cell', [4, 16])
def test_png_and_jpeg_q100_give_the_same_input(policy, cell):
    "1200x800 (large enough for a 1/2 or 1/4 draft at 256): the formats differ by JPEG q100's rounding only."
    png, jpg = png_and_jpeg(photo(1200, 800, seed=cell, cell=cell))
    a, b = (image_crops(x, SPECS[policy]).pixels.astype(np.float32) for x in (png, jpg))
    d = np.abs(a - b)
    mean_bound, max_bound = BOUND[policy]
    assert d.mean() < mean_bound and d.max() <= max_bound, (policy, cell, d.mean(), d.max())
    x, y = image_input(png, SPECS[policy]), image_input(jpg, SPECS[policy])
    assert np.abs(x - y).max() <= max_bound / 255 / min(SPECS[policy].std) + 1e-6


def test_draft_opt_in_is_a_jpeg_only_filter():
    "The opt-in draft decode moves the JPEG further from the PNG of the same pixels than the default does."
    png, jpg = png_and_jpeg(photo(1200, 800, seed=4, cell=4))
    p = np.asarray(load_image(png, short_side=256), np.float32)
    full = np.abs(np.asarray(load_image(jpg, short_side=256), np.float32) - p).mean()
    draft = np.abs(np.asarray(load_image(jpg, short_side=256, draft=True), np.float32) - p).mean()
    assert draft > 3 * full, (draft, full)
    assert np.array_equal(np.asarray(load_image(png, short_side=256, draft=True)), p)   # PNGs are never drafted


@pytest.mark.parametrize('orientation', [1, 3, 6, 8])
@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
def test_decoded_image_equals_file(fmt, orientation):
    "`load_image(load_image(f), s)` is `load_image(f, s)` pixel for pixel, EXIF rotations included."
    ex = Image.Exif(); ex[0x0112] = orientation
    data = encoded(photo(900, 600), fmt, exif=ex.tobytes(), **({'quality': 90} if fmt == 'JPEG' else {}))
    for s in (256, 100, 600):
        assert np.array_equal(np.asarray(load_image(load_image(data), short_side=s)), np.asarray(load_image(data, short_side=s))), s


def _files(d, n=10):
    out = []
    for k in range(n):
        fmt = 'jpg' if k % 2 else 'png'
        p = d/f'{k}.{fmt}'; photo(1000, 700, seed=k).save(p, quality=95) if fmt == 'jpg' else photo(1000, 700, seed=k).save(p)
        out.append(str(p))
    return out


@pytest.mark.parametrize('policy', list(SPECS))
def test_noop_perturbation_changes_nothing_and_each_file_opens_once(policy, tmp_path, monkeypatch):
    "The perturbation grid: a perturbation that returns its input gives the clean crops exactly, for JPEG and PNG; one open per image."
    paths = _files(tmp_path)
    opens = []
    real_open = ri._open_file
    monkeypatch.setattr(ri, '_open_file', lambda p: opens.append(str(p)) or real_open(p))
    noop = Perturbation('noop', lambda im, rng: im, 'nothing')
    items = _GridItems(paths, [k % 2 == 0 for k in range(len(paths))], SPECS[policy], [noop])
    got = [items[i] for i in range(len(paths))]
    assert opens == paths                                   # the grid: each file opened once, for both policies
    for i, (_, (clean, same), errs) in enumerate(got):
        assert errs == [None, None] and np.array_equal(clean, same), paths[i]
        assert np.array_equal(clean, image_crops(paths[i], SPECS[policy]).pixels)    # = what predict scores


def _short_jpeg(w, h):
    "A valid little JPEG whose header is patched to declare `w` x `h` (its data ends with a proper EOI marker)."
    d = bytearray(encoded(Image.new('RGB', (16, 16), (10, 200, 30)), 'JPEG'))
    i = d.find(b'\xff\xc0')
    d[i+5:i+7], d[i+7:i+9] = h.to_bytes(2, 'big'), w.to_bytes(2, 'big')
    return bytes(d)


def _short_gif():
    d = bytearray(encoded(Image.new('P', (64, 64), 3), 'GIF'))
    d[6:8] = d[8:10] = (640).to_bytes(2, 'little')
    i = d.find(b'\x2c'); d[i+5:i+7] = d[i+7:i+9] = (640).to_bytes(2, 'little')
    return bytes(d)


SHORT = {'jpeg 10000x10000': lambda: _short_jpeg(10000, 10000), 'jpeg 3000x2000': lambda: _short_jpeg(3000, 2000),
         'png': lambda: _png_header(3000, 2000), 'gif': _short_gif,
         'bmp': lambda: encoded(Image.new('RGB', (64, 64), 3), 'BMP')[:7000]}


@pytest.mark.parametrize('kind', list(SHORT))
def test_data_shorter_than_declared_is_an_error(kind, tmp_path):
    "A file whose data cannot fill the size its header declares is 'truncated', naming the file, never a grey image."
    data = SHORT[kind]()
    p = tmp_path/'short.img'; p.write_bytes(data)
    for src, name in ((p, str(p)), (data, '<bytes>')):
        for kw in (dict(), dict(short_side=64), dict(short_side=64, draft=True)):
            with pytest.raises(ImageLoadError, match='truncated') as ei: load_image(src, **kw)
            assert name in str(ei.value)
    if kind.startswith('jpeg'):
        assert len(data) < 1000
        with pytest.raises(ImageLoadError, match='truncated'): probe_image(p)   # refused from the header, before decoding


def test_small_uniform_jpeg_is_not_truncated():
    "The lower bound (one bit per 8x8 block) passes a real one-colour JPEG: the smallest honest files."
    for w, h in [(4000, 3000), (1, 1), (8, 8)]:
        assert load_image(encoded(Image.new('RGB', (w, h), (50, 60, 70)), 'JPEG', quality=1)).size == (w, h)


@pytest.mark.parametrize('w,h,limit', [(12000, 10000, ri.MAX_PIXELS), (12000, 10000, 40_000_000),   # Pillow only warns here
                                       (20000, 20000, ri.MAX_PIXELS), (20000, 20000, 40_000_000), (20000, 20000, None)])  # Pillow raises
def test_bomb_error_quotes_realfakes_limit(w, h, limit, tmp_path):
    p = tmp_path/'bomb.png'; p.write_bytes(_png_header(w, h))
    with pytest.raises(ImageLoadError) as ei: load_image(p, max_pixels=limit)
    msg = str(ei.value)
    assert f'{w*h:,} pixels' in msg and f'limit {(limit or ri.MAX_PIXELS):,}' in msg and '200,000,000' not in msg and '200000000' not in msg, msg


# ---------------------------------------------------------------- the draft opt-in, for scoring only
def test_draft_opt_in_is_recorded_and_only_changes_jpegs(tiny_model_dir, tmp_path):
    "`decode='draft'` reaches the decoder through the spec, is recorded in the sidecar, moves JPEG scores only; training refuses it."
    import json, pandas as pd
    from realfake.predict import PredictOptions, predict_to_csv, sidecar_path
    from realfake.data import get_dls
    from realfake.core import RealfakeError
    paths = _files(tmp_path, n=4)                           # 1000x700: drafted at 1/8 for the model's 36-pixel side
    full, draft = tmp_path/'full.csv', tmp_path/'draft.csv'
    for out, dec in ((full, None), (draft, 'draft')):
        predict_to_csv(paths, PredictOptions(model=str(tiny_model_dir), device='cpu', backend='torch', num_workers=0, decode=dec), out=out, progress=False)
    a, b = pd.read_csv(full).set_index('path'), pd.read_csv(draft).set_index('path')
    same = {p: a.loc[p, 'logit'] == b.loc[p, 'logit'] for p in a.index}
    assert all(same[p] for p in same if p.endswith('.png')) and not any(same[p] for p in same if p.endswith('.jpg')), same
    assert json.loads(sidecar_path(draft).read_text())['scored_with']['preprocess']['decode'] == 'draft'
    assert 'decode' not in json.loads(sidecar_path(full).read_text())['scored_with']['preprocess']   # old sidecars stay valid
    spec = Preprocess(size=32, resize=36, decode='draft')
    assert 'draft' in spec.describe() and Preprocess.from_dict(spec.to_dict()) == spec
    df = pd.DataFrame(dict(path=paths, label=['real', 'fake'] * 2, split=['train', 'valid'] * 2))
    with pytest.raises(RealfakeError, match='scoring only'): get_dls(df, spec, bs=2, num_workers=0, device='cpu')
