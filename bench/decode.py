"""Bench 1, image decoding: realfake's evaluation crop (`realfake.preprocess.image_crops`, resize 256, centre crop 224)
against fastai's default (`PILImage.create`, then `Resize(256)` (centre, validation split) and a centre crop to 224),
single process, images/s. A last column compares realfake's centre crop cut while decoding (only its pixels resampled)
with resizing the whole image and cutting the same box.

realfake decodes every format the same way (full decode, EXIF transpose, one bilinear resize with reducing_gap=3);
the JPEG-only draft decode is an opt-in for scoring (`load_image(..., draft=True)`), measured here as its own column.

Inputs: synthetic natural-looking images written to a temp dir: JPEG (quality 90) 500x375, 1500x1000, 3000x2000 and
512x512 PNG. Both sides decode the same files in the same run, alternating, after a warm-up; medians of the repetitions.
Also reported: the mean absolute pixel difference (0-255 scale) between the two 224x224 results, and, to put it in
scale, the difference between two legitimate full-resolution filters (fastai's bilinear vs Lanczos).

    .venv/bin/python bench/decode.py            # ~1 min on 2 cores
    .venv/bin/python bench/decode.py --quick    # smoke run
"""
from __future__ import annotations
import os, sys, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C
import numpy as np
from PIL import Image

SETS = [  # name, w, h, ext, n
    ('jpeg_500x375', 500, 375, '.jpg', 40),
    ('jpeg_1500x1000', 1500, 1000, '.jpg', 12),
    ('jpeg_3000x2000', 3000, 2000, '.jpg', 6),
    ('png_512x512', 512, 512, '.png', 30),
]
GOALS = {'jpeg_500x375': 1.0, 'jpeg_1500x1000': 2.0, 'jpeg_3000x2000': 3.0, 'png_512x512': 1.0}

def centre_crop(im:Image.Image, size:int=224) -> Image.Image:
    w, h = im.size
    l, t = (w - size) // 2, (h - size) // 2
    return im.crop((l, t, l + size, t + size))

def fastai_ref(p):
    "fastai's default: PILImage.create (full decode, RGB), Resize(256) at validation (centre), centre crop 224."
    from fastai.vision.all import PILImage, Resize
    img = Resize(256)(PILImage.create(p), split_idx=1)
    return centre_crop(img, 224)

def realfake_side(p):
    "realfake's evaluation path (`image_crops`, resize policy): the centre crop cut while decoding (only its pixels resampled)."
    from realfake.preprocess import Preprocess, image_crops
    return Image.fromarray(image_crops(p, Preprocess(size=224, resize=256)).pixels[0])

def realfake_whole(p):
    "The same filter with the whole image resized, then the centre cut (realfake's path before the cut moved into the decode)."
    from realfake.images import load_image
    return centre_crop(load_image(p, short_side=256), 224)

def realfake_draft(p):
    "The scoring-only opt-in: JPEG draft decode (a filter PNGs never get)."
    from realfake.images import load_image
    return centre_crop(load_image(p, short_side=256, draft=True), 224)

def _has_draft() -> bool:
    import inspect
    from realfake.images import load_image
    return 'draft' in inspect.signature(load_image).parameters

def lanczos_ref(p):
    "A second legitimate reference: full decode, Lanczos shorter side 256, centre crop 224."
    im = Image.open(p).convert('RGB')
    w, h = im.size; s = 256 / min(w, h)
    return centre_crop(im.resize((round(w * s), round(h * s)), Image.LANCZOS), 224)

def full_decode(p):
    "The floor of the reference: a full-resolution decode, nothing else."
    with Image.open(p) as im: im.load()

