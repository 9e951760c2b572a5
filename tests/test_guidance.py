"Classifier guidance (realfake.guidance) with a tiny random Stable Diffusion pipeline built from config: offline, seconds each."
import numpy as np
import pytest
import torch
pytest.importorskip('diffusers')
pytest.importorskip('transformers')
import realfake.guidance as guidance
from realfake.guidance import (ClassifierGuidance, GuidanceError, check_guidable, tiny_sd_pipeline, fake_margin, guidance_grad,
                               torch_input)
from realfake.predict import Classifier
from realfake.core import RealfakeError
from helpers import make_model_dir
from diffusion_helpers import brightness_model

SEEDS = (0, 1, 2, 3, 4, 5)


@pytest.fixture(scope='module')
def pipe():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield tiny_sd_pipeline()
    torch.set_num_threads(n)


def _run(pipe, guide=None, seeds=SEEDS, steps=8):
    kw = dict(prompt=['a photo of a street'] * len(seeds), num_inference_steps=steps, output_type='np',
              generator=[torch.Generator().manual_seed(s) for s in seeds])
    if guide is None: return pipe(**kw).images
    with guide.attach(pipe) as extra: return pipe(**kw, **extra).images


def _p_real(clf, images):
    return 1 - clf.predict(list((images * 255).round().astype(np.uint8))).prob_fake.to_numpy()


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


@pytest.mark.slow
def test_guidance_raises_the_guides_p_real(pipe, tmp_path_factory, one_torch_thread):
    """Same prompts and seeds, with and without guidance: the guide's p(real) rises for every seed, and, since the guide
    learnt "bright = real", the images themselves get brighter (a change in pixels, not only in the guide's opinion)."""
    clf = Classifier.from_dir(brightness_model(tmp_path_factory), device='cpu', backend='torch')
    guide = ClassifierGuidance(clf, scale=0.1)
    plain, guided = _run(pipe), _run(pipe, guide)
    before, after = _p_real(clf, plain), _p_real(clf, guided)
    assert (after > before).all(), (before, after)
    assert (after - before).mean() > 0.2, (before, after)
    assert (guided.mean((1, 2, 3)) > plain.mean((1, 2, 3))).all()
    assert [h['step'] for h in guide.history] == list(range(8)) and guide.skipped == 0
    assert guide.history[0]['strength'] == pytest.approx(0.1) and guide.history[-1]['strength'] < guide.history[0]['strength']


def test_no_strength_no_change_and_every_k(pipe, tiny_model_dir, one_torch_thread):
    clf = Classifier.from_dir(tiny_model_dir, device='cpu', backend='torch')
    plain = _run(pipe, seeds=(7,), steps=6)
    np.testing.assert_array_equal(_run(pipe, ClassifierGuidance(clf, scale=0.0), seeds=(7,), steps=6), plain)
    g = ClassifierGuidance(clf, scale=0.2, every=2, schedule='constant')
    assert not np.array_equal(_run(pipe, g, seeds=(7,), steps=6), plain)
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
    monkeypatch.setattr(guidance, 'guidance_grad', lambda vae, net, cfg, x0, *a: (torch.full_like(x0, float('nan')), torch.zeros(len(x0))))
    g = ClassifierGuidance(clf, scale=0.5)
    np.testing.assert_array_equal(_run(pipe, g, seeds=(3,), steps=4), _run(pipe, seeds=(3,), steps=4))
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
