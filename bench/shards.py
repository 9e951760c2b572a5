"""Bench S, web-scale scoring: `realfake_predict` on WebDataset tar shards (`realfake.predict.predict_shards`) against
the same images as a folder (`predict_to_csv`), same model, same workers (goal: shards >= 1.0x the folder's images/s);
then two CPU processes (`torchrun --nproc_per_node 2`) against one over the same shards (report the scaling); on a
GPU, when there is one, end-to-end images/s over shards against the model alone (goal >= 90%).

Images as img2dataset writes them by default: 256x256 JPEG (quality 90) + .json + .txt per sample, 100 samples per
shard. Two models: convnext_atto at 224 (the usual input; the network dominates on a CPU) and convnext_atto at 64 on
images resized to 72 (a cheap network, so that reading and decoding dominate and any cost of the shard path shows).

    .venv/bin/python bench/shards.py            # ~3 min on 2 cores (quiet machine)
    .venv/bin/python bench/shards.py --quick    # smoke run
"""
from __future__ import annotations
import io, json, os, re, subprocess, sys, tarfile, tempfile, time
from pathlib import Path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C
import numpy as np

PER_SHARD = 100

def make_data(d:Path, n:int) -> list[Path]:
    "n synthetic 256x256 JPEGs, written both as files (d/images) and as img2dataset-like shards (d/shards)."
    from PIL import Image
    (d/'images').mkdir(parents=True); (d/'shards').mkdir(parents=True)
    files = []
    for s in range(0, n, PER_SHARD):
        with tarfile.open(d/'shards'/f'{s // PER_SHARD:05d}.tar', 'w') as t:
            for i in range(s, min(n, s + PER_SHARD)):
                key = f'{s // PER_SHARD:05d}{i:04d}'
                b = io.BytesIO(); Image.fromarray(C.synth_image(256, 256, seed=i)).save(b, 'JPEG', quality=90)
                (d/'images'/f'{key}.jpg').write_bytes(b.getvalue()); files.append(d/'images'/f'{key}.jpg')
                for name, data in ((f'{key}.jpg', b.getvalue()), (f'{key}.json', json.dumps({'key': key}).encode()), (f'{key}.txt', b'a caption')):
                    ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
    return files

def shards_vs_folder(d:Path, model:Path, n:int, reps:int, workers:int|None, label:str, tag:str) -> list:
    "One row: predict_shards over the shards vs predict_to_csv over the folder, interleaved, fresh outputs each time."
    import pandas as pd
    from realfake.predict import Classifier, predict_to_csv, predict_shards, _default_workers
    clf = Classifier.from_dir(model, device='cpu', backend='torch')
    nw = _default_workers(clf) if workers is None else workers
    k = [0]
    def folder():
        k[0] += 1; s = predict_to_csv(d/'images', clf, out=d/f'{tag}f{k[0]}.csv', num_workers=nw, progress=False); assert s['scored'] == n, s
    def shards():
        k[0] += 1; s = predict_shards(d/'shards', clf, out=d/f'{tag}s{k[0]}', num_workers=nw, progress=False); assert s['images'] == n, s
    cpu = {}
    ts = C.interleaved({'folder': folder, 'shards': shards}, reps=reps, warmup=1, cpu=cpu)
    f = pd.read_csv(d/f'{tag}f{k[0] - 1}.csv'); f['key'] = f.path.map(lambda p: Path(p).stem)
    s = pd.concat([pd.read_parquet(p) for p in sorted((d/f'{tag}s{k[0]}').glob('*.parquet'))])
    dp = np.abs(f.set_index('key').prob_fake.reindex(s.key).to_numpy() - s.prob_fake.to_numpy()).max()
    assert dp < 1e-6, f'shards and files score differently: max |dprob| {dp}'
    a, b = n / C.med(ts['folder']), n / C.med(ts['shards'])
    cr = C.med(cpu['folder']) / C.med(cpu['shards'])
    return [label, f"{a:.1f} {C.spread(ts['folder'])}", f"{b:.1f} {C.spread(ts['shards'])}", f"**{b / a:.2f}x**",
            f">=1.0x {'met' if b / a >= 1 else 'NOT met'}", f"CPU-time ratio {cr:.2f}x; workers={nw}; max |dprob| {dp:.0e}"]

_RUN = ("import sys\nfrom fastcore.script import _run_cli\nfrom realfake.predict import realfake_predict as f\n"
        "sys.argv[0] = 'realfake_predict'\n_run_cli(f.__wrapped__, False)\n")

def processes(d:Path, model:Path, n:int, nproc:int, threads:int, out:str) -> tuple[float, float, float]:
    """`torchrun --nproc_per_node nproc` scoring all shards: (images / the slowest process's scoring seconds, as each
    process reports them; end-to-end wall seconds, process start-up included; CPU seconds of all processes)."""
    torchrun = str(Path(sys.executable).parent/'torchrun')
    (d/'run.py').write_text(_RUN)
    cmd = [torchrun, '--standalone', '--nproc_per_node', str(nproc), str(d/'run.py'), str(d/'shards'), '--model', str(model),
           '--out', str(d/out), '--workers', '0', '--device', 'cpu', '--no_progress']
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(C.ROOT))
    c = C.cpu_seconds(); t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - t, C.cpu_seconds() - c
    assert r.returncode == 0, r.stderr[-2000:]
    secs = [float(m[1]) for m in re.finditer(r'images in ([\d.]+) s', r.stdout)]
    assert len(secs) == nproc, r.stdout
    from realfake.shards import job_summary
    s = job_summary(d/out)
    assert s['images'] == n and not s['todo'], s
    return n / max(secs), wall, cpu

