"""Records inside containers (tar, zip, Parquet): the pointer is read by the one loader, the index is cached and
invalidated, each process has its own handles, bad containers give clear errors, and prepare -> train -> evaluate ->
predict runs on an HF Parquet dataset, img2dataset tar shards and a DiffusionDB zip part."""
import io, json, os, subprocess, tarfile, zipfile, multiprocessing as mp
import forks
from pathlib import Path

import numpy as np, pandas as pd, pytest
from PIL import Image

import realfake.containers as C
from realfake.containers import ContainerError, read_member, container_index, index_file, pointer
from realfake.images import ImageLoadError, load_image, probe_image
from realfake.metadata import read_metadata, write_metadata, MetadataError
from realfake.prepare import prepare
from realfake.sources import list_source
from container_data import demo_images, write_arrow_stream, write_hf, write_saved, write_wds, write_zip
from helpers import deadline, run_cli

def _jpg(i, size=(24, 16)):
    b = io.BytesIO(); Image.new('RGB', size, (i * 10 % 256, 50, 90)).save(b, 'JPEG'); return b.getvalue()

def _tar(path, members:dict):
    with tarfile.open(path, 'w') as tf:
        for n, d in members.items():
            ti = tarfile.TarInfo(n); ti.size = len(d); tf.addfile(ti, io.BytesIO(d))
    return path

@pytest.fixture
def boxes(tmp_path):
    "One container of each kind holding the same five JPEGs: {kind: (container, [member names])}."
    imgs = [_jpg(i) for i in range(5)]
    _tar(tmp_path/'s.tar', {f'k/{i}.jpg': b for i, b in enumerate(imgs)})
    with zipfile.ZipFile(tmp_path/'s.zip', 'w', zipfile.ZIP_DEFLATED) as z:
        for i, b in enumerate(imgs): z.writestr(f'k/{i}.jpg', b)
    import pyarrow as pa, pyarrow.parquet as pq
    pq.write_table(pa.table({'image': [{'bytes': b, 'path': f'{i}.jpg'} for i, b in enumerate(imgs)], 'label': [0] * 5}),
                   tmp_path/'s.parquet', row_group_size=2)
    return imgs, {'tar': (tmp_path/'s.tar', [f'k/{i}.jpg' for i in range(5)]), 'zip': (tmp_path/'s.zip', [f'k/{i}.jpg' for i in range(5)]),
                  'parquet': (tmp_path/'s.parquet', [str(i) for i in range(5)])}

@pytest.fixture(autouse=True)
def _fresh_handles():
    C.close_all(); yield; C.close_all()

# ---------------------------------------------------------------- reading
@pytest.mark.parametrize('kind', ['tar', 'zip', 'parquet'])
def test_every_member_reads_back_through_the_one_loader(boxes, kind):
    imgs, b = boxes
    c, names = b[kind]
    for i, n in enumerate(names):
        p = pointer(c, n)
        assert read_member(p) == imgs[i]
        assert probe_image(p) == dict(width=24, height=16, format='JPEG')
        assert np.array_equal(np.asarray(load_image(p)), np.asarray(load_image(imgs[i])))

@pytest.mark.parametrize('compression', [None, 'zstd', 'lz4'])
@pytest.mark.parametrize('column', ['struct', 'binary', 'large_binary', 'struct of binary_view'])
def test_arrow_rows_are_read_by_their_own_byte_range(tmp_path, column, compression):
    "Every row of an Arrow stream reads back as pyarrow reads it (nulls refused), from a sliced table in uneven batches; uncompressed binary, each by its own byte range without decoding a batch."
    import pyarrow as pa
    rng = np.random.default_rng(3)
    vals = [None if i % 7 == 3 else rng.bytes(int(rng.integers(1, 400))) for i in range(60)]
    rows = [None if v is None and i % 2 else {'bytes': v, 'path': f'{i}.jpg'} for i, v in enumerate(vals)]
    arr = (pa.array(rows) if column == 'struct' else pa.array(vals, getattr(pa, column)()) if column in ('binary', 'large_binary')
           else pa.array(rows, pa.struct([('bytes', pa.binary_view()), ('path', pa.string())])))
    t = pa.table({'label': list(range(60)), 'image': arr}).slice(5, 50)      # a slice: the arrays start at an offset
    opts = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.OSFile(str(tmp_path/'d.arrow'), 'wb') as sink, pa.ipc.new_stream(sink, t.schema, options=opts) as w:
        for n, b in zip([7, 1, 20, 22], [t.slice(0, 7), t.slice(7, 1), t.slice(8, 20), t.slice(28, 22)]): w.write_batch(b.to_batches()[0])
    idx = container_index(tmp_path/'d.arrow')
    by_range = compression is None and column != 'struct of binary_view'         # a view column keeps no offsets: read by batch
    assert len(idx.row_len) == (50 if by_range else 0)
    for i in np.random.default_rng(0).permutation(50).tolist():
        want = vals[5 + i]
        if want is None:
            with pytest.raises(ContainerError, match='no image bytes'): read_member(f'{tmp_path}/d.arrow/{i}')
        else: assert read_member(f'{tmp_path}/d.arrow/{i}') == want
    assert (len(C._GROUPS) == 0) == by_range

@pytest.mark.parametrize('compression', ['none', 'snappy', 'zstd'])
def test_parquet_rows_read_back_and_null_images_are_refused(tmp_path, compression):
    "Every row of a Parquet file in uneven row groups reads back as written; a null struct or a null `bytes` is 'no image bytes', never b''."
    import pyarrow as pa, pyarrow.parquet as pq
    rng = np.random.default_rng(4)
    vals = [None if i % 7 == 3 else rng.bytes(int(rng.integers(1, 400))) for i in range(40)]
    rows = [None if v is None and i % 2 else {'bytes': v, 'path': f'{i}.jpg'} for i, v in enumerate(vals)]
    pq.write_table(pa.table({'image': rows}), tmp_path/'d.parquet', row_group_size=9, compression=compression)
    for i in np.random.default_rng(1).permutation(40).tolist():
        if vals[i] is None:
            with pytest.raises(ContainerError, match='no image bytes'): read_member(f'{tmp_path}/d.parquet/{i}')
        else: assert read_member(f'{tmp_path}/d.parquet/{i}') == vals[i]

