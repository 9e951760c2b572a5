"Classifier guidance (realfake.guidance) with a tiny random Stable Diffusion pipeline built from config: offline, seconds each."
import shutil
import numpy as np
import pytest
import torch
pytest.importorskip('diffusers')
pytest.importorskip('transformers')
import realfake.guidance as guidance
from realfake.guidance import (ClassifierGuidance, GuidanceError, check_guidable, tiny_sd_pipeline, fake_margin, guidance_grad,
                               torch_input, jpeg_st, random_view, check_independent, weights_sha256)
from realfake.predict import Classifier
from realfake.core import RealfakeError
from helpers import make_model_dir
from diffusion_helpers import brightness_model, judge_model, run_pipe, p_real

SEEDS = (0, 1, 2, 3, 4, 5)


@pytest.fixture(scope='module')
def pipe():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield tiny_sd_pipeline()
    torch.set_num_threads(n)


@pytest.mark.parametrize('spec,sizes', [
    (dict(resize=36), [(48, 40), (64, 64), (30, 20), (200, 60)]),                        # downscale, upscale, wide
    (dict(resize='native', crops='grid', max_crops=4, combine='max'), [(70, 50), (20, 25), (32, 32)]),  # grid, padding
])
def test_torch_preprocessing_matches_classifier(tmp_path, spec, sizes, one_torch_thread):
    """The differentiable path gives the logits Classifier.predict gives on the same 8-bit image.

    Tolerance on the fake margin: 1e-4 at native pixels, where both do the same arithmetic (measured: 0.0); 0.05 under a
    resize, where PIL rounds to 8 bits after each resampling pass and torch does not (measured on uniform-noise images,
    the worst case: 0.002 to 0.011 for these sizes, 0.015 for 640x480 -> 256/224, 0.09 for a 14x downscale 512 -> 36)."""
    clf = Classifier.from_dir(make_model_dir(tmp_path/'m', mean=(0.5,) * 3, std=(0.25,) * 3, **spec), device='cpu', backend='torch')
    rng = np.random.default_rng(0)
    for w, h in sizes:
        u8 = rng.integers(0, 256, (2, h, w, 3), np.uint8)
        with torch.no_grad(): m = fake_margin(clf.model, clf.config, torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255).numpy()
        ref = clf.predict(list(u8)).logit.to_numpy()
        np.testing.assert_allclose(m, ref, atol=0.05 if spec['resize'] != 'native' else 1e-4, err_msg=f'{w}x{h}')
    x, counts = torch_input(torch.rand(3, 3, 70, 50), clf.spec)
    assert len(x) == sum(counts) and counts == [counts[0]] * 3


@pytest.fixture(scope='module')
def trained(pipe, tmp_path_factory):
    """Two guides (brightness models, seeds 0 and 1), the independent judge (seed 7, noisier textures: other data),
    and the unguided and plainly guided images of `SEEDS` (8 steps, scale 0.1); computed once for the module."""
    n = torch.get_num_threads(); torch.set_num_threads(1)
    guides = [Classifier.from_dir(brightness_model(tmp_path_factory, seed=s), device='cpu', backend='torch') for s in (0, 1)]
    judge = judge_model(tmp_path_factory)
    check_independent(judge, [g.path for g in guides])
    guide = ClassifierGuidance(guides[0], scale=0.1)
    plain, guided = run_pipe(pipe, seeds=SEEDS), run_pipe(pipe, guide, seeds=SEEDS)
    torch.set_num_threads(n)
    return dict(guides=guides, judge=Classifier.from_dir(judge, device='cpu', backend='torch'), plain=plain, guided=guided, guide=guide)


@pytest.mark.slow
def test_guidance_raises_the_guide_far_more_than_an_independent_judge(trained):
    """Same prompts and seeds, with and without guidance. The guide's p(real) rises for every seed (measured: mean
    0.09 -> 0.62); an independently trained judge's rises too, for every seed, but about twelve times less (0.09 -> 0.14):
    most of the guide's rise is white-box optimisation of the guide itself. The images get slightly brighter (the
    concept both learnt; +0.0035 mean pixel value)."""
    g, j = trained['guides'][0], trained['judge']
    plain, guided = trained['plain'], trained['guided']
    g0, g1, j0, j1 = p_real(g, plain), p_real(g, guided), p_real(j, plain), p_real(j, guided)
    assert (g1 > g0).all() and (g1 - g0).mean() > 0.3, (g0, g1)
    assert (j1 > j0).all(), (j0, j1)
    assert (j1 - j0).mean() < 0.25 * (g1 - g0).mean(), (j0, j1, g0, g1)
    assert guided.mean() > plain.mean()
    guide = trained['guide']
    assert [h['step'] for h in guide.history] == list(range(8)) and guide.skipped == 0
    assert guide.history[0]['strength'] == pytest.approx(0.1) and guide.history[-1]['strength'] < guide.history[0]['strength']