def draft_decode(p):
    "The floor of a draft-mode decode: the JPEG DCT-scaled decode only (what libjpeg-turbo must do at least)."
    with Image.open(p) as im:
        if im.format == 'JPEG': im.draft('RGB', (256 * im.size[0] // min(im.size), 256 * im.size[1] // min(im.size)))
        im.load()

def mad(a, b) -> float:
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())

def main():
    p = C.parser(__doc__.split('\n')[0], reps=5)
    args = p.parse_args()
    import torch; torch.set_num_threads(1)
    Image.init()   # both sides with all of Pillow's plugins registered (early realfake.images relied on import order)
    sets = [(n, w, h, e, 2 if args.quick else k) for n, w, h, e, k in SETS]
    reps = 1 if args.quick else args.reps
    C.header('decode: realfake.images.load_image vs fastai PILImage.create + Resize(256) + crop 224 (1 process)')
    have = C.module_available('images')
    rows = []
    with tempfile.TemporaryDirectory(prefix='rf_bench_decode_') as d:
        paths = C.make_image_set(d, sets)
        for name, w, h, ext, n in sets:
            ps = paths[name]
            fns = {'fastai': lambda ps=ps: [fastai_ref(q) for q in ps],
                   'full_decode': lambda ps=ps: [full_decode(q) for q in ps]}
            if ext == '.jpg': fns['draft_decode'] = lambda ps=ps: [draft_decode(q) for q in ps]
            if have: fns['realfake'] = lambda ps=ps: [realfake_side(q) for q in ps]
            if have: fns['realfake_whole'] = lambda ps=ps: [realfake_whole(q) for q in ps]
            if have and ext == '.jpg' and _has_draft(): fns['realfake_draft'] = lambda ps=ps: [realfake_draft(q) for q in ps]
            cpu = {}
            ts = C.interleaved(fns, reps=reps, warmup=1, cpu=cpu)
            ips = {k: n / C.med(v) for k, v in cpu.items()}          # per core: CPU seconds of this one process
            wall = {k: n / C.med(v) for k, v in ts.items()}
            ref = [np.asarray(fastai_ref(q)) for q in ps]
            lz = [np.asarray(lanczos_ref(q)) for q in ps]
            mad_lz = np.mean([mad(a, b) for a, b in zip(ref, lz)])
            floors = [f"{ips['full_decode']:.1f}", f"{ips['draft_decode']:.1f}" if 'draft_decode' in ips else '-']
            if have:
                out = [np.asarray(realfake_side(q)) for q in ps]
                assert all(o.shape == (224, 224, 3) and o.dtype == np.uint8 for o in out), 'realfake: wrong output shape'
                mads = [mad(a, b) for a, b in zip(ref, out)]
                cut = max(int(np.abs(a.astype(int) - np.asarray(realfake_whole(q), int)).max()) for a, q in zip(out, ps))
                assert np.mean(mads) < 3, f"{name}: realfake differs from fastai by {np.mean(mads):.2f} levels on average"
                ratio, goal = ips['realfake'] / ips['fastai'], GOALS[name]
                rows.append([name, n, f"{ips['fastai']:.1f} {C.spread(cpu['fastai'])}", f"{ips['realfake']:.1f} {C.spread(cpu['realfake'])}",
                             f"**{ratio:.2f}x**", f"{wall['realfake'] / wall['fastai']:.2f}x", f">={goal:g}x {'met' if ratio >= goal else 'NOT met'}",
                             f"{np.mean(mads):.2f} (max {np.max(mads):.2f})", f"{mad_lz:.2f}", *floors,
                             f"{ips['realfake_draft']:.1f} ({ips['realfake_draft'] / ips['fastai']:.2f}x)" if 'realfake_draft' in ips else '-',
                             f"{ips['realfake_whole']:.1f}", f"**{ips['realfake'] / ips['realfake_whole']:.2f}x** (max diff {cut})"])
            else:
                rows.append([name, n, f"{ips['fastai']:.1f}", '-', '-', '-', '-', '-', f"{mad_lz:.2f}", *floors, '-', '-', '-'])
    print(C.table(rows, ['images', 'n', 'fastai img/s/core', 'realfake img/s/core', 'ratio', 'ratio (wall)', 'goal',
                         'MAD vs fastai (0-255)', 'MAD bilinear vs Lanczos', 'full decode only img/s/core', 'draft decode only img/s/core',
                         'realfake draft=True img/s/core (vs fastai)', 'whole resize, then cut img/s/core', 'cut while decoding vs whole']))
    print(f"\n{reps} interleaved repetitions (after 1 warm-up) over the n images of each set; img/s/core = n / median CPU seconds"
          "\nof this single process (user+sys); 'ratio (wall)' uses wall-clock instead; ± = half the range of the repetitions.")
    print("MAD = mean |realfake - fastai| per channel over the 224x224 crops; the Lanczos column is the same measure between")
    print("two full-resolution filters, i.e. the size of a difference that is only a choice of resampling filter.")
    print("'cut while decoding vs whole': realfake's centre crop (only its pixels resampled) against resizing the whole image and")
    print("cutting the same box, same filter; max diff = the largest |difference| of any value (0-255) between the two.")
    if C.load_note(): print(C.load_note())

if __name__ == '__main__': main()
