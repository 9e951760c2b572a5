"""Bench 2, training DataLoader throughput: `realfake.data.get_dls(df, Preprocess(224, resize=256), aug=True)` against fastai's
default recipe on the same metadata: `DataBlock(ImageBlock, CategoryBlock, item_tfms=Resize(256),
batch_tfms=[*aug_transforms(size=224), Normalize.from_stats(*imagenet_stats)])`, with 0, 1 and 2 workers, on CPU.
Images/s of the training loader (decode + item transforms + collate + batch transforms), i.e. what the model sees.

Inputs: synthetic images (JPEG q90 1500x1000 and 500x375 as "real", 512x512 PNG as "fake", like LAION vs SD).
Rate = steady state: images after the first batch / time after the first batch (worker start-up and the first batch
are excluded; they are paid once per epoch, which is negligible on a 2M-image epoch). Start-up is reported too.

Second table: the native-pixel policy (`Preprocess(224, resize='native')`: random 224 crops cut at the image's own
pixels, no warps) against the resize policy (256 -> 224, the seed's) on the same loader, per image set (512x512 PNG,
1500x1000 JPEG), 0 workers, interleaved. Goal: native costs at most 1.5x resize per image.

    .venv/bin/python bench/dataloader.py            # ~1-2 min on 2 cores
    .venv/bin/python bench/dataloader.py --quick    # smoke run
"""
from __future__ import annotations
import os, sys, time, tempfile, warnings
from pathlib import Path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C

SETS = [('real_1500x1000', 1500, 1000, '.jpg', 48), ('real_500x375', 500, 375, '.jpg', 48), ('fake_512x512', 512, 512, '.png', 96)]
N_VALID, BS = 16, 32

