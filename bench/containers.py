"""Bench: training from containers against loose files, side by side in one run on the same images.

1. Training loader images/s (`realfake.data.get_dls`, Preprocess(224, resize=256), aug on) reading the same JPEGs as
   loose files, from uncompressed tar shards (`--shards`, default 4), from a zip (stored) and from Parquet (HF layout: an
   `image` struct column, row groups of 100), with 0 and 2 workers: the rate of the second epoch after its first batch
   (the loader's throughput), and beside it the whole second epoch (with workers, their start included: fastai starts
   them each epoch), layouts in a rotating order; and the first-batch latency (loader creation + first batch, cold
   index cache). Goal: containers >= 1.0x loose files. Beside the rates, the CPU time per image of the second epoch:
   of this process with 0 workers, of the workers with 2 (what reading and decoding cost, whatever else runs).
2. Index build time and memory: N records over S tar shards (the full run simulates 2M records over 2,000 shards; the
   default --small run 40,000 over 40 and scales per million): `prepare`'s listing of the shards (`list_source`,
   `fake:webdataset:`) against the listing of the same number of loose files (`fake:folder:`), and the resident size of
   all the indexes (their arrays plus Python overhead, measured with tracemalloc). Goals: index <= 200 MB per 2M
   records, container listing <= 2x the loose-file listing.

    python bench/containers.py            # --small (default): about 2 minutes on 2 cores
    python bench/containers.py --full     # 2M records over 2,000 shards for part 2 (about 3 GB of disk)
"""
from __future__ import annotations
import io, os, sys, time, resource, tarfile, zipfile, tempfile, tracemalloc, warnings
from pathlib import Path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C

