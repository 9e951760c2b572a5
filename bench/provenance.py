"""Bench P, provenance: `realfake.provenance.read_provenance` over 1,000 files against decoding each once
(`realfake.images.load_image(path)`, full size), both in the same run, alternating; and the survival table of the
notebook (`--survival`: which evidence survives JPEG 95/75/50, JPEG 95 at 4:4:4 and a 0.5 resize).

Inputs: synthetic photo-like images written to a temp dir: 500 JPEGs 640x480 at quality 90 (PIL's 4:2:0 chroma, so
the watermark decode is skipped: header reads only), 400 PNGs 512x512 and 100 PNGs 1024x1024 (the watermark decode
runs; only the top rows it reads are decoded), half of each with A1111 `parameters` text. Also timed: the PNGs with their pixels already at hand (`rgb=`, what `realfake_predict`
passes), i.e. the watermark check alone.

    python bench/provenance.py              # ~1 min on 2 cores
    python bench/provenance.py --survival   # the table in nbs/06b_provenance.ipynb
    python bench/provenance.py --quick      # smoke run
"""
from __future__ import annotations
import io, os, sys, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C
import numpy as np
from PIL import Image, PngImagePlugin

A1111 = 'a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Model: sd15'

SETS = [('jpeg 640x480 q90', 640, 480, 'jpg', 500), ('png 512x512', 512, 512, 'png', 400), ('png 1024x1024', 1024, 1024, 'png', 100)]

def write_set(d, quick:bool) -> dict:
    "Each set's files: two base images saved again and again, every other one with A1111 `parameters` text."
    out = {}
    for k, (name, w, h, ext, n) in enumerate(SETS):
        bases = [Image.fromarray(C.synth_image(w, h, seed=2 * k + i)) for i in (0, 1)]
        out[name] = []
        for i in range(4 if quick else n):
            p = os.path.join(d, f'{k}_{i:04d}.{ext}')
            if ext == 'jpg': bases[i % 2].save(p, quality=90, comment=(A1111 if i % 2 else '').encode())
            else:
                info = PngImagePlugin.PngInfo()
                if i % 2: info.add_text('parameters', A1111)
                bases[i % 2].save(p, pnginfo=info)
            out[name].append(p)
    return out

def cost(args):
    from realfake.provenance import read_provenance
    from realfake.images import load_image
    with tempfile.TemporaryDirectory() as d:
        sets = write_set(d, args.quick)
        rows = []
        for name, paths in sets.items():
            px = [np.asarray(load_image(p)) for p in paths] if name.startswith('png') else None
            fns = {'decode': lambda: [load_image(p) for p in paths], 'provenance': lambda: [read_provenance(p) for p in paths]}
            if px is not None: fns['provenance, pixels given'] = lambda: [read_provenance(p, rgb=a) for p, a in zip(paths, px)]
            cpu = {}
            ts = C.interleaved(fns, reps=1 if args.quick else args.reps, cpu=cpu)
            dec, dec_cpu = C.med(ts['decode']) / len(paths), C.med(cpu['decode']) / len(paths)
            for k, v in ts.items():
                per, per_cpu = C.med(v) / len(paths), C.med(cpu[k]) / len(paths)
                rows.append([name, k, len(paths), f'{per * 1e3:.2f} {C.spread(v)}', f'{per / dec:.2f}x', f'{per_cpu / dec_cpu:.2f}x'])
            found = sum(bool(read_provenance(p).items) for p in paths)
            rows.append([name, 'files with evidence found', found, '', '', ''])
    print(C.table(rows, ['set', 'what', 'files', 'ms per file (wall)', 'vs decode once (wall)', '(CPU time)']))

def survival(args):
    sys.path.insert(0, str(C.ROOT / 'tests'))
    from test_provenance import embed, sign, make_chain, encode, A1111 as A, COMFY_PROMPT, COMFY_WORKFLOW
    from realfake.provenance import read_provenance, WATERMARKS
    try:
        from skimage import data; img, src = data.astronaut(), 'skimage.data.astronaut() 512x512'
    except ImportError: img, src = C.synth_image(512, 512), 'bench/_common.synth_image(512, 512)'
    pem, key, ca = make_chain()
    ways = {'original (PNG)': dict(fmt='PNG'), 'JPEG 95': dict(fmt='JPEG', quality=95), 'JPEG 75': dict(fmt='JPEG', quality=75),
            'JPEG 50': dict(fmt='JPEG', quality=50), 'JPEG 95 4:4:4': dict(fmt='JPEG', quality=95, subsampling=0),
            'JPEG 75 4:4:4': dict(fmt='JPEG', quality=75, subsampling=0), 'resize 0.5 (PNG)': dict(fmt='PNG', scale=0.5)}
    rows = []
    for name, (bits, domain, _) in WATERMARKS.items():
        marked, row = embed(img, name), [f'watermark {name}']
        for how in ways.values():
            b = encode(marked, **how)
            px = np.asarray(Image.open(io.BytesIO(b)).convert('RGB'))
            from realfake.provenance import decode_watermark
            agree = (decode_watermark(px, len(bits), domain) == bits).mean()
            p = read_provenance(b)
            row.append(f"{agree:.2f} {'found' if any(e.kind == 'watermark' for e in p.items) else 'gone'}")
        rows.append(row)
    signed = sign(encode(img), 'image/png', pem, key)
    info = PngImagePlugin.PngInfo(); info.add_text('parameters', A); info.add_text('prompt', COMFY_PROMPT); info.add_text('workflow', COMFY_WORKFLOW)
    b = io.BytesIO(); Image.fromarray(img).save(b, 'PNG', pnginfo=info); texted = b.getvalue()
    for label, data_, kind in [('C2PA (test CA trusted)', signed, 'c2pa'), ('A1111 + ComfyUI text', texted, 'text')]:
        row = [label]
        for way, how in ways.items():
            b = data_ if way == 'original (PNG)' else encode(np.asarray(Image.open(io.BytesIO(data_)).convert('RGB')), **how)
            items = [e for e in read_provenance(b, trust_anchors=ca, watermark=False).items if e.kind == kind]
            row.append(', '.join(sorted({e.status for e in items})) or 'gone')
        rows.append(row)
    print(f'Image: {src}; re-encoded by PIL (no metadata copied); watermark: bit agreement, then what read_provenance reports.\n')
    print(C.table(rows, ['evidence', *ways]))

if __name__ == '__main__':
    p = C.parser(__doc__, reps=3)
    p.add_argument('--survival', action='store_true', help='print the survival table instead of timing')
    args = p.parse_args()
    if not args.survival: print(C.machine())
    survival(args) if args.survival else cost(args)
    if not args.survival and (n := C.load_note()): print(n)