def make_df(d:Path, quick:bool):
    import pandas as pd
    sets = [(n, w, h, e, max(8, k // 6) if quick else k) for n, w, h, e, k in SETS]
    paths = C.make_image_set(d, sets)
    recs = [dict(path=str(p), label='real' if k.startswith('real') else 'fake', source=k) for k, v in paths.items() for p in v]
    df = pd.DataFrame(recs).sample(frac=1, random_state=0).reset_index(drop=True)
    df['split'] = 'train'
    # a few valid rows of each label (the loaders need them; not timed)
    nv = 2 if quick else N_VALID // 2
    for lab in ('real', 'fake'): df.loc[df.index[df.label == lab][:nv], 'split'] = 'valid'
    for c in ('group', 'width', 'height', 'prompt', 'format'): df[c] = None
    return df

def fastai_dls(df, num_workers:int, bs:int):
    "fastai's default recipe (presizing) on the same records."
    from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, ColReader, ColSplitter, Resize, aug_transforms,
                                   Normalize, imagenet_stats)
    from realfake.core import LABELS
    df = df[df.split != 'test'].assign(is_valid=lambda x: x.split == 'valid')
    db = DataBlock(blocks=(ImageBlock, CategoryBlock(vocab=LABELS, sort=False)), get_x=ColReader('path'), get_y=ColReader('label'),
                   splitter=ColSplitter('is_valid'), item_tfms=Resize(256),
                   batch_tfms=[*aug_transforms(size=224), Normalize.from_stats(*imagenet_stats)])
    return db.dataloaders(df, bs=bs, num_workers=num_workers, device='cpu')

def realfake_dls(df, num_workers:int, bs:int, resize=256):
    from realfake.data import get_dls
    from realfake.preprocess import Preprocess
    return get_dls(df, Preprocess(size=224, resize=resize), bs=bs, num_workers=num_workers, aug=True, seed=0, device='cpu')

POLICY_SETS = [('png_512x512', 512, 512, '.png', 98), ('jpeg_1500x1000', 1500, 1000, '.jpg', 82)]

def policies(d:Path, quick:bool, reps:int, bs:int) -> list[list]:
    "Rows: per image set, resize-policy and native-policy training loader img/s (0 workers, interleaved) and the cost ratio."
    import pandas as pd
    rows = []
    for name, w, h, ext, k in POLICY_SETS:
        paths = C.make_image_set(d/name, [(name, w, h, ext, 26 if quick else k)])[name]
        df = pd.DataFrame(dict(path=[str(p) for p in paths], label=['real', 'fake'] * (len(paths) // 2), split='train', source=name))
        df.loc[df.index[:2], 'split'] = 'valid'
        pbs = min(bs, 16)                                  # several batches per epoch: the rate excludes the first
        sides = {'resize': realfake_dls(df, 0, pbs, 256), 'native': realfake_dls(df, 0, pbs, 'native')}
        res = {k2: [] for k2 in sides}
        for r in range(reps + 1):
            for k2, dls in sides.items():
                out = epoch(dls.train)
                if r: res[k2].append(out[2] / out[1])
        rate = {k2: C.med(v) for k2, v in res.items()}
        ratio = rate['resize'] / rate['native']
        rows.append([name, f"{rate['resize']:.1f}", f"{rate['native']:.1f}", f"**{ratio:.2f}x**", f"<=1.5x {'met' if ratio <= 1.5 else 'NOT met'}"])
    return rows

def epoch(dl):
    "(seconds to the first batch, seconds after it, images after it, first batch)"
    t0 = time.perf_counter()
    it = iter(dl)
    first = next(it); t1 = time.perf_counter()
    n = 0
    for xb, yb in it: n += len(xb)
    return t1 - t0, time.perf_counter() - t1, n, first

def breakdown(dl, reps:int):
    "CPU ms per image of (decode + item transforms) and of (collate + batch transforms), in this process."
    idx = list(range(dl.bs))
    def items(): return [dl.do_item(i) for i in idx]
    its = items()
    def batch(): return dl.after_batch(dl.create_batch(dl.before_batch(its)))
    cpu = {}
    C.interleaved({'item': items, 'batch': batch}, reps=reps, warmup=1, cpu=cpu)
    return {k: 1e3 * C.med(v) / dl.bs for k, v in cpu.items()}

def main():
    p = C.parser(__doc__.split('\n')[0], reps=3)
    p.add_argument('--workers', default='0,1,2', help='comma-separated worker counts (default 0,1,2)')
    args = p.parse_args()
    warnings.filterwarnings('ignore')
    from PIL import Image; Image.init()   # see decode.py
    import torch
    reps = 1 if args.quick else args.reps
    bs = 8 if args.quick else BS
    workers = [int(w) for w in args.workers.split(',')]
    C.header(f'dataloader: realfake.data.get_dls vs fastai default DataBlock (train loader, CPU, bs={bs})')
    have = C.module_available('data')
    rows = []
    with tempfile.TemporaryDirectory(prefix='rf_bench_dl_') as d:
        df = make_df(Path(d), args.quick)
        n_train = int((df.split == 'train').sum())
        print(f"{n_train} training images: {df[df.split == 'train'].source.value_counts().to_dict()}\n")
        for nw in workers:
            sides = {'fastai': fastai_dls(df, nw, bs)}
            if have: sides['realfake'] = realfake_dls(df, nw, bs)
            for name, dls in sides.items():   # correctness: what the model would see
                xb, yb = dls.train.one_batch()
                assert tuple(xb.shape[1:]) == (3, 224, 224) and xb.dtype == torch.float32, (name, xb.shape, xb.dtype)
                assert list(dls.vocab) == ['real', 'fake'], (name, dls.vocab)
                assert abs(float(xb.mean())) < 1.5 and 0.3 < float(xb.std()) < 3, f"{name}: batch not normalised ({xb.mean():.2f}, {xb.std():.2f})"
            res = {k: [] for k in sides}
            for r in range(reps + 1):      # first round = warm-up (page cache, lazy imports)
                for k, dls in sides.items():
                    out = epoch(dls.train)
                    if r: res[k].append(out)
            rate = {k: C.med([o[2] / o[1] for o in v]) for k, v in res.items()}
            start = {k: C.med([o[0] for o in v]) for k, v in res.items()}
            if nw == workers[0]: bd = {k: breakdown(dls.train, reps) for k, dls in sides.items()}
            rows.append([nw, f"{rate['fastai']:.1f}", f"{start['fastai']:.2f} s",
                         f"{rate['realfake']:.1f}" if have else '-', f"{start['realfake']:.2f} s" if have else '-',
                         f"**{rate['realfake'] / rate['fastai']:.2f}x**" if have else '-'])
            del sides
    print(C.table(rows, ['workers', 'fastai img/s', 'fastai 1st batch', 'realfake img/s', 'realfake 1st batch', 'ratio']))
    print("\nwhere the time goes (CPU ms per image in one process; batch tfms use both torch threads):\n")
    print(C.table([[k, f"{v['item']:.2f}", f"{v['batch']:.2f}", f"{1e3 / (v['item'] + v['batch']):.0f}"] for k, v in bd.items()],
                  ['side', 'decode + item tfms', 'collate + batch tfms (aug on CPU)', 'img/s at this CPU cost']))
    print(f"\n{reps} epochs per case after 1 warm-up epoch (cases alternate); img/s = median over epochs of steady-state rate;"
          f"\n'1st batch' = median time from iter() to the first batch (worker start-up + first decode).")
    if have:
        print("\nnative pixels (224 crops at the image's own pixels, no warps) vs resize 256 -> 224, training loader, 0 workers:\n")
        with tempfile.TemporaryDirectory(prefix='rf_bench_pol_') as d2:
            print(C.table(policies(Path(d2), args.quick, reps, bs), ['images', 'resize img/s', 'native img/s', 'native cost / resize cost', 'goal']))
    if C.load_note(): print(C.load_note())

if __name__ == '__main__': main()