@pytest.mark.slow
def test_ensemble_and_views_narrow_the_gap_between_guide_and_judge(pipe, trained, one_torch_thread):
    """An ensemble of 2 guides with 4 random views per step (crop, resize, straight-through JPEG), same scale: the
    first guide's p(real) rises less than under plain guidance for every seed and the judge's rises more for every
    seed (measured, mean over seeds: guide 0.62 -> 0.37, judge 0.14 -> 0.17, against 0.09 unguided). The defences
    make the nudge less specific to one network; they do not make the judge agree with the guide."""
    g, j = trained['guides'][0], trained['judge']
    defended = run_pipe(pipe, ClassifierGuidance(trained['guides'], scale=0.1, views=4, seed=0), seeds=SEEDS)
    assert (p_real(g, defended) < p_real(g, trained['guided'])).all()
    assert (p_real(j, defended) > p_real(j, trained['guided'])).all()
    assert (p_real(j, defended) > p_real(j, trained['plain'])).all()
    assert (p_real(g, defended) - p_real(j, defended)).mean() < 0.6 * (p_real(g, trained['guided']) - p_real(j, trained['guided'])).mean()


def test_no_strength_no_change_and_every_k(pipe, tiny_model_dir, one_torch_thread):
    clf = Classifier.from_dir(tiny_model_dir, device='cpu', backend='torch')
    plain = run_pipe(pipe, seeds=(7,), steps=6)
    np.testing.assert_array_equal(run_pipe(pipe, ClassifierGuidance(clf, scale=0.0), seeds=(7,), steps=6), plain)
    g = ClassifierGuidance(clf, scale=0.2, every=2, schedule='constant')
    assert not np.array_equal(run_pipe(pipe, g, seeds=(7,), steps=6), plain)
    assert [h['step'] for h in g.history] == [0, 2, 4] and {h['strength'] for h in g.history} == {0.2}


def test_gradient_same_with_checkpointing_and_micro_batches(pipe, tiny_model_dir, one_torch_thread):
    clf = Classifier.from_dir(tiny_model_dir, device='cpu', backend='torch')
    x0 = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    g, lp = guidance_grad(pipe.vae, clf.model, clf.config, x0)
    assert torch.isfinite(g).all() and g.abs().sum() > 0 and (lp < 0).all()
    pipe.vae.enable_gradient_checkpointing()
    try: g2, _ = guidance_grad(pipe.vae, clf.model, clf.config, x0, micro_bs=1)
    finally: pipe.vae.disable_gradient_checkpointing()
    torch.testing.assert_close(g2, g, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in clf.model.parameters()) and all(p.grad is None for p in pipe.vae.parameters())


def test_attach_restores_the_pipeline_even_after_an_error(pipe, tiny_model_dir):
    clf = Classifier.from_dir(tiny_model_dir, device='cpu', backend='torch')
    guide = ClassifierGuidance(clf, checkpointing=True)
    step = pipe.scheduler.step
    with pytest.raises(RuntimeError, match='boom'):
        with guide.attach(pipe) as extra:
            assert extra['callback_on_step_end'] is guide and pipe.vae.is_gradient_checkpointing
            assert not any(p.requires_grad for p in pipe.vae.parameters())
            raise RuntimeError('boom')
    assert 'step' not in vars(pipe.scheduler) and pipe.scheduler.step == step
    assert not pipe.vae.is_gradient_checkpointing
    assert all(p.requires_grad for p in pipe.vae.parameters()) and all(p.requires_grad for p in clf.model.parameters())


def test_non_finite_gradient_leaves_the_step_unguided(pipe, tiny_model_dir, monkeypatch, one_torch_thread):
    clf = Classifier.from_dir(tiny_model_dir, device='cpu', backend='torch')
    monkeypatch.setattr(guidance, 'objective_grad', lambda vae, objective, x0, *a: (torch.full_like(x0, float('nan')), torch.zeros(len(x0))))
    g = ClassifierGuidance(clf, scale=0.5)
    np.testing.assert_array_equal(run_pipe(pipe, g, seeds=(3,), steps=4), run_pipe(pipe, seeds=(3,), steps=4))
    assert g.skipped == 4 and g.history == []


