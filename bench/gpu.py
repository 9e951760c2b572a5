"""GPU bench: ConvNeXt-Large, bf16, channels_last, DataLoader workers = CPU cores. Training and inference images/s,
model-only (batches already on the GPU: the GPU's ceiling) against end to end (realfake's DataLoaders decoding
synthetic JPEG/PNG files), and whether the DataLoader keeps the GPU busy (time the training loop waits for data).

Exits with a clear message (status 0) when no CUDA device is present.

    .venv/bin/python bench/gpu.py                   # ~5 min on one H100
    .venv/bin/python bench/gpu.py --quick           # smoke run (convnext_tiny, few images)
    .venv/bin/python bench/gpu.py --device cpu --quick   # exercises the code paths without a GPU (numbers meaningless)

Measures, in order:
1. data: `realfake.data.get_dls(..., num_workers=cores, device='cuda')` alone: training batches/s -> images/s the
   input pipeline can supply (decode + augment on workers, batch transforms on the GPU).
2. train, model only: realfake learner's model (bf16 autocast, channels_last, fused AdamW) on random batches in GPU memory.
3. train, end to end: `create_learner(dls, arch, pretrained=False)` (bf16 + ChannelsLast on CUDA) `fit_one_cycle` on
   the synthetic images; a callback records how long each step waited for its batch.
4. inference, model only (bf16, channels_last, inference_mode) and end to end (`Classifier.predict` over the files
   with `num_workers=cores`).
The DataLoader keeps the GPU busy when the training loop waits for data < 10% of the time; the gap between end to end
and model-only that remains is the learner's (fastai optimizer, callbacks, GPU batch augmentation); the `data` row
says how much headroom the decoders have.
"""
from __future__ import annotations
import os, sys, time, tempfile, warnings, io, contextlib
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C

def _write(args):
    p, w, h, seed = args
    C.write_image(p, w, h, seed)
    return str(p)

