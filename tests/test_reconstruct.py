"""Aligned fakes (`realfake.reconstruct`), offline with tiny random-weight autoencoders built from config: pairing,
split integrity, formats and JPEG tables kept, odd sizes, tiles, corrupt inputs, resume after SIGKILL, two processes
under torchrun, a missing Hub id offline, img2img plumbing, diffusers kept optional, and training on the result."""
import json, os, signal, subprocess, sys, time
import forks
from helpers import cli_env
from pathlib import Path

import numpy as np, pandas as pd
import pytest
from PIL import Image

import realfake.reconstruct as R
import realfake.autoencoders as A, realfake.tiling as T
from realfake.core import RealfakeError, unescape_path
from realfake.jobs import JobEnv, ledger_path
from realfake.images import jpeg_info, load_image
from realfake.metadata import read_metadata, write_metadata

pytest.importorskip('diffusers')
pytestmark = pytest.mark.usefixtures('one_torch_thread')
ROOT = Path(__file__).resolve().parents[1]
ENV = cli_env(PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))

@pytest.fixture(scope='module')
def vaes(tmp_path_factory):
    "A tiny AutoencoderKL and a tiny AutoencoderTiny saved as diffusers folders (random weights, 8x downsampling)."
    d = tmp_path_factory.mktemp('vaes')
    return A.make_tiny_autoencoder(d/'tiny-kl'), A.make_tiny_autoencoder(d/'tiny-taesd', kind='tiny')

def _img(path, w, h, seed=0, **save):
    "A smooth random picture (compresses like a photo) saved at `path`."
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **save)
    return path

def _lines(path): return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]

# ---------------------------------------------------------------- pairing and splits
def test_metadata_input_pairs_and_splits(vaes, tmp_path):
    "Every real once, one fake per autoencoder with its split, group, prompt, size and format; relative paths."
    kl, tiny = vaes
    recs = []
    for i in range(8):
        _img(tmp_path/'data'/f'c{i % 3}'/f'{i}.jpg', 48 + 8 * i, 40, seed=i, quality=85)
        recs.append(dict(path=f'c{i % 3}/{i}.jpg', label='real', split=['train', 'valid', 'test'][i % 3], source='camera',
                         **({'group': f'class{i % 3}'} if i < 6 else {}), **({'prompt': f'photo {i}'} if i % 2 else {})))
    _img(tmp_path/'data'/'gen'/'x.png', 32, 32)
    recs.append(dict(path='gen/x.png', label='fake', split='train', source='sd'))
    write_metadata(recs, tmp_path/'data'/'metadata.jsonl')
    res = R.reconstruct([tmp_path/'data'/'metadata.jsonl'], ae=[str(kl), f'taesd={tiny}'], out_dir=tmp_path/'out',
                        bs=2, workers=1, progress=False)
    assert (res['done'], res['errors'], res['failed'], res['records']) == (16, 0, 0, 24)
    raw = _lines(tmp_path/'out'/'metadata.jsonl')
    assert not any(r['path'].startswith('/') for r in raw if r['label'] == 'fake')          # relative to the metadata file
    df = read_metadata(tmp_path/'out'/'metadata.jsonl')
    real, fake = df[df.label == 'real'], df[df.label == 'fake']
    assert len(real) == 8 and real.path.is_unique and 'gen/x.png' not in ' '.join(df.path)   # input fakes not carried
    assert sorted(fake.source.unique()) == ['taesd', 'tiny-kl'] and len(fake) == 16
    for r in real.itertuples():
        rel = os.path.relpath(r.path, tmp_path/'data')
        i = int(Path(rel).stem)
        assert r.split == ['train', 'valid', 'test'][i % 3]
        assert r.group == (f'class{i % 3}' if i < 6 else R.pair_group(rel))                  # a pair id where none was
        for name in ('tiny-kl', 'taesd'):
            f = fake[fake.path == str(tmp_path/'out'/name/rel)]
            assert len(f) == 1, (name, rel)
            f = f.iloc[0]
            assert (f.split, f.group, f.width, f.height, f.format) == (r.split, r.group, 48 + 8 * i, 40, 'JPEG')
            assert (f.prompt == r.prompt == f'photo {i}') if i % 2 else (pd.isna(f.prompt) and pd.isna(r.prompt))
            assert Image.open(f.path).size == (48 + 8 * i, 40)
    # a group never straddles splits: pairs share the group and the split
    assert (df.groupby('group').split.nunique() == 1).all()

