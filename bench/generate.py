"""Bench 6, generation on CPU with a tiny random Stable Diffusion pipeline (built from config, 32x32 images, 4 DDIM steps):
`realfake.generate.generate` (batches of 8, atomic PNG writes, fsynced progress) against the obvious loop (one pipeline
call per image, `image.save`), same prompts and seeds; and the cost of classifier guidance (a random convnext_atto guide,
every step) against the same run unguided. The tiny pipeline measures the harness, not a real model: with Stable
Diffusion the UNet dominates, and these ratios say how much the bookkeeping and batching add or save around it.

    .venv/bin/python bench/generate.py            # ~1 min on 2 cores (quiet machine)
    .venv/bin/python bench/generate.py --quick    # smoke run
"""
from __future__ import annotations
import os, sys, tempfile, shutil
from pathlib import Path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C
import numpy as np

PROMPTS = ['a photo of a cat on a sofa', 'a red car in the rain', 'a bowl of fruit', 'a mountain lake at dawn']
STEPS = 4

def naive_loop(pipe, items, out: Path):
    "What a user writes first: one call per image with its own generator, then PIL's save."
    import torch
    out.mkdir(parents=True, exist_ok=True)
    for it in items:
        im = pipe(it.prompt, generator=torch.Generator().manual_seed(it.seed), num_inference_steps=STEPS).images[0]
        im.save(out/f'{it.group}_{it.i:05d}.png')

def main():
    p = C.parser(__doc__.split('\n')[0], reps=3)
    args = p.parse_args()
    import torch
    torch.set_num_threads(1)          # tiny models: a second thread only adds contention
    reps, n = (1, 2) if args.quick else (args.reps, 8)
    C.header('generate: realfake.generate (bs 8, atomic writes, progress) vs a per-image loop; guidance cost', args)
    from realfake.guidance import tiny_sd_pipeline
    from realfake.generate import generate, plan
    from realfake.modeldir import ModelConfig, build_network, save_model_dir
    from realfake.preprocess import Preprocess
    pipe = tiny_sd_pipeline()
    items = plan(PROMPTS, n)
    k = len(items)
    with tempfile.TemporaryDirectory(prefix='rf_bench_gen_') as d:
        d = Path(d)
        torch.manual_seed(0)
        guide = save_model_dir(build_network('convnext_atto'), ModelConfig('convnext_atto', preprocess=Preprocess(size=32, resize=32)), d/'guide')
        runs = [0]
        def fresh():
            runs[0] += 1
            return d/f'run{runs[0]}'
        def rf(): generate(pipe, PROMPTS, fresh(), n=n, bs=8, steps=STEPS, device='cpu', progress=False)
        def naive(): naive_loop(pipe, items, fresh())
        def rf_guided():
            o = fresh(); generate(pipe, PROMPTS, o, n=n, bs=8, steps=STEPS, device='cpu', progress=False, guide=guide, judge=None)
        def rf_guided_only():   # the guided images alone: unguided ones reused from a finished run
            o = fresh(); shutil.copytree(d/'plain', o); generate(pipe, PROMPTS, o, n=n, bs=8, steps=STEPS, device='cpu', progress=False, guide=guide)
        generate(pipe, PROMPTS, d/'plain', n=n, bs=8, steps=STEPS, device='cpu', progress=False)
        cpu = {}
        ts = C.interleaved({'naive': naive, 'realfake': rf, 'guided_only': rf_guided_only}, reps=reps, warmup=1, cpu=cpu)
        a, b, g = k / C.med(ts['naive']), k / C.med(ts['realfake']), k / C.med(ts['guided_only'])
        ref = np.asarray(__import__('PIL.Image', fromlist=['Image']).open(d/'plain'/items[5].rel()), np.int16)
        one = np.asarray(pipe(items[5].prompt, generator=torch.Generator().manual_seed(items[5].seed), num_inference_steps=STEPS).images[0], np.int16)
        diff = int(np.abs(ref - one).max())
        assert diff <= 1, f"batched and single images differ by {diff} levels"
        rows = [[f'generate bs=8 vs per-image loop ({k} images, {STEPS} steps, 32x32)', f'{a:.1f} {C.spread(ts["naive"])}',
                 f'{b:.1f} {C.spread(ts["realfake"])}', f'**{b / a:.2f}x**',
                 f'CPU-time ratio {C.med(cpu["naive"]) / C.med(cpu["realfake"]):.2f}x; same seeds, max pixel diff {diff}'],
                ['guided images (guide every step, convnext_atto @32) vs unguided generate', f'{b:.1f}', f'{g:.1f} {C.spread(ts["guided_only"])}',
                 f'{g / b:.2f}x', 'guidance cost per image: decode + classifier forward/backward per step']]
    print(C.table(rows, ['case', 'baseline img/s', 'realfake img/s', 'ratio', 'notes']))
    print(f"\n{reps} interleaved repetitions after a warm-up; img/s = images / median wall time.")
    if C.load_note(): print(C.load_note())

if __name__ == '__main__': main()
