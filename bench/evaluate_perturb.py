"""Bench 6, the perturbation grid: `realfake_evaluate --perturb` with 12 perturbations (one decode per image serves
all of them) against 12 separate clean `realfake_evaluate` runs on the same 1000 images. Goal: <= 0.5x their time.
Reports images/s.

Also, in process (no start-up, no report; a subset of the images), what the grid's one decode saves:
`realfake.evaluate.score_images` with the 12 perturbations against 12 passes of `Classifier.predict(transform=...)`
(each pass decodes every file again, perturbs it and decodes the result: how the audit worked before), and against
12 clean passes of `score_images` (the forward passes alone: the floor).

Images: 500 "real" JPEGs 512x384 (quality 90) and 500 "fake" PNGs 512x512 in the generators layout; model: a
random-weight convnext_atto with the demo preset's preprocessing (native pixels, up to 4 crops of 64). Both sides
run with the same thread count (`--threads`, default 1: on a 2-core machine shared with other jobs two threads per
process are slower, not faster) and the same decoding workers (`--workers`, passed as `--num_workers`; default: each
command's own, which on a 2-core CPU is none for a clean run and one for the grid).

    .venv/bin/python bench/evaluate_perturb.py            # ~15 min on 2 cores
    .venv/bin/python bench/evaluate_perturb.py --workers 1  # one decoding worker beside the one torch thread, both sides
    .venv/bin/python bench/evaluate_perturb.py --quick    # smoke run: 40 images, numbers meaningless
"""
from __future__ import annotations
import os, sys, time, subprocess, tempfile
from pathlib import Path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C
import numpy as np

PERTURB = ['jpeg_q95', 'jpeg_q75', 'jpeg_q50', 'jpeg_q30', 'webp_q75', 'down_0.5', 'down_0.75', 'up_1.5',
           'blur_1', 'blur_2', 'crop_0.5', 'noise_5']