def test_folder_input_hash_splits(vaes, tmp_path):
    "Folders are split by a hash of the path inside the folder: stable when the folder moves; pairs share split and group."
    kl, _ = vaes
    for i in range(30): _img(tmp_path/'a'/'photos'/f'd{i % 2}'/f'{i}.png', 16, 16, seed=i)
    kw = dict(ae=str(kl), bs=8, workers=1, progress=False, valid_pct=0.3, test_pct=0.2)
    R.reconstruct([tmp_path/'a'/'photos'], out_dir=tmp_path/'o1', **kw)
    (tmp_path/'b').mkdir(); (tmp_path/'a'/'photos').rename(tmp_path/'b'/'photos')
    R.reconstruct([tmp_path/'b'/'photos'], out_dir=tmp_path/'o2', **kw)
    d1, d2 = (read_metadata(tmp_path/o/'metadata.jsonl') for o in ('o1', 'o2'))
    split = lambda d: {Path(p).relative_to(Path(p).parents[1]).as_posix(): s for p, s, l in zip(d.path, d.split, d.label) if l == 'real'}
    assert split(d1) == split(d2) and len(split(d1)) == 30
    assert set(split(d1).values()) == {'train', 'valid', 'test'}
    assert all(split(d1)[k] == R.hash_split(k, 0.3, 0.2) for k in split(d1))
    assert (d1.groupby('group').agg(n=('path', 'size'), splits=('split', 'nunique'), labels=('label', 'nunique')) == [2, 1, 2]).all().all()
    assert set(d1[d1.label == 'real'].source) == {'photos'}
    assert (tmp_path/'o1'/'tiny-kl'/'photos'/'d0'/'0.png').is_file()

def test_any_file_name(vaes, tmp_path):
    "A file name that is not valid UTF-8 is written escaped in the metadata and its fake lands beside the same bytes."
    kl, _ = vaes
    name = os.fsdecode(b'caf\xe9 #1.png')
    _img(tmp_path/'in'/name, 16, 16)
    res = R.reconstruct([tmp_path/'in'], ae=str(kl), out_dir=tmp_path/'out', workers=1, progress=False)
    assert res['done'] == 1 and res['failed'] == 0
    assert (tmp_path/'out'/'tiny-kl'/'in'/name).is_file()
    df = read_metadata(tmp_path/'out'/'metadata.jsonl')
    assert sorted(Path(p).name for p in df.path) == ['caf\\xe9 #1.png'] * 2
    assert all(os.path.isfile(unescape_path(p)) for p in df.path)

