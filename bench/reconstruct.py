"""Bench R, aligned fakes: images/s of `realfake.reconstruct.reconstruct` (the function behind `realfake_reconstruct`,
end to end: header probe, decode, pad, encode + decode, one rounding, save in the source's format with its JPEG tables,
fsync'ed progress, merged metadata) on 512x512 images, against a naive per-image diffusers loop (PIL open, to tensor,
encode, latent mode, decode, save PNG) and the model alone on a ready batch (the floor), with

  (a) the tiny random-weight test autoencoder (`make_tiny_autoencoder`, 67k parameters), and
  (b) a full-size `AutoencoderKL` built from SD v1's published VAE config (84M parameters, random weights: the same
      cost as the trained one),

fp32 on CPU, bf16 on CPU as information (where the CPU has native bf16), and bf16 at batch 16 on a GPU when one is
present (`--device cuda`, the default when CUDA is available). Also the size of the output files relative to the
input files, for JPEG (quality 90) and PNG sources: with the random-weight autoencoders (their output is noise-like,
the worst case for compression) and with a perfect autoencoder (the reconstruction equals the input: what re-encoding
with the source's own tables costs by itself). A trained VAE's reconstruction lies between the two.

    .venv/bin/python bench/reconstruct.py            # ~5 min on 2 quiet cores (the full-size VAE: ~40 s per image in fp32)
    .venv/bin/python bench/reconstruct.py --quick    # smoke run: 64x64 images, 1 image for the full-size VAE
"""
from __future__ import annotations
import os, sys, json, tempfile
from pathlib import Path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C
import numpy as np

# the VAE config of CompVis/stable-diffusion-v1-4 (subfolder vae), as published with the weights
SD_V1_VAE = dict(_class_name='AutoencoderKL', act_fn='silu', block_out_channels=[128, 256, 512, 512],
                 down_block_types=['DownEncoderBlock2D'] * 4, up_block_types=['UpDecoderBlock2D'] * 4, in_channels=3,
                 out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, sample_size=512)

