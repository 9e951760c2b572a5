"Tests of realfake.perturb: each named perturbation is deterministic for a seed, the same for both classes, and goes through the one preprocessing path."
import io
import numpy as np, pytest
from PIL import Image

from realfake.core import RealfakeError
from realfake.images import load_image, jpeg_info
from realfake.preprocess import Preprocess, image_crops
from realfake.perturb import (PERTURBATIONS, PERTURBATION_NAMES, FAKES_JPEG, REALS_JPEG, Perturbation, fakes_jpeg, perturb_rng,
                              perturbation_names, encode_jpeg, encode_webp, rescale, down_up, blur, add_noise,
                              center_crop_fraction, limit_long_side)

def _photo(w=160, h=120, seed=0):
    rng = np.random.default_rng(seed)
    a = np.clip(np.linspace(40, 220, w)[None, :, None] + rng.normal(0, 20, (h, w, 3)), 0, 255)
    return Image.fromarray(a.astype(np.uint8))

def _same(a, b):
    return a == b if isinstance(a, bytes) else np.array_equal(np.asarray(a), np.asarray(b))

def test_registry_has_what_the_issue_asks_for():
    want = {'jpeg_q95', 'jpeg_q75', 'jpeg_q50', 'jpeg_q30', 'webp_q75', 'down_0.5', 'down_0.75', 'up_1.5', 'blur_1', 'blur_2',
            'crop_0.5', 'noise_5', 'web', 'hard'}
    assert set(PERTURBATIONS) == want and PERTURBATION_NAMES == [*PERTURBATIONS, FAKES_JPEG, REALS_JPEG]
    assert not any(p.fakes_only or p.reals_only for p in PERTURBATIONS.values())     # every registered one applies to both classes
    assert all(isinstance(p, Perturbation) and p.doc for p in PERTURBATIONS.values())

@pytest.mark.parametrize('name', list(PERTURBATIONS))
def test_each_perturbation_deterministic_and_through_the_shared_path(name):
    p, img = PERTURBATIONS[name], _photo()
    a, b = p(img, perturb_rng(3, name, '/x/a.png')), p(img, perturb_rng(3, name, '/x/a.png'))
    assert _same(a, b)                                        # the same seed and key: the same file content
    assert isinstance(a, bytes) == (p.group in ('codec', 'tier'))
    spec = Preprocess(size=32, resize=40)
    c = image_crops(a, spec)                                  # what a file with this content gives the network
    assert c.pixels.shape == (1, 32, 32, 3) and c.pixels.dtype == np.uint8
    assert not np.array_equal(c.pixels, image_crops(img, spec).pixels)   # and it did change something
    # a real image and a fake image get the same operation (nothing depends on the label)
    img2 = _photo(seed=1)
    assert _same(p(img2, perturb_rng(3, name, '/x/b.png')), p(img2, perturb_rng(3, name, '/x/b.png')))

def test_randomness_depends_on_seed_and_image_only():
    img, p = _photo(), PERTURBATIONS['noise_5']
    n = lambda seed, key: np.asarray(p(img, perturb_rng(seed, 'noise_5', key)))
    assert np.array_equal(n(0, 'a.png'), n(0, 'a.png'))
    assert not np.array_equal(n(0, 'a.png'), n(1, 'a.png')) and not np.array_equal(n(0, 'a.png'), n(0, 'b.png'))
    assert np.array_equal(n(0, 5), n(0, 5))                   # an index works as a key too
    weird = b'/x/caf\xe9.png'.decode('utf-8', 'surrogateescape')   # a name that is not valid UTF-8
    assert np.array_equal(n(0, weird), n(0, weird))

def test_codecs_and_sizes():
    img = _photo(1000, 600)
    for q in (95, 75, 50, 30):
        assert jpeg_info(Image.open(io.BytesIO(PERTURBATIONS[f'jpeg_q{q}'](img))))['quality'] == q
    assert Image.open(io.BytesIO(PERTURBATIONS['webp_q75'](img))).format == 'WEBP'
    sizes = {n: load_image(PERTURBATIONS[n](img)).size for n in ('down_0.5', 'down_0.75', 'up_1.5', 'crop_0.5', 'web', 'hard', 'blur_1')}
    assert sizes == {'down_0.5': (500, 300), 'down_0.75': (750, 450), 'up_1.5': (1500, 900), 'crop_0.5': (500, 300),
                     'web': (768, 461), 'hard': (512, 307), 'blur_1': (1000, 600)}
    assert jpeg_info(Image.open(io.BytesIO(PERTURBATIONS['web'](img))))['quality'] == 60
    small = _photo(300, 200)
    assert load_image(PERTURBATIONS['web'](small)).size == (300, 200)     # already small: only re-encoded

def test_pixel_operations():
    img = _photo()
    a = np.asarray(img, np.float32)
    assert np.abs(np.asarray(blur(img, 2), np.float32) - a).mean() > np.abs(np.asarray(blur(img, 1), np.float32) - a).mean() > 1
    noisy = np.asarray(add_noise(img, 5, np.random.default_rng(0)), np.float32)
    assert (noisy - a).std() == pytest.approx(5, rel=0.15)
    assert down_up(img, 0.5).size == img.size and rescale(img, 1.0) is img and limit_long_side(img, 500) is img
    assert np.array_equal(np.asarray(center_crop_fraction(img, 0.5)), a[30:90, 40:120].astype(np.uint8))
    assert len(encode_jpeg(img, 30)) < len(encode_jpeg(img, 95)) and len(encode_webp(img, 75)) > 0
    with pytest.raises(ValueError, match='quality'): encode_jpeg(img, 101)

def test_fakes_jpeg_draws_the_reals_settings():
    img = _photo()
    fj = fakes_jpeg([(88, '4:4:4'), (61, '4:2:0')])
    assert fj.fakes_only and fj.name == FAKES_JPEG
    got = {(jpeg_info(Image.open(io.BytesIO(fj(img, perturb_rng(0, FAKES_JPEG, f'{i}'))))).get('quality'),
            jpeg_info(Image.open(io.BytesIO(fj(img, perturb_rng(0, FAKES_JPEG, f'{i}'))))).get('subsampling')) for i in range(12)}
    assert got == {(88, '4:4:4'), (61, '4:2:0')}
    with pytest.raises(RealfakeError, match='none of them is a JPEG'): fakes_jpeg([])

def test_names():
    assert perturbation_names('all') == PERTURBATION_NAMES and perturbation_names(None) == [] and perturbation_names(' none ') == []
    assert perturbation_names(['blur_2', 'jpeg_q95', 'blur_2']) == ['jpeg_q95', 'blur_2']
    with pytest.raises(RealfakeError, match=r"unknown perturbation 'jpeg95' \(known: all, none, jpeg_q95"): perturbation_names('jpeg95,blur_1')

def test_perturbations_travel_to_worker_processes():
    "Picklable (no lambdas), so decoding workers can use them under any start method; the copy does the same."
    import pickle
    img = _photo()
    for p in [*PERTURBATIONS.values(), fakes_jpeg([(70, '4:2:0')])]:
        q = pickle.loads(pickle.dumps(p))
        assert q.name == p.name and _same(q(img, perturb_rng(0, p.name, 'k')), p(img, perturb_rng(0, p.name, 'k')))