# ---------------------------------------------------------------- pixels and formats
def test_formats_and_jpeg_tables_kept(vaes, tmp_path):
    "Same format, size, mode and JPEG quantization tables/subsampling as the source; EXIF rotation applied once."
    kl, _ = vaes
    d = tmp_path/'in'
    _img(d/'q61_444.jpg', 40, 24, quality=61, subsampling=0)
    _img(d/'q95_420.jpg', 40, 24, quality=95, subsampling=2)
    _img(d/'q30_422.jpg', 40, 24, quality=30, subsampling=1)
    Image.open(_img(d/'tmp.png', 40, 24)).convert('L').save(d/'grey.jpg', quality=80); (d/'tmp.png').unlink()
    custom = [list(range(1, 65)), [min(255, 2 * v) for v in range(1, 65)]]              # non-IJG tables
    Image.open(_img(d/'c.png', 40, 24)).save(d/'custom.jpg', qtables=custom, subsampling=2); (d/'c.png').unlink()
    _img(d/'rgb.png', 40, 24); Image.open(d/'rgb.png').convert('L').save(d/'grey.png')
    Image.open(d/'rgb.png').convert('RGBA').save(d/'alpha.png')
    Image.open(d/'rgb.png').save(d/'ll.webp', lossless=True); Image.open(d/'rgb.png').save(d/'lossy.webp', quality=70)
    Image.open(d/'rgb.png').save(d/'pic.bmp'); Image.open(d/'rgb.png').save(d/'pic.tiff')
    exif = Image.Exif(); exif[0x0112] = 6                                                   # rotate 90 degrees on display
    Image.open(d/'rgb.png').save(d/'rotated.jpg', exif=exif.tobytes(), quality=90)
    res = R.reconstruct([d], ae=str(kl), out_dir=tmp_path/'out', bs=4, workers=1, progress=False)
    assert res['errors'] == 0 and res['done'] == 13
    out = tmp_path/'out'/'tiny-kl'/'in'
    for src in sorted(d.iterdir()):
        o = out/src.name
        with Image.open(src) as a, Image.open(o) as b:
            assert b.format == a.format, src.name
            assert (b.mode == 'L') == (a.mode == 'L'), src.name
        assert load_image(o).size == load_image(src).size, src.name
        if a.format == 'JPEG':
            ja, jb = jpeg_info(src), jpeg_info(o)
            assert jb['qtables'] == ja['qtables'] and jb['subsampling'] == ja['subsampling'], src.name
    assert Image.open(out/'rotated.jpg').size == (24, 40) and Image.open(out/'rotated.jpg').getexif().get(0x0112) is None
    assert R.webp_lossless(out/'ll.webp') and not R.webp_lossless(out/'lossy.webp')
    with Image.open(out/'alpha.png') as o, Image.open(d/'alpha.png') as a:       # the source's own alpha channel, kept
        assert o.mode == 'RGBA' and np.array_equal(np.asarray(o.getchannel('A')), np.asarray(a.getchannel('A')))
    df = read_metadata(tmp_path/'out'/'metadata.jsonl')
    fk = df[df.label == 'fake'].set_index(df[df.label == 'fake'].path.map(lambda p: Path(p).name))
    assert fk.loc['rotated.jpg', ['width', 'height']].tolist() == [24, 40]
    assert fk.loc['ll.webp', 'format'] == 'WEBP' and fk.loc['pic.tiff', 'format'] == 'TIFF'

def test_what_the_source_carries_is_kept_or_recorded(vaes, tmp_path):
    "ICC, EXIF (upright), progressive mode and alpha are kept; an animated GIF reconstructed from its first frame is recorded."
    from PIL import ImageCms
    kl, _ = vaes
    d = tmp_path/'in'
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()
    exif = Image.Exif(); exif[0x0112] = 6; exif[0x010F] = 'CameraMaker'
    _img(d/'prog.jpg', 40, 24, quality=80, progressive=True, icc_profile=icc, exif=exif.tobytes())
    _img(d/'icc.png', 40, 24, icc_profile=icc)
    rgba = np.zeros((24, 40, 4), np.uint8); rgba[..., :3] = 120; rgba[:, :20, 3] = 255; rgba[:, 20:, 3] = 40
    Image.fromarray(rgba).save(d/'half.webp', lossless=True)
    frames = [Image.new('P', (40, 24), i) for i in range(3)]
    for f in frames: f.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * 759)
    frames[0].save(d/'anim.gif', save_all=True, append_images=frames[1:], duration=50, loop=0)
    res = R.reconstruct([d], ae=str(kl), out_dir=tmp_path/'out', bs=4, workers=1, progress=False)
    assert res['errors'] == 0 and res['done'] == 4
    out = tmp_path/'out'/'tiny-kl'/'in'
    with Image.open(out/'prog.jpg') as o:
        assert o.info.get('progressive') and o.info.get('icc_profile') == icc
        assert o.getexif().get(0x010F) == 'CameraMaker' and o.getexif().get(0x0112) is None and o.size == (24, 40)
    assert Image.open(out/'icc.png').info.get('icc_profile') == icc
    with Image.open(out/'half.webp') as o, Image.open(d/'half.webp') as a:
        assert o.mode == 'RGBA' and np.array_equal(np.asarray(o.getchannel('A')), np.asarray(a.getchannel('A')))
    diffs = pd.read_csv(tmp_path/'out'/'differences.csv')
    assert len(diffs) == 1 and diffs.path.iloc[0].endswith('anim.gif'), diffs
    assert diffs.difference.iloc[0] == 'animation: first of 3 frames' and diffs.autoencoder.iloc[0] == 'tiny-kl'


