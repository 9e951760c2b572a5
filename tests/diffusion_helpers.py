"""Helpers for the generation and guidance tests: realfake models whose p(real) follows image brightness.

A random realfake network makes guidance climb an arbitrary function; a model that has learnt a property of the
pixels (here: bright = real, dark = fake) lets a test check that guidance moves the *images* (they get brighter),
and measure how far an independently trained judge follows the guide (`judge_model`, `defence_table`)."""
from __future__ import annotations
import numpy as np
import torch
import torch.nn.functional as F
from realfake.modeldir import ModelConfig, build_network, save_model_dir
from realfake.preprocess import Preprocess

__all__ = ['brightness_model_dir', 'brightness_model', 'SPEC', 'judge_model', 'run_pipe', 'p_real', 'DEFENCES', 'defence_table']

SPEC = Preprocess(size=32, resize=32, mean=(0.5,) * 3, std=(0.25,) * 3)


def _textures(rng, n: int, noise: float) -> np.ndarray:
    "Zero-mean textures: coarse blobs (4 and 8 pixels) and pixel noise of random strength, in colour."
    out = np.zeros((n, 3, 32, 32))
    for cell in (8, 4, 1):
        g = rng.normal(size=(n, 3, 32 // cell, 32 // cell)) * rng.uniform(0, noise, (n, 1, 1, 1))
        out += np.repeat(np.repeat(g, cell, 2), cell, 3)
    return out - out.mean((1, 2, 3), keepdims=True)


def brightness_model_dir(dest, seed: int = 0, steps: int = 40, noise: float = 0.15, bs: int = 16, width: float = 0.1):
    """Train a convnext_atto for `steps` steps on noisy flat images of brightness b, with the soft target
    p(real) = sigmoid((b - 0.5) / width), so that its p(real) rises smoothly with brightness; save it as `dest`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_network('convnext_atto').train()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for _ in range(steps):
        b = rng.uniform(0.1, 0.9, bs)
        x = _textures(rng, bs, noise)
        x = (torch.tensor(np.clip(b[:, None, None, None] + x, 0, 1), dtype=torch.float32) - 0.5) / 0.25
        p_real = torch.sigmoid(torch.tensor((b - 0.5) / width, dtype=torch.float32))
        loss = F.cross_entropy(net(x), torch.stack([p_real, 1 - p_real], 1))          # index 1 = fake
        opt.zero_grad(); loss.backward(); opt.step()
    return save_model_dir(net.eval(), ModelConfig('convnext_atto', preprocess=SPEC), dest)


_CACHE = {}


def brightness_model(tmp_path_factory, seed: int = 0):
    "`brightness_model_dir` trained once per test session (per seed), in a pytest temporary folder."
    if seed not in _CACHE: _CACHE[seed] = brightness_model_dir(tmp_path_factory.mktemp(f'brightness{seed}')/'model', seed=seed)
    return _CACHE[seed]


def judge_model(tmp_path_factory):
    """The tests' independent judge: a `brightness_model_dir` trained with another seed (7) on other data (textures of
    twice the noise), once per session; a different network from every guide (`check_independent` passes)."""
    if 'judge' not in _CACHE:
        _CACHE['judge'] = brightness_model_dir(tmp_path_factory.mktemp('judge')/'model', seed=7, noise=0.3)
    return _CACHE['judge']


def run_pipe(pipe, guide=None, seeds=(0, 1, 2, 3, 4, 5), steps: int = 8, prompt: str = 'a photo of a street'):
    "Images (N x H x W x 3 in [0, 1]) of `pipe` for `seeds`, under `guide` (a ClassifierGuidance) if given."
    kw = dict(prompt=[prompt] * len(seeds), num_inference_steps=steps, output_type='np',
              generator=[torch.Generator().manual_seed(s) for s in seeds])
    if guide is None: return pipe(**kw).images
    with guide.attach(pipe) as extra: return pipe(**kw, **extra).images


def p_real(clf, images) -> np.ndarray:
    "p(real) of each image by the Classifier `clf`, through its 8-bit path (as saved files would be scored)."
    return 1 - clf.predict(list((images * 255).round().astype(np.uint8))).prob_fake.to_numpy()


DEFENCES = {'none (plain guidance)': {}, 'EOT crop, 4 views': dict(views=4, transforms=('crop',)),
            'EOT resize, 4 views': dict(views=4, transforms=('resize',)), 'EOT JPEG (straight-through), 4 views': dict(views=4, transforms=('jpeg',)),
            'EOT crop+resize+JPEG, 4 views': dict(views=4), 'ensemble of 2 guides': dict(ensemble=True),
            'ensemble of 2 + EOT crop+resize+JPEG, 4 views': dict(views=4, ensemble=True)}


def defence_table(root, scale: float = 0.1, seeds=tuple(range(8)), steps: int = 8) -> str:
    """The notebook's table: for each defence, mean p(real) of the guided images of the tiny pipeline (and of the
    unguided ones) by the independent judge (seed 7, other data), with the share of seeds it rose for, by the guide
    (brightness model, seed 0; an ensemble adds seed 1), by a random network, and the change of mean pixel value."""
    from pathlib import Path
    from realfake.guidance import ClassifierGuidance, tiny_sd_pipeline, check_independent
    from realfake.predict import Classifier
    from helpers import make_model_dir
    root = Path(root)
    guides = [brightness_model_dir(root/f'guide{s}', seed=s) for s in (0, 1)]
    judge = brightness_model_dir(root/'judge', seed=7, noise=0.3)
    check_independent(judge, guides)
    load = lambda d: Classifier.from_dir(d, device='cpu', backend='torch')
    clfs, jclf = [load(g) for g in guides], load(judge)
    rclf = load(make_model_dir(root/'random', seed=3, mean=(0.5,) * 3, std=(0.25,) * 3))
    pipe = tiny_sd_pipeline()
    plain = run_pipe(pipe, seeds=seeds, steps=steps)
    j0 = p_real(jclf, plain)
    rows = ['| defence | judge p(real) | judge rose for | guide p(real) | random network p(real) | mean pixel change |',
            '|---|---|---|---|---|---|',
            f'| unguided | {j0.mean():.3f} | | {p_real(clfs[0], plain).mean():.3f} | {p_real(rclf, plain).mean():.3f} | |']
    for name, opt in DEFENCES.items():
        opt = dict(opt); ens = opt.pop('ensemble', False)
        x = run_pipe(pipe, ClassifierGuidance(clfs if ens else clfs[0], scale=scale, **opt), seeds=seeds, steps=steps)
        j = p_real(jclf, x)
        rows.append(f'| {name} | {j.mean():.3f} | {(j > j0).sum()}/{len(j)} | {p_real(clfs[0], x).mean():.3f} | '
                    f'{p_real(rclf, x).mean():.3f} | {x.mean() - plain.mean():+.4f} |')
    return '\n'.join(rows)


if __name__ == '__main__':     # PYTHONPATH=.:tests python tests/diffusion_helpers.py: the table in nbs/20_guidance.ipynb
    import sys, tempfile
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d: print(defence_table(d, **({'scale': float(sys.argv[1])} if len(sys.argv) > 1 else {})))