def make_sets(d:Path, n:int, w:int=500, h:int=375, shards:int=4) -> dict:
    "The same `n` JPEGs as loose files, `shards` tar shards, one stored zip and a Parquet file: {layout: [record paths]}."
    import pyarrow as pa, pyarrow.parquet as pq
    from PIL import Image
    blobs = []
    for i in range(n):
        b = io.BytesIO(); Image.fromarray(C.synth_image(w, h, seed=i)).save(b, 'JPEG', quality=90); blobs.append(b.getvalue())
    (d/'loose').mkdir(parents=True)
    out = {'loose': [], 'tar': [], 'zip': [], 'parquet': []}
    for i, b in enumerate(blobs): (d/'loose'/f'{i:06d}.jpg').write_bytes(b); out['loose'].append(str(d/'loose'/f'{i:06d}.jpg'))
    per = -(-n // shards)
    for s in range(shards):
        with tarfile.open(d/f'{s:05d}.tar', 'w') as tf:
            for i in range(s * per, min(n, (s + 1) * per)):
                ti = tarfile.TarInfo(f'{i:06d}.jpg'); ti.size = len(blobs[i]); tf.addfile(ti, io.BytesIO(blobs[i]))
                out['tar'].append(f'{d}/{s:05d}.tar/{i:06d}.jpg')
    with zipfile.ZipFile(d/'part-000001.zip', 'w', zipfile.ZIP_STORED) as z:
        for i, b in enumerate(blobs): z.writestr(f'{i:06d}.jpg', b); out['zip'].append(f'{d}/part-000001.zip/{i:06d}.jpg')
    pq.write_table(pa.table({'image': [{'bytes': b, 'path': f'{i}.jpg'} for i, b in enumerate(blobs)], 'label': [0] * n}),
                   d/'train-00000-of-00001.parquet', row_group_size=100)
    out['parquet'] = [f'{d}/train-00000-of-00001.parquet/{i}' for i in range(n)]
    return out

def _cpu(who) -> float:
    r = resource.getrusage(who); return r.ru_utime + r.ru_stime

def loader_rows(sets:dict, reps:int, bs:int=32) -> list:
    import pandas as pd, realfake.containers as RC
    from realfake.data import get_dls
    from realfake.preprocess import Preprocess
    n_train = len(sets['loose']) - 8
    if n_train < 2 * bs:            # a few batches per epoch at least
        bs = max(1, n_train // 3)
        print(f'(batch size {bs}: {n_train} training images per layout)')
    rows, order = [], list(sets)
    for workers in (0, 2):
        rs, ws, fs, cs = ({k: [] for k in sets} for _ in range(4))
        who = resource.RUSAGE_CHILDREN if workers else resource.RUSAGE_SELF   # fastai joins its workers at the end of each epoch
        for r in range(reps):                        # layouts interleaved, in a rotating order: a busy machine (or going first) slows them alike
            for layout in order[r % len(order):] + order[:r % len(order)]:
                paths = sets[layout]
                df = pd.DataFrame(dict(path=paths, label=['real', 'fake'] * (len(paths) // 2), source=layout, split='train'))
                df.loc[df.index[-8:], 'split'] = 'valid'
                RC.close_all()
                for f in Path(paths[0]).parents[1].glob('*.rfidx.npz'): f.unlink()       # cold: the index is built in the timing
                t0 = time.perf_counter()
                dls = get_dls(df, Preprocess(size=224, resize=256), bs=bs, num_workers=workers, aug=True, seed=r, device='cpu')
                it = iter(dls.train); next(it); t1 = time.perf_counter()
                for _ in it: pass                            # the rest of the first (cold) epoch, untimed
                c2 = _cpu(who); t2 = time.perf_counter(); it = iter(dls.train); n0 = len(next(it)[0]); t2b = time.perf_counter()
                n = n0 + sum(len(xb) for xb, _ in it); t3 = time.perf_counter(); del it
                cs[layout].append((_cpu(who) - c2) / n * 1e3)
                rs[layout].append((n - n0) / (t3 - t2b))     # the second epoch after its first batch: the loader's throughput
                ws[layout].append(n / (t3 - t2)); fs[layout].append(t1 - t0)   # the whole second epoch, its workers' start included
        rate, whole, first, cpu = ({k: C.med(v) for k, v in x.items()} for x in (rs, ws, fs, cs))
        for layout in sets:
            ratio, wr = rate[layout] / rate['loose'], whole[layout] / whole['loose']
            rows.append([layout, workers, f'{rate[layout]:.1f}', f'**{ratio:.2f}x**' if layout != 'loose' else '1.00x',
                         f'{whole[layout]:.1f} ({wr:.2f}x)', f"{cpu[layout]:.2f} ({cpu['loose'] / cpu[layout]:.2f}x)", f'{first[layout]:.2f}',
                         '' if layout == 'loose' else ('>=1.0x met' if ratio >= 1.0 else 'NOT met')])
    return rows

def index_rows(d:Path, records:int, shards:int) -> list:
    "Listing time of `records` container records over `shards` tar shards against as many loose files; index memory."
    import realfake.containers as RC
    from realfake.sources import list_source
    per = records // shards
    (d/'shards').mkdir(parents=True); (d/'files').mkdir()
    for s in range(shards):
        with tarfile.open(d/'shards'/f'{s:05d}.tar', 'w') as tf:
            for i in range(per):
                ti = tarfile.TarInfo(f'{s:05d}{i:05d}.jpg'); ti.size = 1; tf.addfile(ti, io.BytesIO(b'x'))
        sub = d/'files'/f'{s:05d}'; sub.mkdir()
        for i in range(per): (sub/f'{s:05d}{i:05d}.jpg').write_bytes(b'x')
    (d/'warm').mkdir(); (d/'warm'/'f').mkdir(); (d/'warm'/'f'/'0.jpg').write_bytes(b'x')   # untimed: both code paths imported and warm
    with tarfile.open(d/'warm'/'0.tar', 'w') as tf: ti = tarfile.TarInfo('0.jpg'); ti.size = 1; tf.addfile(ti, io.BytesIO(b'x'))
    list_source(f"fake:webdataset:{d/'warm'/'0.tar'}"); list_source(f"fake:folder:{d/'warm'/'f'}")
    t0 = time.perf_counter(); n_c = len(list_source(f"fake:webdataset:{d/'shards'}")); t_c = time.perf_counter() - t0   # cold: no index cached
    t0 = time.perf_counter(); n_f = len(list_source(f"fake:folder:{d/'files'}")); t_f = time.perf_counter() - t0
    RC.close_all()
    tracemalloc.start()
    idx = [RC.container_index(p) for p in sorted((d/'shards').glob('*.tar'))]   # from the cache prepare wrote
    mem = tracemalloc.get_traced_memory()[0]; tracemalloc.stop()
    t0 = time.perf_counter(); [RC.build_index(p) for p in sorted((d/'shards').glob('*.tar'))[:max(1, shards // 10)]]
    t_b = (time.perf_counter() - t0) / (per * max(1, shards // 10)) * 1e6
    per_m = mem / sum(i.n for i in idx) * 1e6 / 2**20
    return [[f'{records:,} over {shards:,}', f'{n_c:,} / {n_f:,}', f'{t_c:.1f}', f'{t_f:.1f}', f'**{t_c / t_f:.2f}x**',
             f'{t_b:.1f}', f'{per_m:.1f}', f'{per_m * 2:.0f}', 'met' if t_c <= 2 * t_f and per_m * 2 <= 200 else 'NOT met']]

def main():
    p = C.parser(__doc__, reps=2)
    p.add_argument('--full', action='store_true', help='part 2 at the seed scale: 2M records over 2,000 shards')
    p.add_argument('--images', type=int, default=192, help='images per layout in part 1 (default 192)')
    p.add_argument('--shards', type=int, default=4, help='tar shards the images of part 1 are spread over (default 4; more than '
                   'realfake.containers.MAX_OPEN=64 makes the loader reopen handles as at the seed scale)')
    a = p.parse_args()
    warnings.filterwarnings('ignore')
    print(C.machine())
    with tempfile.TemporaryDirectory() as d:
        sets = make_sets(Path(d)/'imgs', 32 if a.quick else a.images, shards=a.shards)
        print('\nTraining loader, same images (500x375 JPEG q90), Preprocess(224, resize=256), aug, CPU; img/s = the second epoch after its first batch')
        print(C.table(loader_rows(sets, 1 if a.quick else a.reps, 8 if a.quick else 32),
                      ['layout', 'workers', 'img/s', 'vs loose', 'whole epoch img/s (vs loose)', 'CPU ms per image (loose / this)',
                       'first batch s (cold index)', 'goal']))
        print('(img/s: medians over the repetitions; the whole-epoch column includes starting the workers, which fastai does '
              'every epoch and which a 2M-image epoch spreads over far more batches; CPU ms per image: of this process with 0 workers '
              '(augmentation included), of the workers with 2; first batch: loader creation + first batch)')

        records, shards = (2_000_000, 2000) if a.full else (2000, 4) if a.quick else (40_000, 40)
        print(f'\nIndex and listing: {records:,} records over {shards:,} tar shards vs as many loose files')
        print(C.table(index_rows(Path(d)/'scale', records, shards),
                      ['records', 'listed (tar / loose)', 'prepare listing tar s', 'loose s', 'tar vs loose',
                       'index build us/record', 'index MB per 1M', 'MB per 2M', 'goals (<=2x, <=200 MB)']))
    note = C.load_note()
    if note: print(note)

if __name__ == '__main__': main()