def test_odd_sizes_tiles_limits_and_corrupt_files(vaes, tmp_path):
    "1x1, 4000x10, 10x4000, sides not multiples of 8, a tiled image; a too-large and a corrupt file are error rows."
    kl, tiny = vaes
    d = tmp_path/'in'
    sizes = {'one.png': (1, 1), 'strip.jpg': (4000, 10), 'tall.png': (10, 4000), 'odd.png': (13, 21), 'big.png': (200, 180)}
    for n, (w, h) in sizes.items(): _img(d/n, w, h, quality=90) if n.endswith('jpg') else _img(d/n, w, h)
    _img(d/'huge.png', 250, 200)
    (d/'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0' + os.urandom(200))
    (d/'notes.png').write_text('not an image')
    res = R.reconstruct([d], ae=[str(kl), str(tiny)], out_dir=tmp_path/'out', tile=128, overlap=32, max_pixels=45_000,
                        bs=2, workers=1, progress=False)
    assert res['done'] == 2 * len(sizes) and res['failed'] == 6
    for name in ('tiny-kl', 'tiny-taesd'):
        for n, size in sizes.items():
            assert load_image(tmp_path/'out'/name/'in'/n, max_pixels=None).size == size, (name, n)
        assert not (tmp_path/'out'/name/'in'/'huge.png').exists()
    errs = (tmp_path/'out'/'errors.csv').read_text()
    assert 'huge.png' in errs and 'decompression bomb refused' in errs
    assert 'corrupt.jpg' in errs and 'notes.png' in errs and 'not an image' in errs
    df = read_metadata(tmp_path/'out'/'metadata.jsonl')
    assert len(df) == 3 * len(sizes) and not df.path.str.contains('huge|corrupt|notes').any()
    # the tiled image went through tiles (the tile seams blend two reconstructions): not the whole-image result
    whole = R.reconstruct([d/'big.png'], ae=str(kl), out_dir=tmp_path/'whole', tile=0, progress=False, workers=1)
    assert whole['done'] == 1
    a = np.asarray(Image.open(tmp_path/'out'/'tiny-kl'/'in'/'big.png'), int)
    b = np.asarray(Image.open(tmp_path/'whole'/'tiny-kl'/'in'/'big.png'), int)
    assert a.shape == b.shape and (a != b).any()

def test_identity_roundtrip_is_exact():
    "Padding, tiling, blending and the one rounding lose nothing when the autoencoder is perfect."
    class Identity:
        multiple = 8
        def __call__(self, x, keys=None, prompts=None): return x
    rng = np.random.default_rng(1)
    for h, w in [(1, 1), (10, 4000), (4000, 10), (13, 21), (300, 517)]:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert (T.reconstruct_arrays(Identity(), [a])[0] == a).all()
        assert (T.reconstruct_tiled(Identity(), a, tile=128, overlap=32, bs=3) == a).all()