def gpu_rows(d:Path, model:Path, n:int) -> list:
    "On a GPU: end-to-end predict_shards images/s against the model alone on random input (bf16, channels_last)."
    import torch
    from realfake.predict import Classifier, predict_shards, _default_workers
    clf = Classifier.from_dir(model, device='cuda', backend='torch', bs=256, precision='bf16')
    x = torch.randn(256, 3, clf.spec.size, clf.spec.size)
    for _ in range(3): clf.logits(x)
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): clf.logits(x)
    torch.cuda.synchronize(); alone = 2560 / (time.perf_counter() - t)
    predict_shards(d/'shards', clf, out=d/'gpu_warm', bs=256, progress=False)
    t = time.perf_counter(); predict_shards(d/'shards', clf, out=d/'gpu', bs=256, progress=False); e2e = n / (time.perf_counter() - t)
    return [[f'GPU ({torch.cuda.get_device_name()}): predict_shards vs model alone (bf16, bs 256, workers={_default_workers(clf)})',
             f"{alone:.0f}", f"{e2e:.0f}", f"**{e2e / alone:.0%}**", f">=90% {'met' if e2e / alone >= 0.9 else 'NOT met'}", 'model alone: logits of random input, host->device copy included']]

def main():
    p = C.parser(__doc__.split('\n')[0], reps=3)
    p.add_argument('--n', type=int, default=3000, help='images of the @64 rows (default 3000; the @224 row uses 300)')
    p.add_argument('--threads', type=int, default=None, help='torch threads of the in-process rows (default: torch\'s)')
    args = p.parse_args()
    import torch
    if args.threads: torch.set_num_threads(args.threads)
    from PIL import Image; Image.init()
    import logging; logging.getLogger('realfake').setLevel(logging.WARNING)
    reps, n = (1, 200) if args.quick else (args.reps, args.n)
    n224 = min(n, 300)
    C.header('shards: realfake_predict on WebDataset tar shards vs a folder of the same images; 2 CPU processes vs 1')
    from realfake.modeldir import build_network, save_model_dir, ModelConfig
    from realfake.preprocess import Preprocess
    rows, info = [], []
    with tempfile.TemporaryDirectory(prefix='rf_bench_shards_') as d:
        d = Path(d)
        make_data(d/'small', n224); make_data(d/'big', n)
        torch.manual_seed(0)
        m224 = save_model_dir(build_network('convnext_atto'), ModelConfig('convnext_atto', preprocess=Preprocess(size=224, resize=256)), d/'m224')
        m64 = save_model_dir(build_network('convnext_atto'), ModelConfig('convnext_atto', preprocess=Preprocess(size=64, resize=72)), d/'m64')
        rows.append(shards_vs_folder(d/'small', m224, n224, reps, None, f'convnext_atto @224, {n224} JPEG 256x256 in {-(-n224 // PER_SHARD)} shards', 'a'))
        rows.append(shards_vs_folder(d/'big', m64, n, reps, None, f'convnext_atto @64 (resize 72), {n} images: reading + decoding dominate', 'b'))
        if (os.cpu_count() or 1) >= 2:
            rows.append(shards_vs_folder(d/'big', m64, n, reps, 2, 'convnext_atto @64, 2 decoding workers', 'c'))
        runs = {1: [], 2: []}
        for i in range(reps):                      # alternating, fresh outputs each time
            for k in (1, 2): runs[k].append(processes(d/'big', m64, n, k, max(1, (os.cpu_count() or 2) // k), f'p{k}_{i}'))
        (s1, w1, c1), (s2, w2, c2) = ([C.med([r[j] for r in runs[k]]) for j in range(3)] for k in (1, 2))
        rows.append([f'torchrun: 2 processes ({max(1, (os.cpu_count() or 2) // 2)} thread each) vs 1 ({os.cpu_count()} threads), convnext_atto @64',
                     f"{s1:.1f}", f"{s2:.1f}", f"**{s2 / s1:.2f}x**", 'report',
                     f"img/s while scoring (images / slowest process's scoring time); end to end with start-up: {n / w1:.1f} vs "
                     f"{n / w2:.1f} img/s ({w2 and w1 / w2:.2f}x); CPU s {c1:.0f} vs {c2:.0f}"])
        if torch.cuda.is_available(): rows += gpu_rows(d/'big', m224, n)
        else: info.append('GPU row: not run (no CUDA device here); the GPU path (LOCAL_RANK device, pinned memory, bf16) is unmeasured.')
    print(C.table(rows, ['case', 'folder / 1 process img/s', 'shards / 2 processes img/s', 'ratio', 'goal', 'notes']))
    print(f"\n{reps} interleaved repetitions after a warm-up run; img/s = images / median wall time; each run writes fresh outputs.")
    for s in info: print(s)
    if C.load_note(): print(C.load_note())

if __name__ == '__main__': main()
