"""Bench 4, inference on CPU: `realfake_predict` on a folder (`realfake.predict.predict_to_csv`, the function behind the
CLI, with the model loaded once) against a naive loop (open each image with PIL, torchvision Resize(256) +
CenterCrop(224) + ToTensor + Normalize, one forward per image under `no_grad`), convnext_tiny at 224,
pretrained=False (random weights, same weights on both sides). Goal: >= 2x images/s.
Also: onnxruntime against PyTorch on the same model (model-only at batch 32, and end to end through `Classifier`),
and the floor: the forward pass's FLOPs against this CPU's measured matmul rate; and native-pixel scoring (one 224 crop
at the image's own pixels, and a grid of up to 9 crops) against the resize policy, same model, same images.

    .venv/bin/python bench/inference.py            # ~1.5 min on 2 cores (quiet machine)
    .venv/bin/python bench/inference.py --quick    # smoke run
    .venv/bin/python bench/inference.py --backends [--quick]   # CPU backends side by side: torch fp32/bf16, onnxruntime
        # tuned, OpenVINO, int8; 1 and 2 threads, batch 1 and 32, resize and native; the app's latency; demo int8 agreement
"""
from __future__ import annotations
import os, sys, tempfile
from pathlib import Path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C
import numpy as np

SETS = [('jpeg_1500x1000', 1500, 1000, '.jpg', 24), ('jpeg_500x375', 500, 375, '.jpg', 24), ('png_512x512', 512, 512, '.png', 24)]
ARCH, BS = 'convnext_tiny', 32

def naive_loop(paths, model, mean, std):
    "What a user writes first: PIL open, torchvision transforms, one forward per image."
    import torch
    from PIL import Image
    import torchvision.transforms as T
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)])
    out = []
    with torch.no_grad():
        for p in paths:
            x = tf(Image.open(p).convert('RGB'))[None]
            out.append(torch.softmax(model(x), 1)[0, 1].item())
    return np.array(out)

def _backends_parser():
    p = C.parser(__doc__.split('\n')[0], reps=2)
    p.add_argument('--backends', action='store_true', help='the CPU-backend grid (issue 24) instead of the realfake_predict rows')
    p.add_argument('--n_per_set', type=int, default=4, help='images of each kind (1500x1000 JPEG, 500x375 JPEG, 512 PNG)')
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2], help='rows: thread counts')
    p.add_argument('--bs', type=int, nargs='+', default=[1, 32], help='rows: batch sizes')
    p.add_argument('--demo', default=str(C.ROOT / 'runs/demo/model'), help='the demo model (python train.py) for the int8 agreement rows')
    p.add_argument('--demo_metadata', default=str(C.ROOT / 'runs/demo/demo_data/metadata.jsonl'))
    return p