def test_sample_is_seeded_and_bf16_runs(vaes, tmp_path):
    "--sample: reproducible per image whatever the batch; differs from the mode. bf16 runs on CPU and stays close."
    kl, _ = vaes
    for i in range(3): _img(tmp_path/'in'/f'{i}.png', 24, 16, seed=i)
    run = lambda out, **kw: R.reconstruct([tmp_path/'in'], ae=str(kl), out_dir=tmp_path/out, workers=1, progress=False, **kw)
    run('s1', sample=True, seed=3, bs=1); run('s2', sample=True, seed=3, bs=4); run('m', bs=4); run('b', bs=4, precision='bf16')
    px = lambda out, i: np.asarray(Image.open(tmp_path/out/'tiny-kl'/'in'/f'{i}.png'), int)
    for i in range(3):
        assert np.abs(px('s1', i) - px('s2', i)).max() <= 1
        assert np.abs(px('s1', i) - px('m', i)).mean() > 0.5
        assert np.abs(px('b', i) - px('m', i)).mean() < 3
    with pytest.raises(RealfakeError, match='made with seed 3, not 4'):
        run('s1', sample=True, seed=4)                  # same folder, another seed: refused, not mixed

def test_old_spellings_of_out(vaes, tmp_path, capsys):
    "--out is the folder: the old --out_dir still works (with a notice); the old --out FILE.jsonl is refused in one line."
    kl, _ = vaes
    _img(tmp_path/'in'/'a.png', 16, 16)
    with pytest.raises(RealfakeError, match='--out is now the folder'):
        R.realfake_reconstruct([str(tmp_path/'in')], ae=str(kl), out=str(tmp_path/'pairs.jsonl'))
    s = R.realfake_reconstruct([str(tmp_path/'in')], ae=str(kl), out_dir=str(tmp_path/'o'), workers=1, no_progress=True)
    assert '--out_dir is now --out' in capsys.readouterr().err and s['records'] == 2
    assert read_metadata(tmp_path/'o'/'metadata.jsonl').shape[0] == 2

def test_nothing_reconstructed_is_an_error_not_zero_records(vaes, tmp_path):
    "Every input missing: the command fails in one line (exit 2 as a command), and errors.csv names each one."
    kl, _ = vaes
    write_metadata([dict(path=str(tmp_path/f'gone{i}.png'), label='real', split='train', source='photos') for i in range(2)], tmp_path/'m.jsonl')
    with pytest.raises(RealfakeError, match='no image could be reconstructed: 2 failures'):
        R.realfake_reconstruct([str(tmp_path/'m.jsonl')], ae=str(kl), out=str(tmp_path/'o'), workers=1, no_progress=True)
    errs = pd.read_csv(tmp_path/'o'/'errors.csv')
    assert len(errs) == 2 and not (tmp_path/'o'/'metadata.jsonl').exists()

def test_an_input_inside_the_fakes_folder_is_refused_not_taken_for_a_fake(vaes, tmp_path):
    "A real folder that happens to sit at OUT/NAME is not one of our fakes: refused with the reason, never silently skipped."
    kl, _ = vaes
    _img(tmp_path/'o'/'tiny-kl'/'photos'/'a.png', 16, 16)
    with pytest.raises(RealfakeError, match='inside .* in the folder that an autoencoder'):
        R.reconstruct([tmp_path/'o'/'tiny-kl'/'photos'], ae=str(kl), out_dir=tmp_path/'o', workers=1, progress=False, env=JobEnv())

def test_our_own_fakes_are_skipped_when_out_is_inside_the_input(vaes, tmp_path):
    "OUT inside the input folder: a second run finds the fakes it wrote (by its ledger) and does not reconstruct them."
    kl, _ = vaes
    for i in range(2): _img(tmp_path/'in'/f'{i}.png', 16, 16, seed=i)
    first = R.reconstruct([tmp_path/'in'], ae=str(kl), out_dir=tmp_path/'in'/'aligned', workers=1, progress=False, env=JobEnv())
    again = R.reconstruct([tmp_path/'in'], ae=str(kl), out_dir=tmp_path/'in'/'aligned', workers=1, progress=False, env=JobEnv())
    assert first['records'] == again['records'] == 4 and again['images'] == 2 and again['skipped'] == 2

