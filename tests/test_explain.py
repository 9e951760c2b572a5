"Heatmaps (realfake.explain): the source's size, determinism, agreement with Classifier, and a quadrant sanity check on a trained model."
import os
import numpy as np
import pytest
import torch
from PIL import Image
from realfake.explain import cam, crop_score_map, heatmap, overlay, write_heatmap, network_parts
from realfake.core import RealfakeError
from realfake.predict import Classifier
from realfake.modeldir import load_model_dir
from realfake.synth import make_real, make_fake, demo_photos
from helpers import make_model_dir

QUADRANTS = {'top-left': (slice(0, 64), slice(0, 64)), 'top-right': (slice(0, 64), slice(64, 128)),
             'bottom-left': (slice(64, 128), slice(0, 64)), 'bottom-right': (slice(64, 128), slice(64, 128))}


def _photo(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


@pytest.fixture(scope='module')
def native_clf(tmp_path_factory):
    d = make_model_dir(tmp_path_factory.mktemp('native')/'model', size=32, resize='native', crops='grid', max_crops=4)
    return Classifier.from_dir(d, device='cpu', backend='torch')


@pytest.mark.parametrize('kind', ['cam', 'crops'])
def test_maps_have_the_source_size_and_repeat(tiny_model_dir, native_clf, tmp_path, one_torch_thread, kind):
    "A file of odd size, under a resize policy and at native pixels: a map of its size, in [0, 1], the same twice."
    f = tmp_path/'odd.png'; _photo(71, 45).save(f)
    for clf in (Classifier.from_dir(tiny_model_dir, device='cpu', backend='torch'), native_clf):
        m = heatmap(clf, f, kind)
        assert m.shape == (45, 71) and m.dtype == np.float32
        ok = np.isfinite(m)
        assert ok.any() and 0 <= m[ok].min() and m[ok].max() <= 1
        np.testing.assert_array_equal(heatmap(clf, str(f), kind), m)        # deterministic (NaN == NaN here)
        if kind == 'cam': assert m[ok].max() == pytest.approx(1.0)


def test_centre_crop_map_covers_the_crop_only(tiny_model_dir, one_torch_thread):
    "Under 'resize 36, centre crop 32' a 72x72 image is seen through its central 64x64 pixels: NaN outside."
    clf = Classifier.from_dir(tiny_model_dir, device='cpu', backend='torch')
    m = cam(clf, _photo(72, 72))
    seen = np.isfinite(m)
    assert seen[8:64, 8:64].all() and not seen[:3].any() and not seen[:, -3:].any()


def test_crop_scores_agree_with_classifier(tiny_model_dir, native_clf, one_torch_thread):
    "The crop map is the Classifier's own probabilities: its centre-crop value is predict's prob_fake; grid crops match crop_scores."
    clf, img = Classifier.from_dir(tiny_model_dir, device='cpu', backend='torch'), _photo(60, 50, 3)
    m = crop_score_map(clf, img, layout='spec')
    p = clf.predict([img]).prob_fake[0]
    assert np.nanmax(m) == pytest.approx(p, abs=1e-5) and np.nanmin(m) == pytest.approx(p, abs=1e-5)
    img = _photo(96, 64, 4)             # 4 crops of 32 at native pixels: x 0 and 64, y 0 and 32; columns 32-63 unseen
    m = crop_score_map(native_clf, img, layout='spec')
    scores = native_clf.crop_scores(img)
    assert len(scores) == 4 and np.isnan(m[:, 32:64]).all()
    for c in scores:                    # boxes as fractions of the image
        l, t, r, b = (round(v * s) for v, s in zip(c['box'], (96, 64, 96, 64)))
        np.testing.assert_allclose(m[t:b, l:r], c['prob_fake'], atol=1e-5)


def test_temperature_changes_scores_not_cam(tiny_model_dir, one_torch_thread):
    clf = Classifier.from_dir(tiny_model_dir, device='cpu', backend='torch')
    img = _photo(40, 40, 5)
    a, c = crop_score_map(clf, img), cam(clf, img)
    clf.temperature = 4.0
    b = crop_score_map(clf, img)
    ok = np.isfinite(a)
    assert np.abs(b[ok] - 0.5).max() < np.abs(a[ok] - 0.5).max()
    np.testing.assert_array_equal(cam(clf, img), c)


def test_refuses_what_it_cannot_explain(tiny_model_dir):
    net, cfg = load_model_dir(tiny_model_dir)
    with pytest.raises(TypeError, match='ModelConfig'): cam(net, _photo(40, 40))
    with pytest.raises(TypeError, match='nn.Sequential'): cam(torch.nn.Linear(2, 2), _photo(40, 40), cfg)
    onnx_like = type('C', (), dict(model=None, config=cfg))()
    with pytest.raises(RealfakeError, match='ONNX'): network_parts(onnx_like)
    with pytest.raises(ValueError, match='kind'): heatmap(net, _photo(40, 40), 'gradients', cfg)


def test_write_heatmap_is_atomic(tiny_model_dir, tmp_path):
    clf = Classifier.from_dir(tiny_model_dir, device='cpu', backend='torch')
    img = _photo(50, 40)
    m = cam(clf, img)
    out = tmp_path/'maps'/'a.png'
    write_heatmap(out, img, m)
    assert Image.open(out).size == (50, 40)
    with pytest.raises(ValueError, match='the map is'): write_heatmap(tmp_path/'maps'/'b.png', img, m[:, :10])
    assert sorted(os.listdir(tmp_path/'maps')) == ['a.png']          # no partial file, no temporary left
    o = np.asarray(overlay(img, np.full((40, 50), np.nan, np.float32)))
    assert (o[..., 0] == o[..., 1]).all() and (o[..., 1] == o[..., 2]).all()    # nothing seen: all grey


# --- the sanity check: a map must point at the evidence ------------------------------------------------------------

@pytest.fixture(scope='module')
def synth_model(trained_demo):
    "conftest's session model: a convnext_atto trained on simulated fakes (the decoder trace covers the whole image), both classes PNG."
    return load_model_dir(trained_demo['model_dir'])


def _composite(quadrant, seed):
    "A 128x128 real picture with a 64x64 simulated fake pasted into `quadrant`."
    rng, photos = np.random.default_rng([seed, list(QUADRANTS).index(quadrant)]), demo_photos()
    comp = np.asarray(make_real(rng, photos, 128))[:128, :128].copy()
    comp[QUADRANTS[quadrant]] = np.asarray(make_fake(rng, photos, 64))
    return comp


@pytest.mark.parametrize('kind', ['cam', 'crops'])
@pytest.mark.slow
def test_quadrant(synth_model, kind, one_torch_thread):
    """Whichever quadrant holds the fake, the map puts most of its mass there (chance: 25%).

    A map that ignored the content, or pointed at the wrong place in any of the 8 composites, fails."""
    if not demo_photos(): pytest.skip('scikit-image / scikit-learn sample photos are not installed')
    net, cfg = synth_model
    for seed in (0, 1):
        for q, (ys, xs) in QUADRANTS.items():
            m = heatmap(net, _composite(q, seed), kind, cfg, layout='cover', stride=16)
            assert np.isfinite(m).all()
            mass = {k: float(np.sum(m[a, b])) / float(np.sum(m)) for k, (a, b) in QUADRANTS.items()}
            assert max(mass, key=mass.get) == q and mass[q] > 0.4, f"{kind}, fake {q} (seed {seed}): mass {mass}"


@pytest.mark.parametrize('kind', ['cam', 'crops'])
@pytest.mark.parametrize('entry', ['write_heatmaps', 'overlay'])
def test_maps_for_an_overlay_are_built_at_its_size(native_clf, tmp_path, one_torch_thread, kind, entry):
    """A 6-megapixel file at native pixels, drawn at most 256 px: no array of the map's (or the overlay's) is anywhere
    near the source's size. numpy reports its allocations to tracemalloc: beyond what decoding the crops for a score
    takes anyway, the peak grows by less than a quarter of one full-size float32 map (6 MB); built at full size
    (float64 sums, a full-size overlay) it grew by several full-size maps."""
    import tracemalloc
    from realfake.explain import write_heatmaps, map_size
    from realfake.preprocess import image_crops
    f = tmp_path/'big.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)).resize((3000, 2000)).save(f)
    tracemalloc.start()
    try: image_crops(f, native_clf.spec); scoring = tracemalloc.get_traced_memory()[1]     # what a score decodes anyway
    finally: tracemalloc.stop()
    tracemalloc.start()
    try:
        if entry == 'write_heatmaps':
            st = write_heatmaps([f], native_clf, tmp_path/'maps', kind, max_side=256)
            assert st['written'] == 1
        else:
            m = heatmap(native_clf, f, kind, size=map_size(3000, 2000, 256))
            assert m.shape == (171, 256) and np.isfinite(m).any()
            assert overlay(f, m, max_side=256).size == (256, 171)
        peak = tracemalloc.get_traced_memory()[1]
    finally: tracemalloc.stop()
    assert peak < scoring + 3000 * 2000, f"{peak / 2**20:.0f} MB traced, {scoring / 2**20:.0f} MB to decode for a score"
    if entry == 'write_heatmaps': assert Image.open(next((tmp_path/'maps').glob('*.png'))).size == (256, 171)