@pytest.mark.parametrize('kind', ['tar', 'zip', 'parquet'])
def test_a_held_container_is_read_without_trying_a_loose_open(boxes, kind, monkeypatch):
    "Once a container is open in this process its members skip the loose-file open (which could only fail); loose paths still take it."
    import realfake.images as I
    imgs, b = boxes
    c, names = b[kind]
    first = np.asarray(load_image(pointer(c, names[0])))
    tried = []
    real = I.open_regular
    monkeypatch.setattr(I, 'open_regular', lambda p: tried.append(str(p)) or real(p))
    for i, n in enumerate(names):
        assert np.array_equal(np.asarray(load_image(pointer(c, n))), np.asarray(load_image(imgs[i])))
    assert tried == [] and np.array_equal(first, np.asarray(load_image(imgs[0])))
    loose = Path(c).parent/'loose.jpg'; loose.write_bytes(imgs[1])
    load_image(loose); assert tried == [str(loose)]

def test_index_is_cached_beside_and_rebuilt_when_the_container_changes(tmp_path):
    c = _tar(tmp_path/'a.tar', {'0.jpg': _jpg(0)})
    idx = container_index(c)
    assert Path(index_file(c)).is_file() and idx.n == 1
    _tar(c, {'0.jpg': _jpg(0), '1.jpg': _jpg(1)})
    os.utime(c, ns=(1, 1))                        # size and mtime both changed
    assert container_index(c).n == 2

@pytest.mark.parametrize('keep', [0, 10, 100, 0.5, -30])
def test_torn_index_file_is_rebuilt(tmp_path, keep):
    "A cached index cut short (a crash mid-write: the cache is not fsynced) is ignored and rebuilt, never an error."
    c = _tar(tmp_path/'a.tar', {f'{i}.jpg': _jpg(i) for i in range(5)})
    container_index(c)
    f = Path(index_file(c)); b = f.read_bytes()
    f.write_bytes(b[:int(len(b) * keep) if isinstance(keep, float) else keep])
    st = os.stat(c)
    assert C.load_index(f, str(c), st.st_size, st.st_mtime_ns) is None
    C.close_all()
    assert read_member(f'{c}/3.jpg') == _jpg(3) and C.load_index(f, str(c), st.st_size, st.st_mtime_ns).n == 5

def test_read_only_folder_caches_the_index_elsewhere(tmp_path, monkeypatch):
    d = tmp_path/'ro'; d.mkdir(); c = _tar(d/'a.tar', {'0.jpg': _jpg(0)})
    monkeypatch.setenv('REALFAKE_INDEX_DIR', str(tmp_path/'cache'))
    assert container_index(c).n == 1
    assert list((tmp_path/'cache').glob('a.tar.*.rfidx.npz')) and not Path(index_file(c)).exists()

@pytest.mark.parametrize('base', [2**62, 2**63 + 2**62])
def test_every_name_lookup_is_exact_between_neighbouring_keys(tmp_path, monkeypatch, base):
    """Member keys one apart, below and above 2**63, as 2M keys make likely somewhere: every reader that looks a name up
    (read_member, member_reader, member_size) finds its own member. A lookup in float64 merges such keys."""
    names = [f'{i}.jpg' for i in range(8)]
    monkeypatch.setattr(C, '_key', lambda n: base + names.index(n) if n in names else 1)
    c = _tar(tmp_path/'a.tar', {n: _jpg(i, (8 + i, 8)) for i, n in enumerate(names)})
    read = C.member_reader(c)
    for i, n in enumerate(names):
        assert read_member(f'{c}/{n}') == read(n) == _jpg(i, (8 + i, 8)) and C.member_size(f'{c}/{n}') == len(_jpg(i, (8 + i, 8)))
    assert read('absent.jpg') is None

def test_index_memory_is_small_per_member(tmp_path):
    c = _tar(tmp_path/'many.tar', {f'{i:06d}.jpg': b'x' for i in range(2000)})
    idx = container_index(c)
    assert idx.n == 2000 and idx.nbytes / idx.n <= 40           # 8-byte name keys + offsets, sizes, CRC, method

# ---------------------------------------------------------------- bad input: each a clear error, no hang
def _truncated(tmp_path):
    c = _tar(tmp_path/'t.tar', {'0.jpg': _jpg(0), '1.jpg': _jpg(1, (400, 300))})
    c.write_bytes(c.read_bytes()[:2000]); return c, '1.jpg', 'truncated'
def _missing(tmp_path): return tmp_path/'gone.tar', '0.jpg', 'container not found'
def _absent(tmp_path): return _tar(tmp_path/'a.tar', {'0.jpg': _jpg(0)}), '7.jpg', "no member '7.jpg'"
def _beyond(tmp_path):
    import pyarrow as pa, pyarrow.parquet as pq
    pq.write_table(pa.table({'image': [_jpg(0)]}), tmp_path/'p.parquet'); return tmp_path/'p.parquet', '3', 'row 3 is beyond the end (1 rows)'
def _no_image_column(tmp_path):
    import pyarrow as pa, pyarrow.parquet as pq
    pq.write_table(pa.table({'text': ['a'], 'label': [1]}), tmp_path/'p.parquet'); return tmp_path/'p.parquet', '0', 'no image column'
def _zip_slip(tmp_path):
    with zipfile.ZipFile(tmp_path/'z.zip', 'w') as z: z.writestr('../evil.jpg', _jpg(0))
    return tmp_path/'z.zip', '../evil.jpg', 'unsafe member name'
def _fifo(tmp_path):
    os.mkfifo(tmp_path/'f.tar'); return tmp_path/'f.tar', '0.jpg', 'not a regular file (a FIFO)'
def _corrupt_zip(tmp_path):
    (tmp_path/'c.zip').write_bytes(b'PK\x03\x04' + b'\0' * 40); return tmp_path/'c.zip', 'a.jpg', 'corrupt zip'