def make_files(d:Path, n:int, workers:int):
    "n synthetic images: half 'real' JPEG (1500x1000 and 500x375), half 'fake' 512x512 PNG, with a metadata frame."
    import pandas as pd
    d.mkdir(parents=True, exist_ok=True)
    specs = []
    for i in range(n):
        if i % 2 == 0: w, h, ext, lab = ((1500, 1000) if i % 4 == 0 else (500, 375)) + ('.jpg', 'real')
        else: w, h, ext, lab = 512, 512, '.png', 'fake'
        specs.append((d / f'{lab}_{i:05d}{ext}', w, h, i, lab))
    with ProcessPoolExecutor(workers) as ex: list(ex.map(_write, [s[:4] for s in specs], chunksize=8))
    df = pd.DataFrame(dict(path=[str(s[0]) for s in specs], label=[s[4] for s in specs], source='synthetic'))
    df['split'] = 'train'
    df.loc[df.index[-max(16, n // 16):], 'split'] = 'valid'
    for c in ('group', 'width', 'height', 'prompt', 'format'): df[c] = None
    return df

def sync(dev):
    import torch
    if dev.type == 'cuda': torch.cuda.synchronize()

def main():
    p = C.parser(__doc__.split('\n')[0], reps=3)
    p.add_argument('--arch', default='convnext_large', help='timm architecture (default convnext_large)')
    p.add_argument('--bs', type=int, default=64, help='training batch size (default 64)')
    p.add_argument('--infer-bs', type=int, default=256, help='inference batch size (default 256)')
    p.add_argument('--size', type=int, default=224, help='input size (default 224)')
    p.add_argument('--images', type=int, default=4096, help='synthetic image files (default 4096)')
    p.add_argument('--steps', type=int, default=30, help='timed model-only steps (default 30)')
    p.add_argument('--workers', type=int, default=os.cpu_count(), help=f'DataLoader workers (default: cores = {os.cpu_count()})')
    p.add_argument('--device', default='cuda', help="'cuda' (default) or 'cpu' to smoke-test the code paths")
    p.add_argument('--compile', action='store_true', help='also time torch.compile for the model-only rows')
    args = p.parse_args()
    warnings.filterwarnings('ignore')
    import torch
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device found (torch.cuda.is_available() is False): nothing measured.\n"
              "Run it on a machine with an NVIDIA GPU (see bench/README.md); '--device cpu --quick' only checks the code paths.")
        return 0
    from PIL import Image; Image.init()
    if args.quick:
        args.arch, args.images, args.steps, args.bs, args.infer_bs = ('convnext_atto' if args.device == 'cpu' else 'convnext_tiny'), 64, 3, 16, 32
        if args.device == 'cpu': args.size = 64
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
    C.header(f'gpu: {args.arch} bf16 channels_last, {args.workers} DataLoader workers, bs {args.bs} (train) / {args.infer_bs} (inference), {args.size}px')
    if dev.type == 'cuda':
        pr = torch.cuda.get_device_properties(dev)
        print(f"device: {pr.name}, {pr.total_memory / 2**30:.0f} GiB, {pr.multi_processor_count} SMs, CUDA {torch.version.cuda}\n")
    from realfake.data import get_dls
    from realfake.preprocess import Preprocess
    from realfake.learner import create_learner
    from realfake.modeldir import build_network, save_model_dir, ModelConfig
    from realfake.predict import Classifier
    spec = Preprocess(size=args.size, resize=round(args.size * 256 / 224))
    rows = []
    with tempfile.TemporaryDirectory(prefix='rf_bench_gpu_') as d:
        d = Path(d)
        t = time.perf_counter()
        df = make_files(d / 'images', args.images, args.workers)
        n_train = int((df.split == 'train').sum())
        print(f"wrote {len(df)} images ({n_train} train) in {time.perf_counter() - t:.0f} s\n")

        # 1. data only
        dls = get_dls(df, spec, bs=args.bs, num_workers=args.workers, aug=True, seed=0, device=dev)
        for _ in range(2):    # warm-up epoch (page cache, worker start), then a timed one
            sync(dev); t = time.perf_counter(); it = iter(dls.train); next(it); t1 = time.perf_counter(); n = 0
            for xb, yb in it: n += len(xb)
            sync(dev); dt = time.perf_counter() - t1
        data_ips = n / dt
        rows.append(['data only: get_dls train loader', f"{data_ips:.0f}", f"first batch {t1 - t:.1f} s", ''])

        # 2. train, model only
        model = build_network(args.arch).to(dev, memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == 'cuda')
        xb = torch.randn(args.bs, 3, args.size, args.size, device=dev).contiguous(memory_format=torch.channels_last)
        yb = torch.randint(0, 2, (args.bs,), device=dev)
        def train_step(m):
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(m(xb), yb)
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        def rate(fn, steps, bs):
            for _ in range(3): fn()
            sync(dev); t = time.perf_counter()
            for _ in range(steps): fn()
            sync(dev); return steps * bs / (time.perf_counter() - t)
        train_model_ips = rate(lambda: train_step(model), args.steps, args.bs)
        rows.append(['train, model only (random batches on the device)', f"{train_model_ips:.0f}", 'the ceiling', ''])
        if args.compile:
            cm = torch.compile(model)
            rows.append(['train, model only, torch.compile', f"{rate(lambda: train_step(cm), args.steps, args.bs):.0f}", '', ''])
        if dev.type == 'cuda': rows[-1][3] = f"peak mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
        opt = model = None; torch.cuda.empty_cache() if dev.type == "cuda" else None

        # 3. train, end to end with the realfake learner; the callback measures data waits
        from fastai.callback.core import Callback
        class DataWait(Callback):
            order = -100
            def before_fit(self): self.wait, self.n, self.t_end, self.t0, self.t_last = 0., 0, None, None, None
            def before_batch(self):
                now = time.perf_counter()
                if self.t_end is not None and self.training: self.wait += now - self.t_end
                if self.t0 is None and self.training: self.t0 = now
            def after_batch(self):
                if not self.training: return
                sync(dev); self.t_end = self.t_last = time.perf_counter(); self.n += len(self.yb[0])
            def after_epoch(self): self.t_end = None
        dw = DataWait()
        learn = create_learner(dls, spec, arch=args.arch, pretrained=False, path=d, cbs=[dw])
        with contextlib.redirect_stdout(io.StringIO()):
            learn.fit_one_cycle(1, 1e-4)                     # warm-up epoch (cudnn autotune, workers)
            learn.fit_one_cycle(1, 1e-4)
        steps_time = dw.t_last - dw.t0          # first training step's start to the last one's end (no validation)
        e2e_ips = dw.n / steps_time
        wait_frac = dw.wait / steps_time
        busy = wait_frac < 0.1     # the question is the data; e2e vs model-only also includes fastai's optimizer/callbacks
        rows.append(['train, end to end: create_learner + fit_one_cycle', f"{e2e_ips:.0f}",
                     f"{e2e_ips / train_model_ips:.0%} of model-only; waits for data {wait_frac:.0%} of the time",
                     f"DataLoader keeps the GPU busy: {'YES' if busy else 'NO'}"])
        model = learn.model; del learn, dls

        # 4. inference
        model = model.float().eval().to(memory_format=torch.channels_last)
        xi = torch.randn(args.infer_bs, 3, args.size, args.size, device=dev).contiguous(memory_format=torch.channels_last)
        def infer(m):
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16): m(xi)
        inf_model_ips = rate(lambda: infer(model), args.steps, args.infer_bs)
        rows.append(['inference, model only (bf16 autocast)', f"{inf_model_ips:.0f}", 'the ceiling', ''])
        def infer32(m):
            with torch.inference_mode(): m(xi)
        inf32 = rate(lambda: infer32(model), args.steps, args.infer_bs)
        rows.append(['inference, model only (fp32 / TF32)', f"{inf32:.0f}", f"bf16 is {inf_model_ips / inf32:.2f}x faster", ''])
        cfg = ModelConfig(arch=args.arch, preprocess=spec)
        save_model_dir(model, cfg, d / 'model')
        clf = Classifier.from_dir(d / 'model', device=str(dev), backend='torch', bs=args.infer_bs)
        paths = df.path.tolist()
        clf.predict(paths[:args.infer_bs * 2], num_workers=args.workers)     # warm-up
        sync(dev); t = time.perf_counter()
        out = clf.predict(paths, num_workers=args.workers)
        sync(dev); inf_e2e = len(paths) / (time.perf_counter() - t)
        assert out.error.isna().all(), out[out.error.notna()].head()
        rows.append([f'inference, end to end: Classifier.predict ({clf.backend}, fp32 weights)', f"{inf_e2e:.0f}",
                     f"{inf_e2e / inf_model_ips:.0%} of model-only", 'decode-bound' if inf_e2e < 0.8 * inf_model_ips else 'GPU-bound'])
    print(C.table(rows, ['measure', 'images/s', 'relative', 'notes']))
    print(f"\nend to end training: images / time from the first training step's start to the last one's end, second epoch"
          f" (the first warms up); data only excludes the first batch; model-only rates: {args.steps} steps after 3 warm-up steps.")
    print("Classifier.predict runs the model as realfake.predict does (its dtype); the model-only inference row uses bf16 autocast.")

if __name__ == '__main__': sys.exit(main())
