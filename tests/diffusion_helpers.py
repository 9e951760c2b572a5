"""Helpers for the generation and guidance tests: realfake models whose p(real) follows image brightness.

A random realfake network makes guidance climb an arbitrary function; a model that has learnt a property of the
pixels (here: bright = real, dark = fake) lets a test check that guidance moves the *images* (they get brighter),
and that an independently trained judge agrees."""
from __future__ import annotations
import numpy as np
import torch
import torch.nn.functional as F
from realfake.modeldir import ModelConfig, build_network, save_model_dir
from realfake.preprocess import Preprocess

__all__ = ['brightness_model_dir', 'brightness_model', 'SPEC']

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