def naive_loop(paths, vae, out_dir:Path, device):
    "What a user writes first with diffusers: one image at a time, PIL in, PNG out."
    import torch
    from PIL import Image
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = next(vae.parameters()).dtype
    with torch.inference_mode():
        for p in paths:
            a = np.array(Image.open(p).convert('RGB'))
            x = torch.from_numpy(a).permute(2, 0, 1)[None].to(device, dtype) / 127.5 - 1
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample
            y = ((y[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
            Image.fromarray(y).save(out_dir / (Path(p).stem + '.png'))

def model_only(vae, n:int, side:int, bs:int, device):
    "Encode + decode `n` random images already in memory, `bs` at a time: the floor of any pipeline."
    import torch
    dtype = next(vae.parameters()).dtype
    x = torch.rand(bs, 3, side, side, device=device, dtype=dtype) * 2 - 1
    def run():
        with torch.inference_mode():
            for _ in range(max(1, n // bs)): vae.decode(vae.encode(x).latent_dist.mode()).sample.float().cpu()
    return run, max(1, n // bs) * bs

def rates(ts:dict, cpu:dict, n:dict, digits:int=1) -> list[str]:
    "Table cells: naive, realfake (img/s wall [per CPU-second]), ratio, model only."
    f = lambda k: (f"{n[k] / C.med(ts[k]):.{digits}f} [{n[k] / C.med(cpu[k]):.{digits}f}] {C.spread(ts[k])}" if k in ts else '-')
    ratio = C.med(ts['naive']) / C.med(ts['realfake']) if 'naive' in ts else None
    cratio = C.med(cpu['naive']) / C.med(cpu['realfake']) if 'naive' in ts else None
    return [f('naive'), f('realfake'), f"**{ratio:.2f}x** [{cratio:.2f}x]" if ratio else '-', f('model')]

def sizes(out_dir:Path, srcs:list[Path], sub:str) -> dict:
    "Output bytes / input bytes per source format."
    r = {}
    for ext in ('.jpg', '.png'):
        s = [p for p in srcs if p.suffix == ext]
        o = [out_dir / sub / 'images' / p.name for p in s]
        if s and all(q.exists() for q in o): r[ext] = sum(q.stat().st_size for q in o) / sum(p.stat().st_size for p in s)
    return r

def main():
    p = C.parser(__doc__.split('\n')[0], reps=3)
    p.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: cuda when available)")
    p.add_argument('--n_full', type=int, default=2, help='images for the full-size VAE on CPU (default 2; ~40 s each fp32)')
    p.add_argument('--gpu_images', type=int, default=128, help='images for the GPU rows (default 128)')
    p.add_argument('--threads', type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    import torch
    if args.threads: torch.set_num_threads(args.threads)
    from PIL import Image; Image.init()
    if not C.module_available('reconstruct'): sys.exit('needs realfake.reconstruct')
    import realfake.reconstruct as R, realfake.autoencoders as A
    from realfake.images import load_image
    try: import diffusers
    except ImportError: sys.exit("needs diffusers: pip install 'realfake[reconstruct]'")
    dev = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    side = 64 if args.quick else 512
    reps = 1 if args.quick else args.reps
    n_tiny, n_full = (4 if args.quick else 16), (1 if args.quick else args.n_full)
    C.header(f'reconstruct: aligned fakes, {side}x{side}, {dev.type}, diffusers {diffusers.__version__}')
    rows, sz, info = [], {}, []
    bf16_cpu = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    with tempfile.TemporaryDirectory(prefix='rf_bench_rec_') as d:
        d = Path(d)
        tiny = A.make_tiny_autoencoder(d / 'models' / 'tiny-kl')
        torch.manual_seed(0)
        full = diffusers.AutoencoderKL(**{k: v for k, v in SD_V1_VAE.items() if not k.startswith('_')})
        full.save_pretrained(d / 'models' / 'sd-v1-vae-config')
        cfg = json.loads((d / 'models' / 'sd-v1-vae-config' / 'config.json').read_text())
        assert all(cfg[k] == v for k, v in SD_V1_VAE.items()), 'config differs from the published one'
        n_params = sum(q.numel() for q in full.parameters())
        del full
        imgs = C.make_image_set(d / 'in' / 'images', [('photo', side, side, '.jpg', n_tiny // 2), ('render', side, side, '.png', n_tiny // 2)])
        srcs = sorted(q for v in imgs.values() for q in v)
        k = [0]
        def rf(model_dir, paths, bs, precision='fp32', device=dev):
            k[0] += 1
            s = R.reconstruct(paths, ae=str(model_dir), out_dir=d / f'out{k[0]}', bs=bs, device=str(device), precision=precision,
                              workers=min(4, os.cpu_count() or 1), progress=False)
            assert s['done'] == len(paths) and s['errors'] == 0 and s['failed'] == 0, s
            return d / f'out{k[0]}'
        # ---- (a) tiny VAE: realfake vs naive vs model only, interleaved
        vae = A.load_autoencoder(A.parse_ae(str(tiny)), dev)
        naive_dir = d / 'naive'
        run_m, n_m = model_only(vae, len(srcs), side, 4, dev)
        last, cpu = {}, {}
        ts = C.interleaved({'naive': lambda: naive_loop(srcs, vae, naive_dir, dev),
                            'realfake': lambda: last.__setitem__('tiny', rf(tiny, srcs, 4)),
                            'model': run_m}, reps=reps, warmup=1, cpu=cpu)
        sz['tiny VAE (random weights)'] = sizes(last['tiny'], srcs, 'tiny-kl')
        n = len(srcs)
        rows.append([f'tiny test VAE ({sum(q.numel() for q in vae.parameters()):,} params), fp32, bs 4', f'{n} ({n_tiny // 2} JPEG + {n_tiny // 2} PNG)',
                     *rates(ts, cpu, {'naive': n, 'realfake': n, 'model': n_m})])
        # ---- (b) full-size SD v1 VAE on CPU (slow: few images, one repetition unless asked)
        if dev.type == 'cpu':
            few = [q for q in srcs if q.suffix == '.jpg'][:max(1, n_full // 2)] + [q for q in srcs if q.suffix == '.png'][:max(1, n_full - n_full // 2)]
            few = few[:n_full]
            big = A.load_autoencoder(A.parse_ae(str(d / 'models' / 'sd-v1-vae-config')), dev)
            rf_full = lambda: last.__setitem__('full', rf(d / 'models' / 'sd-v1-vae-config', few, 4))
            cpu = {}
            ts = C.interleaved({'naive': lambda: naive_loop(few, big, d / 'naive_full', dev), 'realfake': rf_full},
                               reps=1 if args.quick else max(1, reps - 2), warmup=0, cpu=cpu)
            sz['SD v1 VAE config (random weights)'] = sizes(last['full'], few, 'sd-v1-vae-config')
            rows.append([f'SD v1 VAE config ({n_params / 1e6:.1f}M params), fp32, bs 4', f'{len(few)}',
                         *rates(ts, cpu, {'naive': len(few), 'realfake': len(few)}, digits=4)])
            rv, mv = len(few) / C.med(ts['realfake']), len(few) / C.med(ts['naive'])
            gfl = C.model_gflops(lambda x: big.decode(big.encode(x).latent_dist.mode()).sample, torch.rand(1, 3, side, side) * 2 - 1)
            rate = C.gflops_matmul(1024)
            info.append(f"floor: {gfl:,.0f} GFLOP per {side}x{side} image (encode + decode); this CPU's fp32 matmul rate is {rate:.0f} "
                        f"GFLOP/s ({torch.get_num_threads()} threads) -> at most {rate / gfl:.4f} img/s; the naive loop reached "
                        f"{mv * gfl:.0f} GFLOP/s, realfake {rv * gfl:.0f} GFLOP/s (wall clock).")
            del big
            if bf16_cpu:
                cpu = {}
                t = C.interleaved({'realfake': lambda: rf(d / 'models' / 'sd-v1-vae-config', few, 4, precision='bf16')}, reps=1, warmup=0, cpu=cpu)
                r = rates(t, cpu, {'realfake': len(few)}, digits=4)
                rows.append(['SD v1 VAE config, **bf16** on CPU (native bf16 kernels), bs 4 (info)', f'{len(few)}', '-', r[1],
                             f"{len(few) / C.med(t['realfake']) / rv:.2f}x vs fp32", '-'])
        # ---- GPU: bf16, batch 16, full-size VAE
        if dev.type == 'cuda':
            n_gpu = 32 if args.quick else args.gpu_images
            many = C.make_image_set(d / 'gpu' / 'images', [('photo', side, side, '.jpg', n_gpu // 2), ('render', side, side, '.png', n_gpu // 2)])
            many = sorted(q for v in many.values() for q in v)
            big = A.load_autoencoder(A.parse_ae(str(d / 'models' / 'sd-v1-vae-config')), dev, torch.bfloat16)
            run_m, n_m = model_only(big, n_gpu, side, 16, dev)
            def sync_run(f):
                def g(): f(); torch.cuda.synchronize()
                return g
            ts = C.interleaved({'realfake': sync_run(lambda: rf(d / 'models' / 'sd-v1-vae-config', many, 16, precision='bf16')),
                                'model': sync_run(run_m)}, reps=reps, warmup=1)
            rv, mv = len(many) / C.med(ts['realfake']), n_m / C.med(ts['model'])
            rows.append([f'SD v1 VAE config, bf16, bs 16, {torch.cuda.get_device_name()}', f'{len(many)}', '-', f"{rv:.1f} {C.spread(ts['realfake'])}",
                         '-', f'{mv:.1f} {C.spread(ts["model"])}'])
        # ---- sizes with a perfect autoencoder: the source's format and tables alone
        for q in srcs:
            R.save_like(np.asarray(load_image(q)), d / 'ident' / 'identity' / 'images' / q.name, R.source_info(q))
        sz['perfect autoencoder (output = input pixels)'] = sizes(d / 'ident', srcs, 'identity')
    print(C.table(rows, ['autoencoder, precision, batch', 'images', 'naive loop img/s', 'realfake img/s', 'ratio', 'model only img/s']))
    print(f"\nimg/s = images / median wall time [images / median CPU seconds of the process, all threads]; {reps} interleaved "
          "repetitions after a warm-up for the tiny VAE, one for the full-size VAE on CPU. realfake's time includes loading the "
          "model, listing, probing and writing the metadata. 'model only': encode + decode of a ready batch, no files (the floor).")
    print('\n' + C.table([[k, f"{v.get('.jpg', float('nan')):.3f}", f"{v.get('.png', float('nan')):.3f}"] for k, v in sz.items()],
                         ['output bytes / input bytes', f'JPEG q90 {side}x{side} (same tables)', f'PNG {side}x{side}']))
    for s in info: print(s)
    if dev.type != 'cuda': print('GPU rows: not measured (no CUDA device; run with --device cuda on a GPU machine).')
    if C.load_note(): print(C.load_note())

if __name__ == '__main__': main()