def test_a_process_does_its_share_only(vaes, tmp_path):
    "Process 1 of 2 (a JobEnv, as torchrun would set it) reconstructs its shard of the pairs and merges nothing."
    kl, _ = vaes
    for i in range(6): _img(tmp_path/'in'/f'{i}.png', 16, 16, seed=i)
    s = R.reconstruct([tmp_path/'in'], ae=str(kl), out_dir=tmp_path/'o', workers=1, progress=False, env=JobEnv(1, 2))
    mine = {r['rel'] for r in _lines(ledger_path(tmp_path/'o'/'progress', 1))}
    assert mine == {f'in/{i}.png' for i in range(6) if R.shard_of(f'in/{i}.png', 2) == 1} and s['shard'] == len(mine)
    assert 'records' not in s and not (tmp_path/'o'/'metadata.jsonl').exists()

# ---------------------------------------------------------------- resume
@pytest.mark.slow
def test_sigkill_then_resume(vaes, tmp_path):
    "Kill -9 after the first recorded batch; the rerun skips what was done and every pair appears exactly once."
    kl, _ = vaes
    for i in range(60): _img(tmp_path/'in'/f'{i:02d}.png', 64, 48, seed=i)
    cmd = [sys.executable, '-m', 'realfake.reconstruct', str(tmp_path/'in'), '--ae', str(kl), '--out', str(tmp_path/'out'),
           '--bs', '1', '--workers', '1', '--no_progress']
    p = forks.popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    prog = ledger_path(tmp_path/'out'/'progress', 0)
    t = time.time()
    while not (prog.exists() and prog.stat().st_size) and p.poll() is None and time.time() - t < 120: time.sleep(0.005)
    assert p.poll() is None, p.stderr.read().decode()[-2000:]
    p.send_signal(signal.SIGKILL); p.wait()
    first = [json.loads(l) for l in prog.read_bytes().split(b'\n')[:-1]]
    assert 1 <= len(first) < 60 and not (tmp_path/'out'/'metadata.jsonl').exists()
    r = forks.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f'{len(first)} already done' in r.stdout and f'{60 - len(first)} reconstructed' in r.stdout, r.stdout
    df = read_metadata(tmp_path/'out'/'metadata.jsonl')
    assert len(df) == 120 and df.path.is_unique
    fakes = sorted((tmp_path/'out'/'tiny-kl'/'in').iterdir())
    assert [f.name for f in fakes] == [f'{i:02d}.png' for i in range(60)]             # no temporary file left
    for f in fakes: assert load_image(f).size == (64, 48)
    recs = _lines(prog)
    assert sorted(r['rel'] for r in recs) == sorted(f'in/{i:02d}.png' for i in range(60))   # each pair recorded once

# ---------------------------------------------------------------- several processes
@pytest.mark.slow
def test_torchrun_two_cpu_processes(vaes, tmp_path):
    "torchrun, 2 CPU processes: each its shard (disjoint, complete), one merged metadata file written by rank 0."
    kl, _ = vaes
    for i in range(16): _img(tmp_path/'in'/f'{i:02d}.jpg', 24 + 8 * (i % 3), 16, seed=i, quality=90)
    r = forks.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        '-m', 'realfake.reconstruct', str(tmp_path/'in'), '--ae', str(kl), '--out', str(tmp_path/'out'),
                        '--bs', '2', '--workers', '1', '--no_progress'], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    shards = [{x['rel'] for x in _lines(ledger_path(tmp_path/'out'/'progress', k))} for k in (0, 1)]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert shards[0] | shards[1] == {f'in/{i:02d}.jpg' for i in range(16)}
    assert all(R.shard_of(rel, 2) == k for k in (0, 1) for rel in shards[k])
    df = read_metadata(tmp_path/'out'/'metadata.jsonl')
    assert len(df) == 32 and df.path.is_unique and (df.label == 'fake').sum() == 16
    assert 'rank 0 of 2' in r.stdout and 'rank 1 of 2' in r.stdout and r.stdout.count('records') == 1

