"""Tiny datasets in the real container schemas, built offline: an HF-style Parquet dataset (an `image` struct with
`bytes` and `path`, a `label` column), an img2dataset WebDataset tar set (.jpg + .txt + .json per key) and a
DiffusionDB-style zip part (images + `part-NNNNNN.json` of prompts). Images are the demo's (`realfake.synth`)."""
from __future__ import annotations
import io, json, tarfile, zipfile
from pathlib import Path

__all__ = ['demo_images', 'write_hf', 'write_saved', 'write_wds', 'write_zip']

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

def write_arrow_stream(path, images:list, labels:list, batch:int=4):
    "One Arrow IPC stream file as `datasets` writes it (`image` struct {bytes, path}, ClassLabel `label`, features in the schema metadata)."
    import pyarrow as pa
    feats = {'image': {'_type': 'Image'}, 'label': {'names': ['a', 'b', 'c'], '_type': 'ClassLabel'}}
    schema = pa.schema([('image', pa.struct([('bytes', pa.binary()), ('path', pa.string())])), ('label', pa.int64())],
                       metadata={'huggingface': json.dumps({'info': {'features': feats}})})
    t = pa.table({'image': [{'bytes': b, 'path': None} for b in images], 'label': labels}, schema=schema)
    with pa.OSFile(str(path), 'wb') as sink, pa.ipc.new_stream(sink, schema) as w:
        for rb in t.to_batches(max_chunksize=batch): w.write_batch(rb)
    return feats

def write_saved(dest, images:list, splits=('train',), shards:int=2) -> Path:
    """What `datasets.Dataset.save_to_disk` writes (a `DatasetDict`'s when several `splits`: one folder each and `dataset_dict.json`):
    `data-0000K-of-0000N.arrow` Arrow streams, `dataset_info.json`, `state.json` listing them; plus a `cache-*.arrow` that is not data."""
    dest = Path(dest); per_split = -(-len(images) // len(splits))
    for s, split in enumerate(splits):
        d = dest/split if len(splits) > 1 else dest; d.mkdir(parents=True, exist_ok=True)
        chunk = images[s*per_split:(s+1)*per_split]; per = -(-len(chunk) // shards); files = []
        for k in range(shards):
            part = chunk[k*per:(k+1)*per]; files.append(f'data-{k:05d}-of-{shards:05d}.arrow')
            feats = write_arrow_stream(d/files[-1], part, [i % 3 for i in range(len(part))])
        write_arrow_stream(d/'cache-0123456789abcdef.arrow', chunk[:2], [0, 0])      # a `map` cache beside the data
        (d/'dataset_info.json').write_text(json.dumps({'features': feats, 'splits': {split: {'num_examples': len(chunk)}}}))
        (d/'state.json').write_text(json.dumps({'_data_files': [{'filename': f} for f in files], '_fingerprint': 'f' * 16,
                                                '_format_columns': None, '_format_kwargs': {}, '_format_type': None,
                                                '_output_all_columns': False, '_split': split}))
    if len(splits) > 1: (dest/'dataset_dict.json').write_text(json.dumps({'splits': list(splits)}))
    return dest

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
