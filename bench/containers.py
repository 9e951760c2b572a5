"""Bench: training from containers against loose files, side by side in one run on the same images.

1. Training loader images/s (`realfake.data.get_dls`, Preprocess(224, resize=256), aug on) reading the same JPEGs as
   loose files, from uncompressed tar shards (`--shards`, default 4), from a zip (stored), from Parquet (HF layout: an
   `image` struct column, row groups of 100) and from an Arrow stream (`datasets`' `save_to_disk`, batches of 100), with
   0 and 2 workers: the rate of the second epoch after its first batch
   (the loader's throughput), and beside it the whole second epoch (with workers, their start included: fastai starts
   them each epoch), layouts in a rotating order; and the first-batch latency (loader creation + first batch, cold
   index cache). Goal: containers >= 1.0x loose files, on the median of the per-repetition ratios (each layout against
   loose files timed in the same repetition). Beside the rates, the CPU time per image of the second epoch: of this
   process with 0 workers, of the workers with 2 (what reading and decoding cost, whatever else runs). Then what one
   read costs through the loader's `open_source`, per layout, and for Parquet also past its row-group cache.
   The same loaders are also interleaved finely (whole batches stepped in turn; the item pipeline image by image), in
   `--draws` fresh processes: each process draws its own memory layout, which moves decoding speed by a few percent on
   its own, so the goal is judged on the ratio pooled over the processes, with an A/A control.
2. Index build time and memory: N records over S tar shards (the full run simulates 2M records over 2,000 shards; the
   default --small run 40,000 over 40 and scales per million): `prepare`'s listing of the shards (`list_source`,
   `fake:webdataset:`) against the listing of the same number of loose files (`fake:folder:`), and the resident size of
   all the indexes (their arrays plus Python overhead, measured with tracemalloc). Goals: index <= 200 MB per 2M
   records, container listing <= 2x the loose-file listing.

    python bench/containers.py            # --small (default): about 7 minutes on 2 cores
    python bench/containers.py --full     # 2M records over 2,000 shards for part 2 (about 3 GB of disk)
"""
from __future__ import annotations
import io, os, sys, time, resource, tarfile, zipfile, tempfile, tracemalloc, warnings
from pathlib import Path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C

def make_sets(d:Path, n:int, w:int=500, h:int=375, shards:int=4) -> dict:
    "The same `n` JPEGs as loose files, `shards` tar shards, one stored zip, a Parquet file and an Arrow stream (`datasets`' `save_to_disk`): {layout: [record paths]}."
    import pyarrow as pa, pyarrow.parquet as pq
    from PIL import Image
    blobs = []
    for i in range(n):
        b = io.BytesIO(); Image.fromarray(C.synth_image(w, h, seed=i)).save(b, 'JPEG', quality=90); blobs.append(b.getvalue())
    (d/'loose').mkdir(parents=True)
    out = {'loose': [], 'tar': [], 'zip': [], 'parquet': [], 'arrow': []}
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
    t = pa.table({'image': [{'bytes': b, 'path': None} for b in blobs], 'label': [0] * n})     # as `datasets` save_to_disk writes
    with pa.OSFile(str(d/'data-00000-of-00001.arrow'), 'wb') as sink, pa.ipc.new_stream(sink, t.schema) as w:
        for rb in t.to_batches(max_chunksize=100): w.write_batch(rb)
    out['arrow'] = [f'{d}/data-00000-of-00001.arrow/{i}' for i in range(n)]
    return out