# ---------------------------------------------------------------- offline, optional extra
@pytest.mark.slow
def test_missing_hub_id_offline_fails_fast_with_advice(tmp_path):
    "HF_HUB_OFFLINE=1 and an id that is not cached: exit 2, one line saying how to get the folder."
    env = {**ENV, 'HF_HUB_OFFLINE': '1', 'HF_HOME': str(tmp_path/'hf')}
    _img(tmp_path/'in'/'a.png', 16, 16)
    t = time.time()
    r = forks.run([sys.executable, '-m', 'realfake.reconstruct', str(tmp_path/'in'), '--ae', 'stabilityai/sd-vae-ft-mse',
                   '--out', str(tmp_path/'out')], env=env, capture_output=True, text=True, timeout=120)
    print(f"failed after {time.time() - t:.1f} s (process start and imports included)")
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('realfake_reconstruct: error: --ae stabilityai/sd-vae-ft-mse'), r.stderr
    assert 'HF_HUB_OFFLINE is set' in err[0] and 'hf download stabilityai/sd-vae-ft-mse --local-dir sd-vae-ft-mse' in err[0]
    assert 'Retrying' not in r.stderr and not (tmp_path/'out'/'sd-vae-ft-mse').exists()

@pytest.mark.slow
def test_diffusers_stays_optional(tmp_path):
    "No realfake module imports diffusers when imported; without it, `reconstruct` says how to install it, writing nothing."
    code = """
import sys, importlib, pkgutil, realfake
for m in pkgutil.iter_modules(realfake.__path__):
    if m.name.startswith('_'): continue
    try: importlib.import_module('realfake.' + m.name)
    except ImportError as e: assert m.name == 'app', e          # the web app's own extra may be missing
print('imported diffusers:', 'diffusers' in sys.modules)
sys.modules['diffusers'] = None                                  # as if it were not installed
import realfake.reconstruct as R
try: R.reconstruct([sys.argv[1]], ae=sys.argv[1], out_dir=sys.argv[2]); print('no error')
except ImportError as e: print('ImportError:', e)
"""
    _img(tmp_path/'m'/'a.png', 8, 8)
    r = forks.run([sys.executable, '-c', code, str(tmp_path/'m'), str(tmp_path/'out')], env=ENV, capture_output=True,
                  text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'imported diffusers: False' in r.stdout, r.stdout
    assert "ImportError: realfake_reconstruct needs diffusers: pip install 'realfake[reconstruct]'" in r.stdout, r.stdout
    assert not (tmp_path/'out').exists()                                                     # nothing written

# ---------------------------------------------------------------- img2img (plumbing, with a stand-in pipeline)
class _Pipe:
    "Stands in for a diffusers img2img pipeline (a real one needs transformers and weights)."
    calls = []
    def __call__(self, prompt, image, strength, num_inference_steps, guidance_scale, generator, output_type):
        _Pipe.calls.append(dict(prompt=prompt, shape=tuple(image.shape), strength=strength))
        assert output_type == 'pt' and 0 <= image.min() and image.max() <= 1
        return type('Out', (), {'images': image.flip(-1) * 0.5})()

def test_img2img_flag(tmp_path, monkeypatch):
    "--img2img loads a pipeline, passes each record's prompt (else --prompt), pads to 64, names the source NAME-img2img."
    loaded = []
    monkeypatch.setattr(R, 'load_img2img', lambda spec, device, dtype: loaded.append(spec) or _Pipe())
    _Pipe.calls.clear()
    (tmp_path/'sd15').mkdir()
    for i in range(3): _img(tmp_path/'d'/f'{i}.png', 40, 30, seed=i)
    write_metadata([dict(path=f'{i}.png', label='real', split='train', source='cam', **({'prompt': 'a dog'} if i == 1 else {}))
                    for i in range(3)], tmp_path/'d'/'m.jsonl')
    res = R.reconstruct([tmp_path/'d'/'m.jsonl'], ae=str(tmp_path/'sd15'), img2img=0.2, prompt='a photo', out_dir=tmp_path/'o',
                        bs=1, workers=1, progress=False)
    assert res['done'] == 3 and [s.name for s in loaded] == ['sd15-img2img']
    assert sorted(p for c in _Pipe.calls for p in c['prompt']) == ['a dog', 'a photo', 'a photo']
    assert {c['shape'] for c in _Pipe.calls} == {(1, 3, 64, 64)} and {c['strength'] for c in _Pipe.calls} == {0.2}
    df = read_metadata(tmp_path/'o'/'metadata.jsonl')
    assert set(df[df.label == 'fake'].source) == {'sd15-img2img'}
    a, b = np.asarray(Image.open(tmp_path/'d'/'0.png'), int), np.asarray(Image.open(tmp_path/'o'/'sd15-img2img'/'0.png'), int)
    assert b.shape == a.shape and np.abs(b - a).mean() > 10
    assert json.loads((tmp_path/'o'/'sd15-img2img'/'reconstruct.json').read_text())['strength'] == 0.2

# ---------------------------------------------------------------- the set trains unchanged
def test_realfake_train_trains_on_the_aligned_set(vaes, tmp_path):
    "The output metadata is an ordinary training set: one epoch of convnext_atto runs on it."
    from realfake.train import train, PRESETS
    kl, _ = vaes
    for i in range(24): _img(tmp_path/'in'/f'{i}.jpg', 40, 32, seed=i, quality=90)
    R.reconstruct([tmp_path/'in'], ae=str(kl), out_dir=tmp_path/'aligned', valid_pct=0.25, bs=8, workers=1, progress=False)
    res = train(str(tmp_path/'aligned'/'metadata.jsonl'), PRESETS['demo'].override(epochs=1, size=32, bs=8, lr=2e-3),
                out=tmp_path/'run', workers=0, cpu=True, quiet=True)
    assert np.isfinite(res['values']['valid_loss']) and (Path(res['model_dir'])/'model.safetensors').is_file()

# ---------------------------------------------------------------- records inside containers (issue 20)
def test_records_inside_a_tar_and_a_zip_are_reconstructed(vaes, tmp_path):
    """Metadata records pointing into a tar shard and a zip archive (`CONTAINER/MEMBER`) are read by the one image loader:
    each real gets its fake, the real record keeps its pointer, and a member that is not there is an error row."""
    import io, tarfile, zipfile
    from realfake.containers import pointer
    kl, _ = vaes
    blobs = [_img(tmp_path/'src'/f'{i}.png', 40 + 8 * i, 32, seed=i).read_bytes() for i in range(4)]
    d = tmp_path/'data'; d.mkdir()
    with tarfile.open(d/'000.tar', 'w') as tf:
        for i in (0, 1):
            ti = tarfile.TarInfo(f'k/{i}.png'); ti.size = len(blobs[i]); tf.addfile(ti, io.BytesIO(blobs[i]))
    with zipfile.ZipFile(d/'part.zip', 'w') as zf:
        for i in (2, 3): zf.writestr(f'{i}.png', blobs[i])
    recs = [dict(path=str(pointer(d/'000.tar', f'k/{i}.png')), label='real', split='train', source='tar') for i in (0, 1)]
    recs += [dict(path=str(pointer(d/'part.zip', f'{i}.png')), label='real', split='valid', source='zip') for i in (2, 3)]
    recs.append(dict(path=str(pointer(d/'000.tar', 'k/9.png')), label='real', split='train', source='tar'))   # not in the tar
    write_metadata(recs, d/'metadata.jsonl')
    res = R.reconstruct([d/'metadata.jsonl'], ae=str(kl), out_dir=tmp_path/'out', bs=2, workers=1, progress=False, env=JobEnv())
    assert (res['done'], res['errors']) == (4, 1), res
    df = read_metadata(tmp_path/'out'/'metadata.jsonl')
    real, fake = df[df.label == 'real'], df[df.label == 'fake']
    assert sorted(real.path) == sorted(r['path'] for r in recs[:4]) and len(fake) == 4
    for r in real.itertuples():                                   # each fake has its real's size and pair group
        f = fake[fake.group == r.group]
        assert len(f) == 1 and Image.open(f.path.iloc[0]).size == load_image(r.path).size
