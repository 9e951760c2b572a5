"""A/B of the CPU-runtime scoring path (issue 24): the runtimes' sessions and `Classifier.predict` as they were before
the static-shape pieces ('before': OpenVINO compiled for a dynamic batch and run on the whole batch, ONNX Runtime on
the whole batch, as it still does by default: a control column) against now ('after'; '+ahead': with `decode_ahead=True`), interleaved with the naive per-image
PyTorch loop (= 1.00x) in one process, same images, end to end through `Classifier.predict` (decode included).

    python bench/backends_ab.py [--n_per_set 2] [--reps 2] [--threads 1 2] [--bs 1 32] [--policies resize native]
"""
from __future__ import annotations
import os, sys, copy, tempfile
from pathlib import Path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C
import numpy as np
from inference import SETS, ARCH, naive_loop, naive_native

COLS = ['ort fp32 before', 'ort fp32 after', 'ov fp32 before', 'ov fp32 after', 'ov fp32 +ahead', 'ov int8 before', 'ov int8 after', 'ov int8 +ahead']

class BeforeOV:
    "OpenVINOSession as it was: one model compiled for a dynamic batch, the whole batch in one call, input copied."
    def __init__(self, path, threads):
        import openvino as ov
        core = ov.Core()
        cfg = {'INFERENCE_PRECISION_HINT': 'f32', 'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_NUM_THREADS': threads}
        self.req, self.threads = core.compile_model(core.read_model(str(path)), 'CPU', cfg).create_infer_request(), threads
    def __call__(self, x):
        self.req.infer({0: np.ascontiguousarray(x, np.float32)})
        return np.array(self.req.get_output_tensor(0).data, np.float32)

def main():
    p = C.parser(__doc__.split('\n')[0], reps=2)
    p.add_argument('--n_per_set', type=int, default=2)
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    p.add_argument('--bs', type=int, nargs='+', default=[1, 32])
    p.add_argument('--policies', nargs='+', default=['resize', 'native'])
    args = p.parse_args()
    import torch, logging
    from PIL import Image; Image.init()
    logging.getLogger('realfake.predict').setLevel(logging.ERROR)
    from realfake.modeldir import build_network, save_model_dir, load_model_dir, ModelConfig
    from realfake.preprocess import Preprocess
    from realfake.metadata import write_metadata
    from realfake.predict import Classifier
    from realfake.backends import OrtSession
    from realfake.export import export_onnx, export_openvino, export_int8
    C.header(f'CPU runtime path, before vs after, {ARCH} @224 (naive per-image PyTorch loop = 1.00x)')
    with tempfile.TemporaryDirectory(prefix='rf_bench_ab_') as d:
        d = Path(d)
        paths = [q for v in C.make_image_set(d / 'images', [(n, w, h, e, args.n_per_set) for n, w, h, e, _ in SETS]).values() for q in v]
        torch.manual_seed(0)
        save_model_dir(build_network(ARCH), ModelConfig(arch=ARCH, preprocess=Preprocess(size=224, resize=256)), d / 'model')
        export_onnx(d / 'model'); export_openvino(d / 'model')
        recs = [dict(path=str(q), label=['real', 'fake'][i % 2], split='valid' if (i // 2) % 2 == 0 else 'test', source='bench') for i, q in enumerate(paths)]
        export_int8(d / 'model', write_metadata(recs, d / 'bench.jsonl'), n_calib=8, max_auc_drop=1, max_flips=1)
        model, cfg = load_model_dir(d / 'model'); model.eval()
        mean, std = list(cfg.preprocess.mean), list(cfg.preprocess.std)
        rows, n = [], len(paths)
        for t in args.threads:
            torch.set_num_threads(t)
            ref = Classifier.from_dir(d / 'model', device='cpu', backend='torch')
            after = {k: Classifier.from_dir(d / 'model', device='cpu', backend=b, precision=q, force_int8=True)
                     for k, b, q in [('ort fp32', 'onnx', 'fp32'), ('ov fp32', 'openvino', 'fp32'), ('ov int8', 'openvino', 'int8')]}
            before = {}
            for k, c in after.items():
                b = copy.copy(c)
                b.session = (BeforeOV(d / 'model' / ('model.int8.onnx' if 'int8' in k else 'model.openvino.xml'), t) if k.startswith('ov')
                             else OrtSession((d / 'model' / 'model.onnx').read_bytes(), t, max_batch=None))
                before[k] = b
            for policy in args.policies:
                pol = (lambda c: c.with_preprocess(resize='native')) if policy == 'native' else (lambda c: c)
                naive = naive_native if policy == 'native' else naive_loop
                for bs in args.bs:
                    res = {}
                    fns = {'naive': lambda: naive(paths, model, mean, std), 'torch': lambda: res.__setitem__('torch', pol(ref).predict(paths, bs=bs))}
                    for k in after:
                        fns[f'{k} before'] = lambda k=k: res.__setitem__(f'{k} before', pol(before[k]).predict(paths, bs=bs, decode_ahead=False))
                        fns[f'{k} after'] = lambda k=k: res.__setitem__(f'{k} after', pol(after[k]).predict(paths, bs=bs))
                        if k.startswith('ov'):     # + decoding the next batch on one more thread (opt-in)
                            fns[f'{k} +ahead'] = lambda k=k: res.__setitem__(f'{k} +ahead', pol(after[k]).predict(paths, bs=bs, decode_ahead=True))
                    cpu = {}
                    ts = C.interleaved(fns, reps=args.reps, warmup=1, cpu=cpu)
                    nv, nc = C.med(ts['naive']), C.med(cpu['naive'])
                    cells = []
                    for k in COLS:
                        if k not in res: cells.append('-'); continue
                        dp = np.abs(res[k].prob_fake.to_numpy() - res['torch'].prob_fake.to_numpy()).max()
                        cells.append(f"{nv / C.med(ts[k]):.2f}x / {nc / C.med(cpu[k]):.2f}x" + ('' if 'int8' in k else f" ({dp:.0e})"))
                    rows.append([t, bs, policy, f"{n / nv:.1f}"] + cells)
                    print(C.table(rows[-1:], ['threads', 'bs', 'policy', 'naive img/s'] + COLS), flush=True)
    print()
    print(C.table(rows, ['threads', 'bs', 'policy', 'naive img/s'] + COLS))
    print(f"\n{n} images ({args.n_per_set} each of {', '.join(s[0] for s in SETS)}); each cell: wall-clock ratio / CPU-time ratio "
          f"(naive time / variant time; medians of {args.reps} interleaved repetitions after one warm-up); (x) = max |dprob| against "
          "realfake torch fp32; '+ahead' = after with decode_ahead=True. On a loaded machine the 1-thread CPU-time ratio is the steadier figure (at 1 thread every variant "
          "runs on one thread, so CPU time = the work); at 2 threads only the wall-clock ratio says what overlap gains.")
    if C.load_note(): print(C.load_note())

if __name__ == '__main__': main()
