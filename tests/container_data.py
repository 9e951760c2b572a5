"""Tiny datasets in the real container schemas, built offline: an HF-style Parquet dataset (an `image` struct with
`bytes` and `path`, a `label` column), an img2dataset WebDataset tar set (.jpg + .txt + .json per key) and a
DiffusionDB-style zip part (images + `part-NNNNNN.json` of prompts). Images are the demo's (`realfake.synth`)."""
from __future__ import annotations
import io, json, tarfile, zipfile
from pathlib import Path

__all__ = ['demo_images', 'write_hf', 'write_wds', 'write_zip']

def demo_images(dest, n:int=24, size:int=32, seed:int=1) -> dict:
    "{'real': [bytes...], 'fake': [bytes...]}: the demo's encoded images, `n` per class."
    from realfake.synth import make_demo
    from realfake.metadata import read_metadata
    df = read_metadata(make_demo(Path(dest)/'demo', n=n, size=size, seed=seed))
    return {lab: [Path(p).read_bytes() for p in df.loc[df.label == lab, 'path']] for lab in ('real', 'fake')}

def write_hf(dest, images:list, parts:int=2, row_group_size:int=5, ext:str='jpg') -> Path:
    "A folder `dest/data/train-0000K-of-0000N.parquet` as the Hub stores a `datasets` dataset with an Image column."
    import pyarrow as pa, pyarrow.parquet as pq
    d = Path(dest)/'data'; d.mkdir(parents=True, exist_ok=True)
    per = -(-len(images) // parts)
    for k in range(parts):
        chunk = images[k*per:(k+1)*per]
        t = pa.table({'image': [{'bytes': b, 'path': f'{k}_{i}.{ext}'} for i, b in enumerate(chunk)],
                      'label': [i % 3 for i in range(len(chunk))]})
        pq.write_table(t, d/f'train-{k:05d}-of-{parts:05d}.parquet', row_group_size=row_group_size)
    return Path(dest)

def _add(tf, name, data:bytes):
    ti = tarfile.TarInfo(name); ti.size = len(data); ti.mtime = 0; tf.addfile(ti, io.BytesIO(data))

def write_wds(dest, images:list, per_shard:int=10) -> Path:
    "img2dataset's WebDataset output: `dest/00000.tar`, ... with `KEY.jpg` (`.png` for PNG bytes), `KEY.txt` (caption), `KEY.json`."
    dest = Path(dest); dest.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(images), per_shard):
        with tarfile.open(dest/f'{s // per_shard:05d}.tar', 'w') as tf:
            for i, b in enumerate(images[s:s+per_shard], s):
                key = f'{s // per_shard:05d}{i:04d}'
                _add(tf, key + ('.png' if b[:4] == b'\x89PNG' else '.jpg'), b)
                _add(tf, key + '.txt', f'a photo number {i // 2}'.encode())       # two images per caption
                _add(tf, key + '.json', json.dumps({'key': key, 'caption': f'a photo number {i // 2}', 'width': 32,
                                                    'height': 32, 'status': 'success'}).encode())
    return dest

def write_zip(dest, images:list, part:int=1, ext:str='png') -> Path:
    "A DiffusionDB part: `dest/part-000001.zip` holding `UUID.png` images and `part-000001.json` {name: {p: prompt, se: seed}}."
    dest = Path(dest); dest.mkdir(parents=True, exist_ok=True)
    name = f'part-{part:06d}'
    table = {}
    with zipfile.ZipFile(dest/f'{name}.zip', 'w', zipfile.ZIP_DEFLATED) as z:
        for i, b in enumerate(images):
            f = f'{i:08x}-{part:04d}.{ext}'
            z.writestr(f, b); table[f] = {'p': f'a painting of thing {i // 3}', 'se': i, 'c': 7.0, 'st': 50, 'sa': 'k_lms'}
        z.writestr(f'{name}.json', json.dumps(table))
    return dest