def _frame(layout:str, paths:list):
    "The metadata of one layout's records: labels alternating, the last 8 for validation."
    import pandas as pd
    df = pd.DataFrame(dict(path=paths, label=['real', 'fake'] * (len(paths) // 2), source=layout, split='train'))
    df.loc[df.index[-8:], 'split'] = 'valid'
    return df

def _cpu(who) -> float:
    r = resource.getrusage(who); return r.ru_utime + r.ru_stime

def _same_draws(seed:int) -> None:
    "Seed the generators the augmentation draws from (fastai's `random.random() < p`, torch for the parameters and the workers' seeds)."
    import random, torch
    random.seed(seed); torch.manual_seed(seed)

def _paired(rates:dict, layout:str) -> tuple[float, float, float]:
    "Median, lowest and highest of the per-repetition ratios `layout` / loose (each ratio from the same repetition)."
    r = sorted(a / b for a, b in zip(rates[layout], rates['loose']))
    return C.med(r), r[0], r[-1]

def loader_rows(sets:dict, reps:int, bs:int=32) -> list:
    import realfake.containers as RC
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
                df = _frame(layout, paths)
                RC.close_all()
                for f in Path(paths[0]).parents[1].glob('*.rfidx.npz'): f.unlink()       # cold: the index is built in the timing
                t0 = time.perf_counter()
                dls = get_dls(df, Preprocess(size=224, resize=256), bs=bs, num_workers=workers, aug=True, seed=r, device='cpu')
                it = iter(dls.train); next(it); t1 = time.perf_counter()
                for _ in it: pass                            # the rest of the first (cold) epoch, untimed
                _same_draws(r)                               # every layout of a repetition gets the same augmentation (and worker seeds)
                c2 = _cpu(who); t2 = time.perf_counter(); it = iter(dls.train); n0 = len(next(it)[0]); t2b = time.perf_counter()
                n = n0 + sum(len(xb) for xb, _ in it); t3 = time.perf_counter(); del it
                cs[layout].append((_cpu(who) - c2) / n * 1e3)
                rs[layout].append((n - n0) / (t3 - t2b))     # the second epoch after its first batch: the loader's throughput
                ws[layout].append(n / (t3 - t2)); fs[layout].append(t1 - t0)   # the whole second epoch, its workers' start included
        rate, first, cpu = ({k: C.med(v) for k, v in x.items()} for x in (rs, fs, cs))
        for layout in sets:
            (ratio, lo, hi), wr = _paired(rs, layout), _paired(ws, layout)[0]
            rows.append([layout, workers, f'{rate[layout]:.1f}', f'**{ratio:.2f}x** ({lo:.2f}-{hi:.2f})' if layout != 'loose' else '1.00x',
                         f'{wr:.2f}x', f"{cpu[layout]:.2f} ({cpu['loose'] / cpu[layout]:.2f}x)", f'{first[layout]:.2f}',
                         '' if layout == 'loose' else _verdict(ratio, lo, hi)])
    return rows

def _verdict(ratio:float, lo:float, hi:float) -> str:
    "The goal (>= 1.0x) on the median ratio; when it is below but some repetitions were not, the repetitions cannot tell."
    return '>=1.0x met' if ratio >= 1.0 else 'NOT met' if hi < 1.0 else 'below, within noise'

def _items(dls:dict, images:list, seed:int, start:int=0) -> dict:
    """Seconds per layout and image to run the loader's item pipeline on `images`, alternating the layouts image by image in
    a random order, the garbage collector off (a collection would land on whichever layout runs then): {layout: [seconds per
    image, in the order of `images`]}; the images among the first `start` this process ran are NaN, timed apart under 'first'."""
    import gc, random
    rng, order = random.Random(seed), list(dls)
    t, first = {k: [float('nan')] * len(images) for k in dls}, {k: 0.0 for k in dls}
    gc.collect(); gc.disable()
    try:
        for n, j in enumerate(rng.sample(range(len(images)), len(images))):
            rng.shuffle(order)
            for k in order:
                t0 = time.perf_counter(); dls[k].create_item(images[j]); e = time.perf_counter() - t0
                if n < start: first[k] += e
                else: t[k][j] = e
    finally: gc.enable()
    return {'times': t, 'first': first}

def _forked_items(dls:dict, images:list, seed:int, workers:int, start:int) -> dict:
    "`_items` in `workers` processes forked now (as fastai forks its workers every epoch), each on its share of `images`: times back in the order of `images`, 'first' summed."
    import json
    kids = []
    for w in range(workers):
        r, wfd = os.pipe(); pid = os.fork()
        if pid == 0:
            os.close(r)
            try: os.write(wfd, json.dumps(_items(dls, images[w::workers], seed * 100 + w, start)).encode())
            finally: os._exit(0)
        os.close(wfd); kids.append((pid, r))
    out = {'times': {k: [float('nan')] * len(images) for k in dls}, 'first': {k: 0.0 for k in dls}}
    for w, (pid, r) in enumerate(kids):
        with os.fdopen(r, 'rb') as f: got = json.loads(f.read() or b'{}')
        os.waitpid(pid, 0)
        if set(got.get('times', ())) != set(dls): raise RuntimeError('a forked worker of the item bench failed')
        for k in dls:
            out['times'][k][w::workers] = got['times'][k]; out['first'][k] += got['first'][k]
    return out

def _pooled_ci(loose:list, this:list, reps:int=2000, seed:int=0) -> tuple[float, float, float, float, float]:
    """loose / this over the (pass, image) cells both timed in every process, its 95% interval from resampling the processes
    and, within each, the images (each image keeps its passes: the layouts are paired image by image, so an image's own cost
    cancels out), and the lowest and highest ratio of one process. `loose`, `this`: one passes x images array per process."""
    import numpy as np
    L, T = [], []
    for a, b in zip(loose, this):
        a, b = np.asarray(a, float), np.asarray(b, float)
        ok = ~(np.isnan(a) | np.isnan(b))
        L.append(np.where(ok, a, 0).sum(0)); T.append(np.where(ok, b, 0).sum(0))     # per image, over the passes
    L, T = np.array(L), np.array(T)                                                    # processes x images
    rng, (d, n) = np.random.default_rng(seed), L.shape
    boot = []
    for _ in range(reps):
        ds = rng.integers(0, d, d)[:, None]; js = rng.integers(0, n, (d, n))
        boot.append(L[ds, js].sum() / T[ds, js].sum())
    per = L.sum(1) / T.sum(1)
    return L.sum() / T.sum(), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)), float(per.min()), float(per.max())

def _batches(dls:dict, epochs:int, seed:int=0) -> tuple[dict, dict]:
    """Seconds and images per layout for `epochs` epochs of whole batches with 0 workers, the loaders stepped in turn (a random
    order each step), each drawing its augmentation from generators of its own seeded alike. The loaders were made with 2
    workers (so that they preload as for workers): left so, each iterator would start 2 processes that prefetch in the
    background, all loaders' at once, and the first iterator started would run ahead."""
    kept = {k: dl.fake_l.num_workers for k, dl in dls.items()}
    for dl in dls.values(): dl.fake_l.num_workers = 0
    try: return _stepped(dls, epochs, seed)
    finally:
        for k, dl in dls.items(): dl.fake_l.num_workers = kept[k]

def _stepped(dls:dict, epochs:int, seed:int=0) -> tuple[dict, dict]:
    "`_batches`' epochs (seeded `seed`, `seed + 1`, ...), the loaders' workers already set to 0."
    import random, torch
    tot, order, n = {k: [] for k in dls}, list(dls), {k: 0 for k in dls}
    for e in range(seed, seed + epochs):
        state, its = {}, {}
        for k, dl in dls.items():
            _same_draws(e); its[k] = iter(dl); state[k] = (random.getstate(), torch.get_rng_state())
        t_e, live, rng = {k: 0.0 for k in dls}, set(dls), random.Random(1000 + e)   # its own generator: the loaders' are set per step
        while live:
            rng.shuffle(order)
            for k in [k for k in order if k in live]:
                random.setstate(state[k][0]); torch.set_rng_state(state[k][1])
                t = time.perf_counter()
                try: n[k] += len(next(its[k])[0])
                except StopIteration: live.discard(k); continue
                t_e[k] += time.perf_counter() - t
                state[k] = (random.getstate(), torch.get_rng_state())
        for k in dls: tot[k].append(t_e[k])
    return tot, n

def with_control(sets:dict) -> dict:
    """`sets` with an A/A entry: a copy of the loose files (a copy, not the same files: two loaders reading the same pages back
    to back would both find them in the CPU's cache), read through a loader of its own: what a measure reads as a difference when there is none."""
    import shutil
    src = Path(sets['loose'][0]).parent; copy = src.with_name('loose_again')
    shutil.copytree(src, copy, dirs_exist_ok=True)
    out = {}
    for k, v in sets.items():
        out[k] = v
        if k == 'loose': out[AA] = [str(copy/Path(q).name) for q in v]
    return out

def _loaders(sets:dict) -> dict:
    "The training loader (2 workers' preloading, aug on) of each layout of `sets`."
    from realfake.data import get_dls
    from realfake.preprocess import Preprocess
    return {layout: get_dls(_frame(layout, paths), Preprocess(size=224, resize=256), bs=32, num_workers=2, aug=True, seed=0,
                            device='cpu').train for layout, paths in sets.items()}

def _draw(sets:dict, passes:int, seed:int, start:int) -> dict:
    """One process's share of the interleaved measures: an epoch of whole batches, then `passes` passes of the item pipeline
    with 0 workers and with 2 (forked from this process). Run in a fresh interpreter: see `item_rows`."""
    import warnings; warnings.filterwarnings('ignore')
    dls = _loaders(sets)
    images = list(range(len(sets['loose']) - 8))
    _items(dls, images[:16], -1)                      # warm: handles, caches (0 workers keeps them from epoch to epoch)
    whole, seen = _batches(dls, 1, seed)
    out = {'whole': whole, 'seen': seen}
    for workers in (0, 2):
        out[workers] = [_items(dls, images, seed * 100 + p) if workers == 0 else
                        _forked_items(dls, images, seed * 100 + p, workers, start) for p in range(passes)]
    return out

def item_rows(sets:dict, passes:int, draws:int, start:int=4) -> list:
    """The training loader's item pipeline (read, decode, crop, flip: what a worker runs per image; collation and the batch
    augmentation are the same code for every layout) timed image by image with the layouts alternated, so that the machine's
    drift hits them alike: in this process (0 workers), and in 2 processes forked anew for every pass (2 workers, as fastai's).
    With workers, each one's first `start` images are timed apart: a fresh process faults in the code and memory it touches
    again, once per worker per epoch, which the bench's epochs (188 images a worker) weigh far more than a 2M-image epoch.

    The passes are spread over `draws` fresh interpreters (spawned, one at a time). Where a process's code and buffers lie in
    memory (its address-space layout, drawn anew for each process) changes how fast it decodes from a file and from bytes in
    memory, by a few percent and not alike: in one process the loose files come out ahead of every container, in the next
    behind. One process is one draw of that; the ratio pools several, and its interval resamples them."""
    import multiprocessing as mp
    per = max(1, -(-passes // draws))
    with mp.get_context('spawn').Pool(1, maxtasksperchild=1) as pool:       # a new process, so a new layout, for each draw
        runs = [pool.apply(_draw, (sets, per, d, start)) for d in range(draws)]
    rows = []
    for layout in sets:
        ratio, lo, hi, a, b = _pooled_ci([[r['whole']['loose']] for r in runs], [[r['whole'][layout]] for r in runs])
        us = sum(sum(r['whole'][layout]) for r in runs) / sum(r['seen'][layout] for r in runs) * 1e6
        rows.append([layout, '0, whole batches', f'{us:.0f}', '1.000x' if layout == 'loose' else f'**{ratio:.3f}x** ({lo:.3f}-{hi:.3f})',
                     '' if layout == 'loose' else f'{a:.3f}-{b:.3f}', '', _goal(layout, ratio, lo, hi, ci=True)])
    for workers in (0, 2):
        cells = {k: [[t['times'][k] for t in r[workers]] for r in runs] for k in sets}   # per process: passes x images, NaN where not timed steadily
        for layout in sets:
            ratio, lo, hi, a, b = _pooled_ci(cells['loose'], cells[layout])
            xs = [x for proc in cells[layout] for row in proc for x in row if x == x]
            us = sum(xs) / len(xs)
            first = (sum(t['first'][layout] for r in runs for t in r[workers]) / (len(runs) * per * workers) - start * us) * 1e3 if workers else None
            rows.append([layout, workers, f'{us * 1e6:.0f}', '1.000x' if layout == 'loose' else f'**{ratio:.3f}x** ({lo:.3f}-{hi:.3f})',
                         '' if layout == 'loose' else f'{a:.3f}-{b:.3f}', '' if first is None else f'{first:.2f}',
                         _goal(layout, ratio, lo, hi, ci=True)])
    return rows

AA = 'loose, again (A/A)'

def _goal(layout:str, ratio:float, lo:float, hi:float, ci:bool=False) -> str:
    if layout == 'loose': return ''
    if layout == AA: return '(control: no difference)' if not ci or lo <= 1.0 <= hi else 'control differs: the measure is off by this much'
    return _verdict(ratio, lo, hi) + (' (interval above 1.0)' if ci and lo >= 1.0 else '')

def read_rows(sets:dict, reps:int) -> list:
    "Microseconds to open and read one image's bytes through the loader's `open_source`, shuffled, each layout in turn; Parquet and Arrow also with a row-group cache of one group, as when the data is much larger than the cache."
    import random, realfake.containers as RC
    from realfake.images import open_source
    def read_all(paths):
        for p in paths:
            with open_source(p) as f: f.read()
    shuffled = {k: random.Random(0).sample(v, len(v)) for k, v in sets.items()}
    keep = RC.MAX_CACHED_BYTES
    def beyond(paths):
        held = dict(RC._GROUPS); RC._GROUPS.clear()
        RC.MAX_CACHED_BYTES = 1                     # one row group kept: shuffled rows decode a group each, as past the cache at scale
        try: read_all(paths)
        finally: RC.MAX_CACHED_BYTES = keep; RC._GROUPS.clear(); RC._GROUPS.update(held)   # the plain Parquet row stays warm
    fns = {k: (lambda v=v: read_all(v)) for k, v in shuffled.items()}
    for k in ('parquet', 'arrow'): fns[f'{k}, past the cache'] = lambda k=k: beyond(shuffled[k])
    RC.close_all()
    ts = C.interleaved(fns, reps=reps, warmup=1)     # the warm-up decodes the plain Parquet row's groups once, as `preload` does for the loader
    n = len(sets['loose'])
    loose = C.med(ts['loose']) / n * 1e6
    return [[k, f'{C.med(t) / n * 1e6:.1f}', f'{loose / (C.med(t) / n * 1e6):.2f}x'] for k, t in ts.items()]

def cold_read_rows(sets:dict, passes:int) -> list:
    """Microseconds of one read through `open_source`, each right after an untimed decode of another image (as in the training
    loader, where a read finds the caches full of the decoder's data): the layouts in a random order for each image."""
    import gc, random
    from realfake.images import open_source, load_image
    n, rng = len(sets['loose']), random.Random(1)
    other = [open(p, 'rb').read() for p in sets['loose']]
    for paths in sets.values():                     # handles open, Parquet row groups in the cache: what an epoch after the first finds
        for p in paths:
            with open_source(p) as f: f.read()
    t = {k: 0.0 for k in sets}
    gc.collect(); gc.disable()
    try:
        for _ in range(passes):
            for j in rng.sample(range(n), n):
                for k in rng.sample(list(sets), len(sets)):
                    load_image(other[(j * 7 + 3) % n], short_side=256)
                    t0 = time.perf_counter()
                    with open_source(sets[k][j]) as f: f.read()
                    t[k] += time.perf_counter() - t0
    finally: gc.enable()
    us = {k: v / (n * passes) * 1e6 for k, v in t.items()}
    return [[k, f'{v:.1f}', f"{us['loose'] / v:.2f}x"] for k, v in us.items()]

def lookup_rows(sizes=(1_000, 10_000, 100_000, 1_000_000), n:int=2000) -> list:
    "Microseconds to find one member's name in an index of N names (`ContainerIndex.find`: its key, then a binary search), shuffled names."
    import random, numpy as np, realfake.containers as RC
    rows = []
    for size in sizes:
        names = [f'{i:09d}.jpg' for i in range(size)]
        z = np.zeros(size, np.int64)
        idx = RC.ContainerIndex('x.tar', 'tar', 0, 0, np.sort(RC._keys(names)), z, z, z, z, z)
        q = random.Random(0).sample(names, min(n, size))
        t = C.interleaved({'find': lambda: [idx.find(m) for m in q]}, reps=5)['find']
        rows.append([f'{size:,}', f'{min(t) / len(q) * 1e6:.2f}', sum(idx.find(m) < 0 for m in q)])
    return rows

def crc_rows(sets:dict) -> list:
    "Microseconds for the CRC-32 of one zip member (the bench's JPEGs): `zlib.crc32` against the one `realfake.containers` uses (zlib-ng's where installed)."
    import zlib, realfake.containers as RC
    blobs = [Path(q).read_bytes() for q in sets['loose'][:64]]
    fns = {'zlib': lambda: [zlib.crc32(b) for b in blobs], f'realfake ({RC._crc32.__module__})': lambda: [RC._crc32(b) for b in blobs]}
    assert all(zlib.crc32(b) == RC._crc32(b) for b in blobs)
    ts = {k: min(t) / len(blobs) * 1e6 for k, t in C.interleaved(fns, reps=5).items()}
    return [[k, f'{sum(map(len, blobs)) / len(blobs) / 1e3:.0f}', f'{t:.2f}', f"{ts['zlib'] / t:.1f}x"] for k, t in ts.items()]

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
    p.add_argument('--passes', type=int, default=12, help='passes over the images in the item-by-item comparison, in all, rounded up to a multiple of --draws (default 12)')
    p.add_argument('--draws', type=int, default=6, help='fresh processes the passes are spread over (default 6): each draws its own memory layout')
    a = p.parse_args()
    passes, draws = (2, 2) if a.quick else (a.passes, max(1, min(a.draws, a.passes)))
    warnings.filterwarnings('ignore')
    print(C.machine())
    with tempfile.TemporaryDirectory() as d:
        sets = make_sets(Path(d)/'imgs', 32 if a.quick else a.images, shards=a.shards)
        print('\nTraining loader, same images (500x375 JPEG q90), Preprocess(224, resize=256), aug, CPU; img/s = the second epoch after its first batch')
        print(C.table(loader_rows(sets, 1 if a.quick else a.reps, 8 if a.quick else 32),
                      ['layout', 'workers', 'img/s', 'vs loose (lowest-highest)', 'whole epoch vs loose', 'CPU ms per image (loose / this)',
                       'first batch s (cold index)', 'goal']))
        print('(img/s: median over the repetitions; vs loose: the median of the per-repetition ratios, each against loose files '
              'timed in the same repetition, with the lowest and highest; the whole-epoch column includes starting the workers, which fastai does '
              'every epoch and which a 2M-image epoch spreads over far more batches; CPU ms per image: of this process with 0 workers '
              '(augmentation included), of the workers with 2; first batch: loader creation + first batch. All in this one process: one draw of its memory layout, which the '
              'interleaved table below samples anew in several)')
        print(f'\nThe same loaders interleaved: whole batches stepped in turn, and the item pipeline image by image, us per image, '
              f'over {draws} fresh processes (the A/A row, a copy of the loose files through a second loader, shows what each measure reads '
              'when there is no difference)')
        print(C.table(item_rows(with_control(sets), passes, draws),
                      ['layout', 'workers', 'us per image', 'loose / this (95% interval)', 'one process (lowest-highest)',
                       'a fresh worker\'s start, ms', 'goal']))
        print(f'(each of {draws} processes is a fresh interpreter (spawned), so each draws its own address-space layout, which moves '
              'decoding from a file and from bytes in memory by a few percent, and not alike; each runs an epoch of whole batches, then '
              f'{-(-passes // draws)} passes of the item pipeline with 0 workers and with 2. Whole batches: the training loader with 0 '
              'workers, collation and augmentation included, each layout drawing the same augmentation. The rows below: the item '
              'pipeline alone (read, decode, crop), as a worker runs it, image by image, the layouts in a random order for each image, '
              'the garbage collector off while timing; loose / this: total time over all processes and passes, and its 95% interval '
              'from resampling the processes and, within each, the images (2,000 draws; each image keeps all its passes, so the '
              'layouts are compared on the same images); one process: the lowest and highest ratio of one process; 2 workers: two '
              'processes forked anew for each pass, each on half of the images, as fastai starts its workers every epoch; their first '
              '4 images are left out of the rate and give the start column: their time beyond 4 images at the rate. The A/A row reads '
              'what the measure finds where there is no difference)')
        print('\nOne read: open and read one image\'s bytes through the loader (`realfake.images.open_source`), shuffled order, us')
        print(C.table(read_rows(sets, 3 if a.quick else max(5, a.reps)), ['layout', 'us per read', 'loose / this']))
        print('(informational, no goal: "past the cache" keeps one decoded row group, as a shuffled epoch over a Parquet file '
              'much larger than realfake.containers.MAX_CACHED_BYTES does; an uncompressed Arrow stream reads each row\'s own bytes '
              'and keeps no row group)')
        print('\nOne read between two decodes: as above, each read right after an untimed decode of another image (the caches as the training loader leaves them), us')
        print(C.table(cold_read_rows(sets, 1 if a.quick else 3), ['layout', 'us per read', 'loose / this']))
        print('(informational, no goal: in the training loader each read comes after a decode, which leaves other code and data '
              'in the CPU\'s caches than reads back to back do; so this is nearer what a read costs inside the item rows above)')

        print('\nOne member lookup in an index of N names (`ContainerIndex.find`), best of 5, us')
        print(C.table(lookup_rows((1_000, 10_000) if a.quick else (1_000, 10_000, 100_000, 1_000_000)), ['names in the index', 'us per lookup', 'not found (of those asked)']))
        print('(an img2dataset shard holds 10,000 samples by default; the time should not grow with N: a binary search over uint64 keys)')

        print('\nZip members\' CRC-32 (checked on every zip read), best of 5, us per member')
        print(C.table(crc_rows(sets), ['CRC-32 by', 'KB per member', 'us per member', 'vs zlib']))

        records, shards = (2_000_000, 2000) if a.full else (2000, 4) if a.quick else (40_000, 40)
        print(f'\nIndex and listing: {records:,} records over {shards:,} tar shards vs as many loose files')
        print(C.table(index_rows(Path(d)/'scale', records, shards),
                      ['records', 'listed (tar / loose)', 'prepare listing tar s', 'loose s', 'tar vs loose',
                       'index build us/record', 'index MB per 1M', 'MB per 2M', 'goals (<=2x, <=200 MB)']))
    note = C.load_note()
    if note: print(note)

if __name__ == '__main__': main()