def main():
    p = C.parser(__doc__.split('\n')[0], reps=3)
    args = p.parse_args()
    from PIL import Image; Image.init()   # see decode.py
    import torch, pandas as pd
    reps = 1 if args.quick else args.reps
    sets = [(n, w, h, e, 3 if args.quick else k) for n, w, h, e, k in SETS]
    C.header(f'inference: realfake_predict (predict_to_csv) vs naive per-image loop, {ARCH} @224, CPU')
    if not (C.module_available('modeldir') and C.module_available('predict')): sys.exit('needs realfake.modeldir and realfake.predict')
    from realfake.modeldir import build_network, save_model_dir, load_model_dir, ModelConfig
    from realfake.preprocess import Preprocess
    from realfake.predict import Classifier, predict_to_csv
    rows, info = [], []
    with tempfile.TemporaryDirectory(prefix='rf_bench_inf_') as d:
        d = Path(d)
        paths = [q for v in C.make_image_set(d / 'images', sets).values() for q in v]
        n = len(paths)
        torch.manual_seed(0)
        cfg = ModelConfig(arch=ARCH, preprocess=Preprocess(size=224, resize=256))
        save_model_dir(build_network(ARCH), cfg, d / 'model')
        model, cfg = load_model_dir(d / 'model')
        mean, std = list(cfg.preprocess.mean), list(cfg.preprocess.std)
        clf = Classifier.from_dir(d / 'model', device='cpu', backend='torch', bs=BS)
        clf16 = Classifier.from_dir(d / 'model', device='cpu', backend='torch', bs=BS, precision='bf16')   # realfake_predict --precision bf16
        k = [0]
        def rf16():
            k[0] += 1
            return predict_to_csv(d / 'images', clf16, out=d / f'pred{k[0]}.csv', bs=BS, progress=False)
        def rf():
            k[0] += 1
            return predict_to_csv(d / 'images', clf, out=d / f'pred{k[0]}.csv', bs=BS, progress=False)
        res, cpu = {}, {}
        # warm-up on a few images (lazy imports, oneDNN kernels), then timed full runs alternating
        naive_loop(paths[::12], model, mean, std); predict_to_csv(paths[::12], clf, out=d / 'warm.csv', bs=BS, progress=False); predict_to_csv(paths[::12], clf16, out=d / 'warm16.csv', bs=BS, progress=False)
        ts = C.interleaved({'naive': lambda: res.__setitem__('naive', naive_loop(paths, model, mean, std)),
                            'realfake': lambda: res.__setitem__('realfake', rf()),
                            'bf16': rf16}, reps=reps, warmup=0, cpu=cpu)
        s = res['realfake']
        assert s['scored'] == n and s['errors'] == 0, s
        df = pd.read_csv(d / f'pred{k[0]}.csv')
        got = df.set_index('path').prob_fake.reindex([os.path.abspath(q) for q in paths]).to_numpy()
        dprob = np.abs(got - res['naive'])
        assert np.isfinite(got).all() and dprob.max() < 0.05, f"predictions differ too much: max |dprob| {dprob.max():.4f}"
        nv, rfm = n / C.med(ts['naive']), n / C.med(ts['realfake'])
        cpu_ratio = C.med(cpu['naive']) / C.med(cpu['realfake'])
        from realfake.predict import _default_workers
        nw = _default_workers(clf) if n >= 2 * BS else 0
        rows.append([f'realfake_predict vs naive loop ({n} images: {", ".join(f"{k}x{m[0]}" for k, m in [(v[-1], v) for v in sets])})',
                     f"{nv:.1f} {C.spread(ts['naive'])}", f"{rfm:.1f} {C.spread(ts['realfake'])}", f"**{rfm / nv:.2f}x**",
                     f">=2x {'met' if rfm / nv >= 2 else 'NOT met'}",
                     f"CPU-time ratio {cpu_ratio:.2f}x; max abs dprob {dprob.max():.1e} (workers={nw}, bs={BS})"])

        b16 = n / C.med(ts['bf16'])
        rows.append([f'realfake_predict --precision bf16 vs naive loop (bf16 available: {clf16.precision == "bf16"})', f"{nv:.1f}", f"{b16:.1f} {C.spread(ts['bf16'])}",
                     f"**{b16 / nv:.2f}x**", f">=2x {'met' if b16 / nv >= 2 else 'NOT met'}", 'opt-in: bf16 autocast changes the logits slightly'])

        # ---- model only: torch fp32 (channels_last, inference_mode) vs onnxruntime, batch 32; plus the floor
        x = torch.randn(BS, 3, 224, 224)
        import copy
        m_cl = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
        def torch_fwd():
            with torch.inference_mode(): return m_cl(x.contiguous(memory_format=torch.channels_last))
        def torch_fwd_bs1():     # exactly what the naive loop runs: contiguous (NCHW) model, no_grad, one image
            with torch.no_grad():
                for i in range(8): model(x[i:i + 1])
        def torch_bf16():
            with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16): return m_cl(x.contiguous(memory_format=torch.channels_last))
        fns = {'torch': torch_fwd, 'torch_bs1x8': torch_fwd_bs1, 'torch_bf16': torch_bf16}
        sess = None
        if C.module_available('export'):
            from realfake import export as E
            try:
                exp = getattr(E, 'export_onnx', None) or getattr(E, 'export_model_dir', None)
                if exp is None: raise AttributeError(f"no export_onnx in realfake.export (has {[a for a in dir(E) if not a.startswith('_')]})")
                exp(d / 'model')
                clf_onnx = Classifier.from_dir(d / 'model', device='cpu', backend='onnx', bs=BS)
                sess = clf_onnx.session
                inp = sess.get_inputs()[0].name
                xn = x.numpy()
                fns['onnx'] = lambda: sess.run(None, {inp: xn})
            except Exception as e:
                print(f"ONNX part skipped: {type(e).__name__}: {e}", file=sys.stderr)
        tm = C.interleaved(fns, reps=max(reps, 3), warmup=1)
        ips = {kk: (8 if kk == 'torch_bs1x8' else BS) / C.med(v) for kk, v in tm.items()}
        gfl = C.model_gflops(model, x[:1])
        rate = C.gflops_matmul(2048)
        rows.append([f'model only, torch fp32 bs={BS} (channels_last, inference_mode)', '-', f"{ips['torch']:.1f}", '-', '-',
                     f"{gfl:.2f} GFLOP/img -> {ips['torch'] * gfl:.0f} GFLOP/s achieved"])
        rows.append(['model only, torch fp32 bs=1, NCHW, no_grad (what the naive loop runs)', f"{ips['torch_bs1x8']:.1f}", '-', '-', '-', ''])
        rows.append([f'model only, torch bf16 autocast bs={BS} (info: native bf16 kernels)', '-', f"{ips['torch_bf16']:.1f}",
                     f"{ips['torch_bf16'] / ips['torch']:.2f}x vs fp32", '-', 'changes numerics; not what realfake runs'])
        if 'onnx' in fns:
            yo = sess.run(None, {inp: x.numpy()})[0]
            with torch.inference_mode(): yt = model(x).numpy()
            err = np.abs(yo - yt).max()
            assert err < 1e-3 * max(1, np.abs(yt).max()), f"onnx vs torch logits differ by {err}"
            rows.append([f'onnxruntime vs torch, model only bs={BS}', f"{ips['torch']:.1f}", f"{ips['onnx']:.1f}",
                         f"**{ips['onnx'] / ips['torch']:.2f}x**", '-', f"max abs dlogit {err:.1e}"])
            k2 = [0]
            def rf_onnx():
                k2[0] += 1
                return predict_to_csv(d / 'images', clf_onnx, out=d / f'onnx{k2[0]}.csv', bs=BS, progress=False)
            predict_to_csv(paths[::12], clf_onnx, out=d / 'warm_onnx.csv', bs=BS, progress=False)
            te = C.interleaved({'torch': rf, 'onnx': rf_onnx}, reps=max(1, reps - 1), warmup=0)
            a, b = n / C.med(te['torch']), n / C.med(te['onnx'])
            rows.append(['onnxruntime vs torch, end to end predict_to_csv', f"{a:.1f}", f"{b:.1f}", f"**{b / a:.2f}x**", '-', ''])
        # ---- native pixels vs resize policy, same model, same images, end to end through Classifier.predict
        nat1, natg = clf.with_preprocess(resize='native'), clf.with_preprocess(resize='native', crops='grid', max_crops=9)
        for c in (nat1, natg): c.predict(paths[::12], bs=BS)
        tp = C.interleaved({'resize': lambda: clf.predict(paths, bs=BS), 'native': lambda: nat1.predict(paths, bs=BS),
                            'grid': lambda: natg.predict(paths, bs=BS)}, reps=max(1, reps - 1), warmup=0)
        r0, r1, r2 = (n / C.med(tp[k3]) for k3 in ('resize', 'native', 'grid'))
        crops = natg.predict(paths[:len(paths):max(1, len(paths) // 12)]).n_crops.mean()
        rows.append(['native pixels, one 224 crop vs resize 256 -> 224 (Classifier.predict)', f"{r0:.1f}", f"{r1:.1f}", f"**{r1 / r0:.2f}x**", '-', 'same forward cost: the difference is decoding'])
        rows.append([f'native pixels, grid of up to 9 crops vs resize (about {crops:.1f} crops per image here)', f"{r0:.1f}", f"{r2:.1f}", f"**{r2 / r0:.2f}x**", '-', 'one forward per crop'])
        info.append(f"floor: {gfl:.2f} GFLOP per image forward; this CPU's fp32 matmul rate (2048^2, torch, "
                    f"{torch.get_num_threads()} threads) is {rate:.0f} GFLOP/s -> at most {rate / gfl:.0f} images/s if the "
                    f"network ran at matmul speed; measured model-only {ips['torch']:.1f} img/s = {ips['torch'] * gfl / rate:.0%} of it.")
    print(C.table(rows, ['case', 'baseline img/s', 'realfake img/s', 'ratio', 'goal', 'notes']))
    print(f"\n{reps} interleaved repetitions ({max(1, reps - 1)} for the end-to-end ONNX row) after a warm-up on a few images;"
          " img/s = images / median time.")
    for s in info: print(s)
    if C.load_note(): print(C.load_note())

# ---------------------------------------------------------------- CPU backends (issue 24)
def naive_native(paths, model, mean, std):
    "The naive loop for the native policy: PIL open, one centre 224 crop at the image's own pixels, one forward per image."
    import torch
    from PIL import Image
    import torchvision.transforms as T
    tf = T.Compose([T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)])
    with torch.no_grad():
        return np.array([torch.softmax(model(tf(Image.open(p).convert('RGB'))[None]), 1)[0, 1].item() for p in paths])

def backends_grid(d:Path, paths, reps:int, threads=(1, 2), batches=(1, 32)) -> list:
    """Side by side on the same images: naive loop = 1.00, realfake torch fp32 / bf16, ONNX Runtime tuned, OpenVINO fp32,
    int8 on both runtimes; for each thread count, batch size and policy. Returns table rows.
    Threads, per row of `threads` t: torch.set_num_threads(t) sets the naive loop's and torch's intra-op threads, and
    each runtime session opens with t inference threads; decoding runs on the calling thread, in series with inference,
    as in the naive loop (`predict`'s `decode_ahead` is off by default: bench/backends_ab.py measures it)."""
    import torch
    from realfake.modeldir import load_model_dir
    from realfake.metadata import write_metadata
    from realfake.predict import Classifier
    from realfake.export import export_onnx, export_openvino, export_int8
    export_onnx(d / 'model'); export_openvino(d / 'model')
    recs = [dict(path=str(p), label=['real', 'fake'][i % 2], split='valid' if (i // 2) % 2 == 0 else 'test', source='bench')
            for i, p in enumerate(paths)]
    export_int8(d / 'model', write_metadata(recs, d / 'bench.jsonl'), n_calib=8, max_auc_drop=1, max_flips=1)   # calibration only: a random model
    model, cfg = load_model_dir(d / 'model'); model.eval()
    mean, std = list(cfg.preprocess.mean), list(cfg.preprocess.std)
    variants = [('torch fp32', 'torch', 'fp32'), ('torch bf16', 'torch', 'bf16'), ('onnxruntime tuned', 'onnx', 'fp32'),
                ('openvino fp32', 'openvino', 'fp32'), ('onnxruntime int8', 'onnx', 'int8'), ('openvino int8', 'openvino', 'int8')]
    rows, n = [], len(paths)
    for t in threads:
        torch.set_num_threads(t)                   # the runtimes' sessions take torch's thread count when they open
        base = {k: Classifier.from_dir(d / 'model', device='cpu', backend=b, precision=p, force_int8=True) for k, b, p in variants}
        for policy in ('resize', 'native'):
            clfs = {k: c.with_preprocess(resize='native') if policy == 'native' else c for k, c in base.items()}
            naive = naive_native if policy == 'native' else naive_loop
            for bs in batches:
                res = {}
                fns = {'naive': lambda: res.__setitem__('naive', naive(paths, model, mean, std))}
                for k, c in clfs.items(): fns[k] = (lambda k=k, c=c: res.__setitem__(k, c.predict(paths, bs=bs)))
                ts = C.interleaved(fns, reps=reps, warmup=1)
                ref = res['torch fp32']
                nv = n / C.med(ts['naive'])
                cells = []
                for k, _, p in variants:
                    dp = np.abs(res[k].prob_fake.to_numpy() - ref.prob_fake.to_numpy()).max()
                    dl = np.abs(res[k].logit.to_numpy() - ref.logit.to_numpy()).max()
                    cells.append(f"{n / C.med(ts[k]) / nv:.2f}x" + ('' if k == 'torch fp32' else f" (dp {dp:.0e}, dl {dl:.0e})"))
                rows.append([t, bs, policy, f"{nv:.1f}"] + cells)
    torch.set_num_threads(max(threads))
    return rows, [v[0] for v in variants]

def app_latency(d:Path, jpeg:Path, reps:int) -> list:
    "Upload-to-answer time of the app's Detect page for one 1500x1000 JPEG: torch (before) vs auto (after), fp32 and int8."
    try:
        from starlette.testclient import TestClient
        from realfake.app import make_app
    except Exception as e: return [[f'app latency skipped: {type(e).__name__}: {e}', '', '', '']]
    from realfake.predict import Classifier
    data = jpeg.read_bytes()
    cases = {'before: torch fp32': dict(backend='torch'), 'after: auto fp32': dict(backend='auto'),
             'after: auto int8 (forced)': dict(backend='auto', precision='int8', force_int8=True)}
    fns = {}
    for k, kw in cases.items():
        clf = Classifier.from_dir(d / 'model', device='cpu', **kw)
        cli = TestClient(make_app(clf, db=str(d / f'votes{len(fns)}.sqlite')))
        def post(cli=cli):
            r = cli.post('/detect', headers={'accept': 'application/json'}, files=[('images', ('x.jpg', data, 'image/jpeg'))])
            assert r.status_code == 200 and r.json()['results'][0]['error'] is None, r.text[:300]
        fns[f"{k} ({clf.backend})"] = post
    ts = C.interleaved(fns, reps=max(3, reps), warmup=1)
    b = C.med(next(iter(ts.values())))
    return [[k, f"{1000 * C.med(v):.0f} ms {C.spread(v)}", f"{b / C.med(v):.2f}x", ''] for k, v in ts.items()]

def demo_int8(model_dir:Path, metadata:Path, d:Path) -> list:
    "The int8 agreement report of the demo model on its test split (the goal: AUC change <= 0.002, flips <= 0.5%)."
    import shutil
    from realfake.export import export_onnx, export_int8
    m = d / 'demo_model'; shutil.copytree(model_dir, m)
    export_onnx(m)
    rows = []
    for b, e in export_int8(m, metadata).items():
        a = e['agreement']
        rows.append([b, a['n'], f"{a['auc_fp32']:.4f} -> {a['auc_int8']:.4f} ({a['auc_change']:+.4f})", f"{a['label_flips']} ({a['flip_rate']:.1%})",
                     f"{a['max_dprob']:.4f} / {a['p99_dprob']:.4f}", 'met' if a['passed'] else 'NOT met', a['note'][:80]])
    return rows

def main_backends(args):
    "`--backends`: the CPU-backend grid, the app latency and the demo model's int8 agreement, in one run."
    import torch
    from PIL import Image; Image.init()
    import logging; logging.getLogger('realfake.predict').setLevel(logging.ERROR)   # "scoring with native pixels": on purpose here
    from realfake.modeldir import build_network, save_model_dir, ModelConfig
    from realfake.preprocess import Preprocess
    k = 2 if args.quick else args.n_per_set
    sets = [(nm, w, h, e, k) for nm, w, h, e, _ in SETS]
    C.header(f'inference: CPU backends side by side ({ARCH} @224, random weights; naive per-image PyTorch loop = 1.00x)')
    with tempfile.TemporaryDirectory(prefix='rf_bench_be_') as d:
        d = Path(d)
        imgs = C.make_image_set(d / 'images', sets)
        paths = [q for v in imgs.values() for q in v]
        torch.manual_seed(0)
        save_model_dir(build_network(ARCH), ModelConfig(arch=ARCH, preprocess=Preprocess(size=224, resize=256)), d / 'model')
        rows, names = backends_grid(d, paths, 1 if args.quick else args.reps, threads=tuple(args.threads), batches=tuple(args.bs))
        print(C.table(rows, ['threads', 'bs', 'policy', 'naive img/s'] + names))
        print(f"\n{len(paths)} images ({', '.join(f'{s[4]} {s[0]}' for s in sets)}), end to end through Classifier.predict (decode included);"
              " ratio = naive time / variant time, interleaved; dp / dl = max |delta prob| / |delta logit| against realfake torch fp32"
              " (int8 from a random-weight model: its deltas say nothing about quality, see the demo rows).")
        lat = app_latency(d, imgs['jpeg_1500x1000'][0], 1 if args.quick else args.reps)
        print('\n' + C.table(lat, ['app /detect, one 1500x1000 JPEG', 'upload to answer', 'vs before', '']))
        demo = Path(args.demo)
        if (demo / 'config.json').exists() and Path(args.demo_metadata).exists():
            print('\n' + C.table(demo_int8(demo, Path(args.demo_metadata), d),
                                 ['demo int8 on', 'test images', 'AUC fp32 -> int8', 'label flips', 'max / p99 |dprob|', 'goal', 'note']))
        else: print(f"\n(demo int8 rows skipped: no {demo}; run `python train.py` first)")
    if C.load_note(): print(C.load_note())

if __name__ == '__main__':
    if '--backends' in sys.argv: main_backends(_backends_parser().parse_args())
    else: main()