def cli(args, threads:int) -> float:
    "Wall seconds of one `realfake_evaluate` process (this checkout first on the path)."
    exe = Path(sys.executable).parent/'realfake_evaluate'
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-c', 'from realfake.evaluate import realfake_evaluate as f; f()']
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(C.ROOT), os.environ.get('PYTHONPATH', '')]), MPLBACKEND='Agg',
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TQDM_DISABLE='1')
    t = time.perf_counter()
    r = subprocess.run(cmd + [str(a) for a in args] + ['--no_progress'], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if r.returncode: sys.exit(f"realfake_evaluate failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return dt

def make_data(d:Path, n:int) -> Path:
    root = d/'data'
    C.make_image_set(root/'natural', [('real', 512, 384, '.jpg', n // 2)])
    C.make_image_set(root/'gen', [('fake', 512, 512, '.png', n - n // 2)], seed=1)
    return root

def make_model(d:Path) -> Path:
    import torch
    from realfake.modeldir import build_network, save_model_dir, ModelConfig
    from realfake.train import PRESETS
    torch.manual_seed(0)
    return save_model_dir(build_network('convnext_atto'), ModelConfig('convnext_atto', preprocess=PRESETS['demo'].spec), d/'model')

def bench_cli(data, model, d:Path, n:int, reps:int, threads:int, workers:int|None=None) -> list[list]:
    "The goal: one --perturb run against 12 clean runs, each a separate process writing its report."
    import pandas as pd
    grid_t, clean_t = [], []
    w = [] if workers is None else ['--num_workers', workers]
    for r in range(reps):
        grid_t.append(cli([data, '--model', model, '--out', d/f'grid{r}', '--perturb', ','.join(PERTURB), *w], threads))
        clean_t.append(sum(cli([data, '--model', model, '--out', d/f'clean{r}_{k}', *w], threads) for k in range(len(PERTURB))))
    g, c = pd.read_csv(d/'grid0'/'perturb_predictions.csv'), pd.read_csv(d/'clean0_0'/'predictions.csv')
    dprob = np.abs(g['clean'].to_numpy() - c['prob_fake'].to_numpy()).max()
    assert dprob < 1e-4, f"the grid's clean scores differ from a clean run's by {dprob}"
    assert list(g.columns[4:]) == PERTURB
    gm, cm = C.med(grid_t), C.med(clean_t)
    how = 'default workers' if workers is None else f'--num_workers {workers}'
    return [[f'`realfake_evaluate --perturb` (12) vs 12 clean `realfake_evaluate` runs, {n} images, processes, {how}',
             f"{cm:.1f} s ({n * 12 / cm:.1f} img-evals/s)", f"{gm:.1f} s ({n / gm:.1f} img/s, {n * 13 / gm:.1f} img-evals/s)",
             f"**{gm / cm:.2f}x**", f"<= 0.5x {'met' if gm / cm <= 0.5 else 'NOT met'}", f"max abs dprob clean vs grid {dprob:.1e}"]]

def bench_inprocess(paths, fake, model, reps:int, workers:int|None=None) -> list[list]:
    "Scoring alone: the one-decode grid against a decode per perturbation, and against 12 clean passes."
    from realfake.predict import Classifier
    from realfake.images import load_image
    from realfake.perturb import PERTURBATIONS, perturb_rng
    from realfake.evaluate import score_images
    clf = Classifier.from_dir(model, backend='torch', device='cpu')
    perts = [PERTURBATIONS[p] for p in PERTURB]
    n = len(paths)
    def separate():
        for p in perts: clf.predict(paths, transform=lambda s, p=p: p(load_image(s), perturb_rng(0, p.name, s)))
    fns = {'grid': lambda: score_images(clf, paths, fake, perts, num_workers=workers),     # None: each side's default
           'separate': separate,
           'clean x12': lambda: [score_images(clf, paths, fake, [], num_workers=workers) for _ in perts]}
    score_images(clf, paths[:4], fake[:4], perts, num_workers=0)          # warm-up (lazy imports, kernels)
    cpu = {}
    ts = C.interleaved(fns, reps=reps, warmup=0, cpu=cpu)
    g = C.med(ts['grid'])
    rows = []
    for k, what in (('separate', '12 x `Classifier.predict(transform=perturbation)` (a decode per perturbation)'),
                    ('clean x12', '12 clean passes of `score_images` (forward passes of the clean images only)')):
        b = C.med(ts[k])
        rows.append([f'in process, {n} images: one-decode grid vs {what}', f"{b:.1f} s ({n * 12 / b:.1f} img-evals/s)",
                     f"{g:.1f} s ({n * 13 / g:.1f} img-evals/s)", f"**{g / b:.2f}x**", '-',
                     f"CPU-time ratio {C.med(cpu['grid']) / C.med(cpu[k]):.2f}x"])
    return rows

def main():
    p = C.parser(__doc__.split('\n')[0], reps=1)
    p.add_argument('--n', type=int, default=1000, help='images (half real JPEG, half fake PNG; default 1000)')
    p.add_argument('--n_inprocess', type=int, default=200, help='images for the in-process part (default 200)')
    p.add_argument('--threads', type=int, default=1, help='torch threads on both sides (default 1)')
    p.add_argument('--workers', type=int, default=None, help="decoding workers on both sides (default: realfake_evaluate's own)")
    args = p.parse_args()
    n, n_in = (40, 16) if args.quick else (args.n, args.n_inprocess)
    os.environ['OMP_NUM_THREADS'] = str(args.threads)
    import torch; torch.set_num_threads(args.threads)
    from PIL import Image; Image.init()
    C.header(f'evaluate: the perturbation grid, {len(PERTURB)} perturbations, convnext_atto (demo preprocessing), CPU')
    if not C.module_available('evaluate'): sys.exit('needs realfake.evaluate')
    with tempfile.TemporaryDirectory(prefix='rf_bench_eval_') as d:
        d = Path(d)
        data, model = make_data(d, n), make_model(d)
        paths = sorted(str(q) for q in data.rglob('*.*g'))
        sub = paths[::max(1, len(paths) // n_in)][:n_in]
        rows = bench_cli(data, model, d, n, args.reps, args.threads, args.workers)
        rows += bench_inprocess(sub, np.array(['/gen/' in q for q in sub]), model, args.reps, args.workers)
    print(C.table(rows, ['case', 'baseline', 'realfake', 'time ratio', 'goal', 'notes']))
    print(f"\nperturbations: {', '.join(PERTURB)}; img-evals = images x perturbations scored (13 per image for the grid: clean + 12)")
    note = C.load_note()
    if note: print(note)

if __name__ == '__main__':
    main()