def test_pipelines_it_cannot_guide(tiny_model_dir):
    "A clear error naming what is missing: a scheduler without pred_original_sample, no step callback, no VAE."
    p = tiny_sd_pipeline(scheduler='pndm')
    with pytest.raises(GuidanceError, match=r'PNDMScheduler.*pred_original_sample.*--scheduler ddim'): check_guidable(p)
    clf = Classifier.from_dir(tiny_model_dir, device='cpu', backend='torch')
    with pytest.raises(GuidanceError, match='pred_original_sample'):
        with ClassifierGuidance(clf).attach(p): pass

    class NoCallback:
        _callback_tensor_inputs = ['latents']
        def __call__(self, prompt, callback=None, callback_steps=1): pass
    with pytest.raises(GuidanceError, match='no step callback'): check_guidable(NoCallback())

    class NoVae:
        _callback_tensor_inputs = ['latents']
        vae = None
        def __call__(self, prompt, callback_on_step_end=None): pass
    with pytest.raises(GuidanceError, match='no VAE'): check_guidable(NoVae())


def test_bad_settings(tiny_model_dir):
    with pytest.raises(ValueError, match='schedule'): ClassifierGuidance(tiny_model_dir, schedule='exponential')
    with pytest.raises(ValueError, match='every'): ClassifierGuidance(tiny_model_dir, every=0)
    with pytest.raises(ValueError, match='scale'): ClassifierGuidance(tiny_model_dir, scale=-1)
    with pytest.raises(RealfakeError, match='not found'): ClassifierGuidance(tiny_model_dir.parent/'missing')
    with pytest.raises(ValueError, match='views'): ClassifierGuidance(tiny_model_dir, views=-1)
    with pytest.raises(ValueError, match='transforms'): ClassifierGuidance(tiny_model_dir, views=2, transforms=('blur',))
    with pytest.raises(ValueError, match='transforms'): ClassifierGuidance(tiny_model_dir, views=2, transforms='jpeg')
    with pytest.raises(ValueError, match='at least one guide'): ClassifierGuidance([])


def test_jpeg_is_straight_through_and_views_are_seeded():
    "Forward: PIL's real JPEG round trip (the pixels change); backward: the identity. Views: same seed, same views."
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = jpeg_st(x, [40, 90])
    assert (y - x).abs().mean() > 0.01 and (y - x)[0].abs().mean() > (y - x)[1].abs().mean()   # lower quality, larger change
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    a = random_view(x.detach(), torch.Generator().manual_seed(0))
    assert torch.equal(a, random_view(x.detach(), torch.Generator().manual_seed(0)))
    assert not torch.equal(a, random_view(x.detach(), torch.Generator().manual_seed(1))) and a.shape == x.shape
    for t in ('crop', 'resize', 'jpeg'):                  # each transform alone changes the image and passes a gradient
        xi = x.detach().clone().requires_grad_(True)
        v = random_view(xi, torch.Generator().manual_seed(0), transforms=(t,))
        v.pow(2).sum().backward()
        assert (v - xi).abs().mean() > 1e-3 and xi.grad.abs().sum() > 0, t


@pytest.fixture(scope='module')
def random_dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp('indep')
    a, b = make_model_dir(d/'a', seed=1), make_model_dir(d/'b', seed=2)
    shutil.copytree(a, d/'a_copy')
    return a, b, d/'a_copy'


@pytest.mark.parametrize('judge', ['same folder', 'copy elsewhere', 'loaded Classifier', 'in an ensemble'])
def test_a_guide_is_never_its_own_judge(random_dirs, judge):
    "The same weights (SHA-256 of the tensors) are refused, wherever they lie and however they were loaded."
    a, b, a_copy = random_dirs
    j = {'same folder': a, 'copy elsewhere': a_copy, 'in an ensemble': a,
         'loaded Classifier': Classifier.from_dir(a, device='cpu', backend='torch')}[judge]
    guides = [b, a] if judge == 'in an ensemble' else a
    with pytest.raises(GuidanceError, match='not independent'): check_independent(j, guides)


def test_another_network_is_labelled_not_proven_independent(random_dirs, tmp_path):
    a, b, _ = random_dirs
    rec = check_independent(b, [a])
    assert rec['same_config'] == [True] and 'only if trained on other data or with another seed' in rec['label']
    assert rec['judge_sha256'] == weights_sha256(Classifier.from_dir(b, device='cpu', backend='torch')) != rec['guide_sha256'][0]
    same_weights = make_model_dir(tmp_path/'c', seed=1, mean=(0.5,) * 3, std=(0.25,) * 3)   # a's weights, other preprocessing
    with pytest.raises(GuidanceError, match='not independent'): check_independent(same_weights, a)
    other = make_model_dir(tmp_path/'d', seed=4, mean=(0.5,) * 3, std=(0.25,) * 3)          # other weights and preprocessing
    assert check_independent(other, a)['same_config'] == [False] and 'differ from every guide' in check_independent(other, a)['label']