def _truncated_arrow(tmp_path):
    write_arrow_stream(tmp_path/'a.arrow', [_jpg(i, (400, 300)) for i in range(6)], [0] * 6, batch=2)
    b = (tmp_path/'a.arrow').read_bytes(); (tmp_path/'a.arrow').write_bytes(b[:len(b) * 2 // 3]); return tmp_path/'a.arrow', '1', 'truncated or corrupt Arrow stream'
def _empty_arrow(tmp_path): (tmp_path/'e.arrow').write_bytes(b''); return tmp_path/'e.arrow', '0', 'truncated or corrupt Arrow stream'
def _arrow_no_image(tmp_path):
    import pyarrow as pa
    t = pa.table({'text': ['a'], 'label': [1]})
    with pa.OSFile(str(tmp_path/'t.arrow'), 'wb') as sink, pa.ipc.new_stream(sink, t.schema) as w: w.write_table(t)
    return tmp_path/'t.arrow', '0', 'no image column'

BAD = {'missing container': _missing, 'truncated tar': _truncated, 'absent member': _absent, 'row beyond the end': _beyond,
       'no image column': _no_image_column, 'zip slip': _zip_slip, 'fifo': _fifo, 'corrupt zip': _corrupt_zip,
       'truncated arrow': _truncated_arrow, 'empty arrow': _empty_arrow, 'arrow without images': _arrow_no_image}

@pytest.mark.parametrize('case', list(BAD))
def test_bad_container_is_a_clear_error_from_every_reader(tmp_path, case):
    c, member, why = BAD[case](tmp_path)
    p = str(c) + '/' + member              # not through pointer(): the zip-slip name must reach the readers as written
    with deadline(20, case):
        for read in (load_image, probe_image):
            with pytest.raises(ImageLoadError) as e: read(p)
            assert why in str(e.value) and str(tmp_path) in str(e.value)
        with pytest.raises(ContainerError, match=why.replace('(', r'\(').replace(')', r'\)')): read_member(p)

@pytest.mark.parametrize('crc', ['zlib-ng', 'zlib'])
@pytest.mark.parametrize('method', [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_zip_member_with_one_changed_byte_is_refused(tmp_path, monkeypatch, crc, method):
    "Its CRC-32 no longer matches: a clear error with either CRC function, while the member beside it reads back whole."
    import zlib
    if crc == 'zlib': monkeypatch.setattr(C, '_crc32', zlib.crc32)
    else: assert C._crc32.__module__.startswith('zlib_ng')        # the dev install has the `shards` extra
    a, b = _jpg(1, (64, 48)), _jpg(2, (64, 48))
    with zipfile.ZipFile(tmp_path/'z.zip', 'w', method) as z: z.writestr('a.jpg', a); z.writestr('b.jpg', b)
    with zipfile.ZipFile(tmp_path/'z.zip') as z: at = z.getinfo('a.jpg').header_offset + 30 + len('a.jpg')
    raw = bytearray((tmp_path/'z.zip').read_bytes())
    if method == zipfile.ZIP_STORED: raw[at + len(a) // 2] ^= 0x40          # one bit inside the JPEG's data
    else: raw[at + 2] ^= 0x01                                               # one bit of the deflate stream (a stored or fixed block header)
    (tmp_path/'z.zip').write_bytes(bytes(raw))
    with pytest.raises(ContainerError, match='corrupt zip member'): read_member(f'{tmp_path}/z.zip/a.jpg')
    assert read_member(f'{tmp_path}/z.zip/b.jpg') == b

@pytest.mark.parametrize('kind', ['tar', 'zip', 'parquet'])
def test_the_held_path_reads_and_refuses_as_the_general_path_does(boxes, kind):
    "`open_held` (the reads after the first, one regex and one stat) gives the same bytes and the same errors as the path that opens the container."
    imgs, b = boxes
    c, names = b[kind]
    ptrs = [f'{c}/{n}' for n in names]
    assert C.open_held(ptrs[0]) is None                          # not open yet: the caller tries it as a loose file
    first = [read_member(p) for p in ptrs]
    assert first == [C.open_held(p).read() for p in ptrs] == imgs
    bad = [f'{c}/99', f'{c}/+1', f'{c}/1_0'] if kind == 'parquet' else [f'{c}/k/99.jpg', f'{c}/k/../0.jpg']
    held = []
    for p in bad:
        with pytest.raises(ContainerError) as e: C.open_held(p)
        held.append(str(e.value))
    C.close_all()
    for p, msg in zip(bad, held):
        with pytest.raises(ContainerError) as e: read_member(p)
        assert str(e.value) == msg

def test_a_zip_member_is_read_past_its_own_local_header(tmp_path):
    """The data starts after the *local* header's name and extra field, whose lengths the central directory does not give;
    a member whose local header is not where the directory says is refused when indexing, by name, and the rest read back."""
    import struct
    a, b, c = _jpg(1), _jpg(2), _jpg(3)
    with zipfile.ZipFile(tmp_path/'z.zip', 'w') as z:
        zi = zipfile.ZipInfo('a.jpg'); zi.extra = struct.pack('<HH', 0xcafe, 9) + b'123456789'; z.writestr(zi, a)   # an odd-sized extra field
        z.writestr('b.jpg', b); z.writestr('c.jpg', c)
    with zipfile.ZipFile(tmp_path/'z.zip') as z: hb = z.getinfo('b.jpg').header_offset
    assert [read_member(f'{tmp_path}/z.zip/{n}') for n in ('a.jpg', 'b.jpg', 'c.jpg')] == [a, b, c]
    raw = bytearray((tmp_path/'z.zip').read_bytes()); raw[hb:hb + 4] = b'PK\x00\x00'
    (tmp_path/'y.zip').write_bytes(bytes(raw))
    idx, names, refused = C.scan(tmp_path/'y.zip')
    assert names == ['a.jpg', 'c.jpg'] and refused == [('b.jpg', 'corrupt zip: no local header where the central directory says')]
    assert [read_member(f'{tmp_path}/y.zip/{n}') for n in ('a.jpg', 'c.jpg')] == [a, c]
    with pytest.raises(ContainerError, match="no member 'b.jpg'"): read_member(f'{tmp_path}/y.zip/b.jpg')

@pytest.mark.parametrize('how', ['replaced by another file', 'rewritten in place'])
def test_swapped_container_after_indexing(tmp_path, how):
    "Neither the open handle nor the index kept in memory is used for a different file under the same name."
    c = _tar(tmp_path/'a.tar', {'0.jpg': _jpg(0)})
    assert read_member(f'{c}/0.jpg') == _jpg(0)                 # indexed and open
    if how == 'rewritten in place': _tar(c, {'other.jpg': _jpg(5), 'x.jpg': _jpg(6)})      # same inode, new size
    else:
        _tar(tmp_path/'b.tar', {'other.jpg': _jpg(5), 'x.jpg': _jpg(6)})
        os.replace(tmp_path/'b.tar', c)                         # a different container under the same name
    with pytest.raises(ContainerError, match="no member '0.jpg'"): read_member(f'{c}/0.jpg')
    assert read_member(f'{c}/other.jpg') == _jpg(5)

@pytest.mark.parametrize('case', ['truncated tar', 'no image column', 'fifo', 'corrupt zip', 'missing container', 'truncated arrow'])
def test_prepare_reports_a_bad_container_and_keeps_the_rest(tmp_path, case):
    c, _, why = BAD[case](tmp_path)
    kind = {'.tar': 'webdataset', '.zip': 'zip', '.parquet': 'hf', '.arrow': 'hf'}[c.suffix]
    good = tmp_path/'good'; good.mkdir()
    if kind == 'webdataset': _tar(good/'ok.tar', {'0.jpg': _jpg(0)})
    elif kind == 'zip':
        with zipfile.ZipFile(good/'ok.zip', 'w') as z: z.writestr('0.jpg', _jpg(0))
    elif c.suffix == '.arrow': write_arrow_stream(good/'ok.arrow', [_jpg(0)], [0])
    else:
        import pyarrow as pa, pyarrow.parquet as pq
        pq.write_table(pa.table({'image': [_jpg(0)]}), good/'ok.parquet')
    src = f"fake:{kind}:{tmp_path}/{{{c.name},good/ok{c.suffix}}}"
    with deadline(30, case):
        from realfake.sources import _list
        df, problems = _list(src)
    assert df['path'].tolist() == [f'{good}/ok{c.suffix}/0']  if kind == 'hf' else [f'{good}/ok{c.suffix}/0.jpg']
    if case != 'missing container':                  # a pattern that matches nothing names nothing
        assert [(Path(p).name, why in r) for p, r in problems] == [(c.name, True)]

def test_zip_slip_member_is_refused_and_reported_by_prepare(tmp_path):
    with zipfile.ZipFile(tmp_path/'z.zip', 'w') as z: z.writestr('../evil.jpg', _jpg(0)); z.writestr('ok.jpg', _jpg(1))
    from realfake.sources import _list
    df, problems = _list(f'fake:zip:{tmp_path}/z.zip')
    assert df['path'].tolist() == [f'{tmp_path}/z.zip/ok.jpg']
    assert len(problems) == 1 and 'unsafe member name' in problems[0][1]

def test_metadata_validates_pointers(tmp_path):
    f = tmp_path/'m.jsonl'
    rows = [dict(path='s.tar/0.jpg', label='real', split='train', source='x'),
            dict(path='p.parquet/first', label='fake', split='train', source='x')]
    f.write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
    with pytest.raises(MetadataError, match=r"m.jsonl:2: path: points inside a container but 'first' is not a row number"): read_metadata(f)

# ---------------------------------------------------------------- processes
def _no_index_load(*a, **k): raise AssertionError('an index was loaded again')

def _no_group_decode(*a, **k): raise AssertionError('a preloaded row group was decoded again')

def _child_read(args):
    p, want = args
    ok = read_member(p) == want
    h = C._OPEN[C.split_pointer(p)[0]]
    return os.getpid(), h.pid, ok

def test_forked_workers_open_their_own_handles(boxes):
    imgs, b = boxes
    ptrs = [(pointer(c, n), imgs[i]) for c, names in b.values() for i, n in enumerate(names)]
    for p, want in ptrs: assert read_member(p) == want                     # the parent holds open handles first
    parent = {c: C._OPEN[str(c)].f.tell() for c, _ in b.values()}
    with pytest.MonkeyPatch.context() as mpatch:                       # the children inherit the indexes: none is loaded again
        mpatch.setattr(C, 'container_index', _no_index_load)
        with mp.get_context('fork').Pool(2) as pool: got = pool.map(_child_read, ptrs * 3, chunksize=2)
    assert all(ok for *_, ok in got)
    assert all(pid == hpid for pid, hpid, _ in got) and os.getpid() not in {pid for pid, *_ in got}
    assert {c: C._OPEN[str(c)].f.tell() for c, _ in b.values()} == parent   # the parent's file offsets never moved
    for p, want in ptrs: assert read_member(p) == want

def test_threads_read_right_while_handles_are_evicted(tmp_path, monkeypatch):
    "8 threads over 6 containers with room for 2 open handles: every read returns its own member's bytes."
    from concurrent.futures import ThreadPoolExecutor
    monkeypatch.setattr(C, 'MAX_OPEN', 2)
    want = {}
    for k in range(6):
        _tar(tmp_path/f'{k}.tar', {f'{i}.jpg': bytes([k, i]) * (100 + i) for i in range(20)})
        want.update({f'{tmp_path}/{k}.tar/{i}.jpg': bytes([k, i]) * (100 + i) for i in range(20)})
    ptrs = list(want) * 5
    np.random.default_rng(0).shuffle(ptrs)
    with deadline(60, 'threads'), ThreadPoolExecutor(8) as ex: got = list(ex.map(read_member, ptrs))
    assert got == [want[p] for p in ptrs]
    monkeypatch.setattr(C, 'container_index', _no_index_load)  # a handle closed by the LRU reopens with its index from memory
    with deadline(60, 'threads'), ThreadPoolExecutor(8) as ex: assert list(ex.map(read_member, ptrs)) == [want[p] for p in ptrs]

def test_indexes_in_memory_stay_under_their_cap(tmp_path, monkeypatch):
    "Beyond `MAX_INDEX_MEMORY` the least recently used index is dropped (and loaded again when needed): reads stay right."
    ptrs = {}
    for k in range(4):
        _tar(tmp_path/f'{k}.tar', {f'{i}.jpg': bytes([k, i]) * 50 for i in range(30)})
        ptrs.update({f'{tmp_path}/{k}.tar/{i}.jpg': bytes([k, i]) * 50 for i in range(30)})
    one = container_index(tmp_path/'0.tar').nbytes
    monkeypatch.setattr(C, 'MAX_INDEX_MEMORY', 2 * one); monkeypatch.setattr(C, 'MAX_OPEN', 1)
    loads = []
    real = C.container_index
    monkeypatch.setattr(C, 'container_index', lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    for _ in range(2): assert [read_member(p) for p in ptrs] == list(ptrs.values())
    assert len(C._INDEXES) == 2 and C._INDEX_BYTES[0] == 2 * one
    assert len(loads) == 8                                      # each container's index loaded again on the second pass

class _Members:
    def __init__(self, ptrs): self.ptrs = ptrs
    def __len__(self): return len(self.ptrs)
    def __getitem__(self, i):
        p, _ = self.ptrs[i]
        return i, int(np.frombuffer(read_member(p), np.uint8).sum()), os.getpid(), C._OPEN[C.split_pointer(p)[0]].pid

def test_dataloader_with_two_workers_reads_every_member_right(boxes):
    import torch
    imgs, b = boxes
    ptrs = [(pointer(c, n), imgs[i]) for c, names in b.values() for i, n in enumerate(names)] * 4
    for p, _ in ptrs[:3]: read_member(p)
    dl = torch.utils.data.DataLoader(_Members(ptrs), batch_size=3, shuffle=True, num_workers=2,
                                     multiprocessing_context='fork', generator=torch.Generator().manual_seed(0))
    seen, pids = {}, set()
    with deadline(60, 'two workers'):
        for i, s, pid, hpid in dl:
            assert (pid == hpid).all()                      # each worker reads through a handle it opened itself
            seen.update(zip(i.tolist(), s.tolist())); pids |= set(pid.tolist())
    assert seen == {i: int(np.frombuffer(w, np.uint8).sum()) for i, (_, w) in enumerate(ptrs)}
    assert len(pids) == 2 and os.getpid() not in pids

@pytest.mark.parametrize('kind', ['parquet', 'arrow (zstd)'])
def test_a_forked_worker_reads_cached_rows_without_copying_the_parents_pages(tmp_path, kind):
    """Rows cached in the parent (`preload`) are read in a forked child by copying them out of one buffer per row group: the
    child writes to no page of the parent's per row. Each of 300 rows of 5 KB sits on pages of its own, so a reference
    count touched per row would cost at least 300 page copies in the child; the reads here cost a few."""
    import resource, zlib, pyarrow as pa, pyarrow.parquet as pq
    vals = [bytes([i % 251]) * 5000 for i in range(300)]
    t = pa.table({'image': [{'bytes': v, 'path': f'{i}.jpg'} for i, v in enumerate(vals)]})
    if kind == 'parquet': c = tmp_path/'d.parquet'; pq.write_table(t, c, row_group_size=100)
    else:
        c = tmp_path/'d.arrow'
        with pa.OSFile(str(c), 'wb') as sink, pa.ipc.new_stream(sink, t.schema, options=pa.ipc.IpcWriteOptions(compression='zstd')) as w:
            for b in t.to_batches(max_chunksize=100): w.write_batch(b)
    ptrs = [f'{c}/{i}' for i in range(300)]
    assert C.preload(ptrs) == 1 and len(C._GROUPS) == 3
    read_member(ptrs[0])                                      # this process's handle, the code paths warmed
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            read_member(ptrs[1])                              # the child's own handle, opened once
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            got = [zlib.crc32(read_member(p)) for p in ptrs]    # nothing kept but a number: no new pages either
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
            os.write(w, json.dumps([got == [zlib.crc32(bytes([i % 251]) * 5000) for i in range(300)], faults]).encode())
        finally: os._exit(0)
    os.close(w)
    with deadline(60, 'forked reader'): out = json.loads(os.read(r, 100)); os.waitpid(pid, 0)
    ok, faults = out
    assert ok and faults < 60, faults

def test_dataloader_workers_inherit_preloaded_indexes(boxes, monkeypatch):
    "`preload` in the parent (no handle opened): two forked workers read every member right through handles of their own, loading no index and decoding no row group."
    import torch
    imgs, b = boxes
    ptrs = [(pointer(c, n), imgs[i]) for c, names in b.values() for i, n in enumerate(names)] * 4
    assert C.preload([p for p, _ in ptrs] + [str(b['tar'][0].parent/'gone.tar/0.jpg')]) == 3 and not C._OPEN
    assert sorted(g for _, _, g in C._GROUPS) == [0, 1, 2]      # the Parquet rows' three row groups, decoded in the parent
    monkeypatch.setattr(C, 'container_index', _no_index_load)
    monkeypatch.setattr(C, '_group', _no_group_decode)
    dl = torch.utils.data.DataLoader(_Members(ptrs), batch_size=3, shuffle=True, num_workers=2,
                                     multiprocessing_context='fork', generator=torch.Generator().manual_seed(0))
    seen, pids = {}, set()
    with deadline(60, 'two workers'):
        for i, s, pid, hpid in dl:
            assert (pid == hpid).all()
            seen.update(zip(i.tolist(), s.tolist())); pids |= set(pid.tolist())
    assert seen == {i: int(np.frombuffer(w, np.uint8).sum()) for i, (_, w) in enumerate(ptrs)}
    assert len(pids) == 2 and os.getpid() not in pids and not C._OPEN

@pytest.mark.parametrize('workers', [0, 2])
def test_get_dls_preloads_container_indexes_for_its_workers(boxes, tmp_path, monkeypatch, workers):
    "get_dls with workers holds every container's index and the Parquet rows' row groups before they fork, and the workers load or decode none; with 0 workers it reads lazily."
    from realfake.data import get_dls
    from realfake.preprocess import Preprocess
    imgs, b = boxes
    paths = [str(pointer(c, n)) for c, names in b.values() for n in names] * 2
    df = pd.DataFrame(dict(path=paths, label=['real', 'fake'] * (len(paths) // 2), split=['train'] * 24 + ['valid'] * 6))
    dls = get_dls(df, Preprocess(size=16, resize=16), bs=4, num_workers=workers, aug=False, seed=0, device='cpu')
    held = {os.path.basename(c) for c in C._INDEXES}
    assert held == ({'s.tar', 's.zip', 's.parquet'} if workers else {os.path.basename(paths[0].rsplit('/', 2)[0])})
    if workers:
        monkeypatch.setattr(C, 'container_index', _no_index_load)
        monkeypatch.setattr(C, '_group', _no_group_decode)
        with deadline(120, 'get_dls workers'): xs = [x for x, _ in dls.train]
        assert sum(len(x) for x in xs) == 24 and xs[0].shape[1:] == (3, 16, 16)

# ---------------------------------------------------------------- prepare on the three sources
@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp('sources')
    im, more = demo_images(d, n=24), demo_images(d/'more', n=12, seed=2)
    return dict(hf=write_hf(d/'imagenet', im['real']), wds=write_wds(d/'laion', im['fake'][:12], per_shard=5),
                zip=write_zip(d/'diffusiondb', im['fake'][12:]), saved=write_saved(d/'saved', more['real']), images=im)

def test_list_sources_in_their_real_schemas(sources):
    hf = list_source(f"real:hf:{sources['hf']}:imagenet")
    assert len(hf) == 24 and hf['path'].str.contains(r'/data/train-0000[01]-of-00002\.parquet/\d+$').all()
    assert set(hf['group']) == {'label-0', 'label-1', 'label-2'} and (hf['source'] == 'imagenet').all()
    wds = list_source(f"fake:webdataset:{sources['wds']}/{{00000..00002}}.tar:laion")
    assert len(wds) == 12 and wds['prompt'].tolist()[:3] == ['a photo number 0', 'a photo number 0', 'a photo number 1']
    assert wds['width'].tolist() == [32] * 12
    z = list_source(f"fake:zip:{sources['zip']}:diffusiondb")
    assert len(z) == 12 and z['group'].nunique() == 4 and z['prompt'].iloc[0] == 'a painting of thing 0'

def test_prepare_balances_splits_by_group_probes_and_hashes_container_records(sources, tmp_path):
    # a byte-identical copy of a real image inside a tar: content_hash must find it across containers
    _tar(tmp_path/'copy.tar', {'dup.jpg': sources['images']['real'][0]})
    r = prepare([f"real:hf:{sources['hf']}", f"real:webdataset:{tmp_path}/copy.tar", f"fake:webdataset:{sources['wds']}",
                 f"fake:zip:{sources['zip']}"], valid_pct=0.3, seed=0, prompt_groups=True, probe=True, content_hash=True)
    df = r.df
    assert (df.label == 'real').sum() == (df.label == 'fake').sum() == 24
    assert df.groupby('group')['split'].nunique().max() == 1                      # group-disjoint splits
    assert df['format'].notna().all() and df['width'].notna().all()               # --probe read every member
    assert len(r.identical) == 2 and r.identical['path'].str.endswith('copy.tar/dup.jpg').any()

@pytest.mark.parametrize('splits', [('train',), ('train', 'test')])
def test_hf_source_reads_a_save_to_disk_folder(sources, tmp_path, splits):
    "A `save_to_disk` folder (a Dataset, or a DatasetDict's split folders): its Arrow streams' rows are records, the cache file is not."
    imgs = sources['images']['real']
    d = write_saved(tmp_path/'saved', imgs, splits=splits)
    df = list_source(f"real:hf:{d}:saved")
    assert len(df) == 24 and not df['path'].str.contains('cache-').any()
    assert df['path'].str.contains(r'/data-0000[01]-of-00002\.arrow/\d+$').all() and set(df['group']) == {'label-0', 'label-1', 'label-2'}
    assert sorted(read_member(p) for p in df['path']) == sorted(imgs)          # every row, each image once
    p = df['path'].iloc[-1]
    assert probe_image(p)['format'] in ('JPEG', 'PNG') and np.array_equal(np.asarray(load_image(p)), np.asarray(load_image(read_member(p))))
    meta = write_metadata([dict(path=q, label='real', split='train', source='saved') for q in df['path']], tmp_path/'m.jsonl')
    assert read_metadata(meta)['path'].tolist() == df['path'].tolist()
    with pytest.raises(ContainerError, match=rf'row 99 is beyond the end \({24 // len(splits) // 2} rows\)'): read_member(p.rsplit('/', 1)[0] + '/99')

def test_hub_id_is_read_offline_from_the_cache(tmp_path, monkeypatch):
    pytest.importorskip('huggingface_hub'); import huggingface_hub.constants as hh_constants
    from realfake.sources import PrepareError
    monkeypatch.setenv('HF_HUB_OFFLINE', '1'); monkeypatch.setattr(hh_constants, 'HF_HUB_CACHE', str(tmp_path/'hub'))
    with pytest.raises(PrepareError, match="'poloclub/diffusiondb' is not in the local Hugging Face cache"):
        list_source('fake:hf:poloclub/diffusiondb@2m_first_1k')

def test_hub_id_with_split_from_a_cached_snapshot(tmp_path, monkeypatch, sources):
    pytest.importorskip('huggingface_hub'); import huggingface_hub.constants as hh_constants
    import shutil
    snap = tmp_path/'hub'/'datasets--org--toy'/'snapshots'/('a' * 40)
    (tmp_path/'hub'/'datasets--org--toy'/'refs').mkdir(parents=True)
    (tmp_path/'hub'/'datasets--org--toy'/'refs'/'main').write_text('a' * 40)
    shutil.copytree(sources['hf']/'data', snap/'data')
    shutil.copy(snap/'data'/'train-00000-of-00002.parquet', snap/'data'/'test-00000-of-00001.parquet')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1'); monkeypatch.setattr(hh_constants, 'HF_HUB_CACHE', str(tmp_path/'hub'))
    df = list_source('real:hf:org/toy@train:toy')
    assert len(df) == 24 and df['path'].str.contains('/data/train-').all()
    assert len(list_source('real:hf:org/toy@test')) == 12

# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_prepare_train_evaluate_predict_on_containers(sources, tmp_path):
    meta = tmp_path/'meta.jsonl'
    r = run_cli('realfake_prepare', f"real:hf:{sources['hf']}:imagenet", f"real:hf:{sources['saved']}:saved",
                f"fake:webdataset:{sources['wds']}:laion", f"fake:zip:{sources['zip']}:diffusiondb", '--valid_pct', 0.25,
                '--test_pct', 0.25, '--probe', '--content_hash', '--prompt_groups', '--out', meta, timeout=120)
    assert r.returncode == 0, r.stderr
    df = read_metadata(meta)
    assert df['path'].str.contains(r'\.(?:parquet|tar|zip|arrow)/').all() and set(df['split']) == {'train', 'valid', 'test'}
    kinds = df.groupby(df['path'].str.extract(r'\.(parquet|tar|zip|arrow)/', expand=False))['split'].agg(set)
    assert set(kinds.index) == {'parquet', 'arrow', 'tar', 'zip'} and {'train', 'test'} <= kinds['arrow'], kinds   # a save_to_disk folder too
    from realfake.train import train, PRESETS
    res = train(str(meta), PRESETS['demo'].override(size=32, bs=8, epochs=1), out=tmp_path/'run', workers=2, cpu=True, quiet=True)
    assert (tmp_path/'run'/'history.csv').read_text().count('\n') == 2
    r = run_cli('realfake_evaluate', meta, '--model', res['model_dir'], '--split', 'test', '--out', tmp_path/'rep',
                '--bs', 8, '--num_workers', 0, '--audit', '--perturb', 'jpeg_q75', timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path/'rep'/'metrics.json').read_text())
    assert m['n'] == (df.split == 'test').sum() and m['n_errors'] == 0
    assert 'jpeg_q75' in json.dumps(m)                                             # the perturbation grid read them too
    some = df['path'][df.split == 'test'].tolist()[:4] + [f"{sources['wds']}/00000.tar/absent.jpg"]
    r = run_cli('realfake_predict', *some, '--model', res['model_dir'], '--out', tmp_path/'p.csv', '--bs', 4,
                '--workers', 0, '--no_progress', '--heatmaps', tmp_path/'maps', timeout=180)
    assert r.returncode == 0, r.stderr
    out = pd.read_csv(tmp_path/'p.csv')
    assert out['path'].tolist() == some
    assert out['prob_fake'][:4].notna().all() and "no member 'absent.jpg'" in out['error'].iloc[4]
    maps = pd.read_csv(tmp_path/'maps'/'heatmaps.csv')
    assert maps['heatmap'].notna().sum() == 4 and all((tmp_path/'maps'/h).is_file() for h in maps['heatmap'].dropna())

# ---------------------------------------------------------------- two machines
def _free_port():
    import socket
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

EPOCHS_2M = 8     # ~1 s each here: machine 1 is killed during epoch 1 or 2

def _machine(rank:int, port:int, meta, run, *extra):
    "One 'machine' of two on localhost: torchrun with one CPU process (gloo), as `accelerate launch --num_machines 2` sets it up."
    import subprocess, sys
    from helpers import cli_env
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--node_rank', str(rank), '--nproc_per_node', '1',
           '--master_addr', '127.0.0.1', '--master_port', str(port), str(root/'train.py'), '--metadata', str(meta),
           '--preset', 'demo', '--epochs', str(EPOCHS_2M), '--bs', '8', '--size', '32', '--cpu', '--workers', '0', '--threads', '1',
           '--quiet', '--seed', '1', '--out', str(run), *extra]
    return forks.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), start_new_session=True)

def _kill_machine(m):
    """SIGKILL machine `m`'s launcher and every process it started (torchrun starts its workers in sessions of their own;
    under the tests' fork server they are forked beside it: `forks.family` finds both kinds)."""
    import signal
    for p in forks.family(m.pid):
        try: os.kill(p, signal.SIGKILL)
        except ProcessLookupError: pass

@pytest.mark.slow
def test_two_machines_killed_mid_epoch_resume_on_container_data(sources, tmp_path):
    import time
    from realfake.prepare import prepare
    meta = write_metadata(prepare([f"real:hf:{sources['hf']}", f"fake:webdataset:{sources['wds']}", f"fake:zip:{sources['zip']}"],
                                  valid_pct=0.25, seed=0).df, tmp_path/'meta.jsonl')
    run = tmp_path/'run'
    port = _free_port()
    ms = [_machine(r, port, meta, run) for r in (0, 1)]
    hist = run/'history.csv'
    with deadline(400, 'first epoch on two machines'):
        while not (hist.exists() and hist.read_text().count('\n') >= 2):
            assert all(m.poll() is None for m in ms), [m.communicate()[1][-1500:] for m in ms if m.poll() is not None]
            time.sleep(0.2)
    _kill_machine(ms[1])                                      # machine 1 dies during epoch 1 (its agent and its worker)
    try: ms[0].wait(timeout=3)
    except subprocess.TimeoutExpired: _kill_machine(ms[0])    # machine 0 may wait for it in gloo: the job is lost, as a preempted one
    for m in ms: m.wait()
    before = hist.read_text().splitlines()[1:]
    assert 1 <= len(before) < EPOCHS_2M                       # the run did stop early
    port = _free_port()
    ms = [_machine(r, port, meta, run, '--resume') for r in (0, 1)]
    with deadline(500, 'resume on two machines'):
        outs = [m.communicate() for m in ms]
    assert [m.returncode for m in ms] == [0, 0], [o[1][-1500:] for o in outs]
    rows = hist.read_text().splitlines()[1:]
    assert [r.split(',')[0] for r in rows] == [str(e) for e in range(EPOCHS_2M)]     # the same history length
    assert rows[:len(before)] == before and 'at epoch' in outs[0][1]                # resumed, not restarted
    assert (run/'model'/'model.safetensors').is_file()

# ---------------------------------------------------------------- the app's label pool takes container records as they are
def test_app_label_pool_serves_and_records_votes_on_container_records(boxes, tiny_model_dir, tmp_path):
    "Records pointing into a tar, a zip and a Parquet file: the pool checks them, the app serves each one and counts the votes."
    pytest.importorskip('fasthtml', reason='the web app needs python-fasthtml (pip install realfake[app])')
    from starlette.testclient import TestClient
    from realfake.app import VOLUNTEER_COOKIE, label_image, make_app
    from realfake.predict import Classifier
    import re
    imgs, b = boxes
    recs = [dict(path=str(pointer(c, n)), label='fake' if kind == 'zip' or (kind == 'parquet' and i % 2) else 'real', split='test',
                 source=kind) for kind, (c, names) in b.items() for i, n in enumerate(names)]
    recs.append(dict(path=str(pointer(b['tar'][0], 'k/9.jpg')), label='real', split='test', source='tar'))      # no such member
    meta = write_metadata(recs, tmp_path/'metadata.jsonl', relative_to=tmp_path)
    clf = Classifier.from_dir(tiny_model_dir, device='cpu', backend='torch')
    app = make_app(clf, meta, tmp_path/'votes.sqlite', display_size=64)
    pool, store = app.state.realfake.pool, app.state.realfake.store
    [(gone, why)] = store.dropped().items()
    assert gone == 's.tar/k/9.jpg' and "no member 'k/9.jpg'" in why and len(pool) == 15                    # left out, with the reason
    assert {(r['width'], r['height'], r['format']) for r in pool.rows.values()} == {(24, 16, 'JPEG')}      # each header probed in its container
    assert {k.split('/')[0] for k in pool.keys} == {'s.tar', 's.zip', 's.parquet'}                          # keys: the pointers, relative
    cli, truth = TestClient(app), {}
    for _ in range(15):
        tok = re.search(r'name="token" value="(\w+)"', cli.get('/label').text).group(1)
        key = pool.by_token[tok]
        r = cli.get(f'/img/{tok}')
        assert r.status_code == 200 and r.content == label_image(pool.rows[key]['path'], 64)
        assert np.asarray(Image.open(io.BytesIO(r.content))).shape == (64, 64, 3)
        truth[tok] = pool.rows[key]['label']
        assert cli.post('/vote', data=dict(token=tok, answer=truth[tok]), follow_redirects=False).status_code == 303
    assert {pool.by_token[t].split('/')[0] for t in truth} == {'s.tar', 's.zip', 's.parquet'} and list(store.dropped()) == [gone]
    assert store.n_votes(cli.cookies[VOLUNTEER_COOKIE]) == 15
    j = cli.get('/results', headers={'accept': 'application/json'}).json()
    assert j['overall'][0]['images'] == 15 and j['overall'][0]['human_acc'] == 1.0 and j['n_dropped'] == 0   # no vote on the dropped one
    assert len(j['by_source']) == 3 and [r['images'] for r in j['by_source']] == [5, 5, 5]
    preds = clf.predict([pool.rows[k]['path'] for k in pool.keys])                                          # the model read the same members
    assert j['overall'][0]['model_acc'] == pytest.approx(float((preds.label.values == [pool.rows[k]['label'] for k in pool.keys]).mean()))

# ---------------------------------------------------------------- the tar walk: block reads agree with the exact per-header path
def _mixed_tar(path, n=300):
    "Many small members (so 1 MiB reads hold many headers) in every header form: ustar, GNU long names, pax paths and sizes."
    with tarfile.open(path, 'w', format=tarfile.GNU_FORMAT) as tf:
        for i in range(n):
            name = f'dir/{"long" * 40}/{i:04d}.jpg' if i % 50 == 7 else f'{i:04d}.jpg'
            ti = tarfile.TarInfo(name); data = bytes([i % 256]) * (i % 700); ti.size = len(data); tf.addfile(ti, io.BytesIO(data))
    with tarfile.open(path, 'a', format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo('pax/' + 'é' * 120 + '.jpg'); ti.size = 3; tf.addfile(ti, io.BytesIO(b'abc'))
    return path


def test_tar_walk_agrees_with_tarfile_on_every_header_form(tmp_path):
    from realfake.containers import _tar_members
    c = _mixed_tar(tmp_path/'m.tar')
    with tarfile.open(c) as tf: want = [(m.name, m.offset_data, m.size) for m in tf.getmembers() if m.isfile()]
    with open(c, 'rb') as f: names, offs, sizes, refused = _tar_members(f, str(c))
    assert list(zip(names, offs, sizes)) == want and not refused and len(want) == 301


def _patch_header(c, k, patch):
    "Rewrite header `k` (0-based among the members) of tar `c` with `patch(header bytes) -> header bytes`."
    with tarfile.open(c) as tf: off = [m.offset for m in tf.getmembers()][k]
    b = bytearray(c.read_bytes()); b[off:off + 512] = patch(bytes(b[off:off + 512])); c.write_bytes(bytes(b))
    return off


def _with_checksum(h):
    h = h[:148] + b' ' * 8 + h[156:]
    return h[:148] + b'%06o\0 ' % sum(h) + h[156:]


@pytest.mark.parametrize('form', ['spaces around the size', 'base-256 size', 'no NUL after the checksum'])
def test_tar_walk_reads_unusual_number_forms_exactly(tmp_path, form):
    "Numbers a writer may spell differently (not the fast path's plain form) are still read, by the exact per-header path."
    from realfake.containers import _tar_members
    c = _mixed_tar(tmp_path/'m.tar', n=40)
    with tarfile.open(c) as tf: size = tf.getmembers()[20].size
    field = {'spaces around the size': b'%10o \0' % size, 'base-256 size': b'\x80' + size.to_bytes(11, 'big'),
             'no NUL after the checksum': None}[form]
    if field is None: _patch_header(c, 20, lambda h: (lambda g: g[:148] + b'%07o ' % int(g[148:154], 8) + g[156:])(_with_checksum(h)))
    else: _patch_header(c, 20, lambda h: _with_checksum(h[:124] + field[:12].ljust(12, b'\0') + h[136:]))
    with tarfile.open(c) as tf: want = [(m.name, m.offset_data, m.size) for m in tf.getmembers() if m.isfile()]
    with open(c, 'rb') as f: got = _tar_members(f, str(c))
    assert list(zip(*got[:3])) == want


@pytest.mark.parametrize('k', [1, 25, 39])
def test_tar_walk_names_a_bad_header_in_the_middle_of_a_block(tmp_path, k):
    from realfake.containers import _tar_members
    c = _mixed_tar(tmp_path/'m.tar', n=40)
    off = _patch_header(c, k, lambda h: h[:10] + b'X' + h[11:])          # one byte of the name changed: the checksum is wrong
    with open(c, 'rb') as f, pytest.raises(ContainerError, match=f'bad header at offset {off:,}'): _tar_members(f, str(c))


@pytest.mark.parametrize('fmt', ['ustar', 'gnu'])
def test_tar_walk_checks_every_name_as_member_problem_does(tmp_path, fmt):
    "Runs of plain headers (names sliced, decoded and checked in one pass) keep and refuse exactly what the per-name check would."
    from realfake.containers import _tar_members, member_problem
    odd = ['./x.jpg', 'a//b.jpg', 'a/../b.jpg', 'a\\b.jpg', 'new\nline.jpg', '.hidden.jpg', 'tail/', 'ok/é.jpg',
           'p' * 60 + '/' + 'q' * 80 + '.jpg', 'bad\udcff.jpg']
    names = [f'{i:04d}.jpg' for i in range(200)]
    for k, n in enumerate(odd): names.insert(20 * k + 7, n)
    c = tmp_path/'odd.tar'
    with tarfile.open(c, 'w', format=tarfile.USTAR_FORMAT if fmt == 'ustar' else tarfile.GNU_FORMAT, encoding='utf-8',
                      errors='surrogateescape') as tf:
        for i, n in enumerate(names):
            ti = tarfile.TarInfo(n); data = bytes([i % 256]) * (i % 900); ti.size = len(data); tf.addfile(ti, io.BytesIO(data))
    with tarfile.open(c, encoding='utf-8', errors='surrogateescape') as tf:
        members = [(m.name, m.offset_data, m.size) for m in tf.getmembers() if m.isfile()]
    with open(c, 'rb') as f: got, offs, sizes, refused = _tar_members(f, str(c))
    want = [m for m in members if not member_problem(m[0], 'tar')]
    assert list(zip(got, offs, sizes)) == want and len(want) >= 200
    assert {'./x.jpg', 'a//b.jpg', 'a/../b.jpg', 'a\\b.jpg'} <= {n for n, _ in refused}
    assert sorted(refused) == sorted((m[0], member_problem(m[0], 'tar')) for m in members if member_problem(m[0], 'tar'))
