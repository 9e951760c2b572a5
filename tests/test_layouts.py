"""Issue 11 ("know the data") and issue 14 items of realfake.prepare: JPEG quality estimation, the benchmark layouts
(genimage, forensynths, csv), kept splits, sampling independent of the mount point, symlinks into the other label,
unreadable folders, undecodable file names, and one-line CLI errors."""
import io, os, struct, zlib
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image, ImageFile, PngImagePlugin

from realfake.images import load_image, probe_image, estimate_jpeg_quality
from realfake.metadata import read_metadata
from helpers import run_cli_here
from realfake.sources import PrepareError, list_source
from realfake.sampling import sample_balanced, sample_kept_splits
from realfake.probe import probe_files, shortcut_warnings
from realfake.prepare import prepare, realfake_prepare

REPO = Path(__file__).resolve().parents[1]


def photo(w=48, h=32, seed=0) -> Image.Image:
    "A smooth, photo-like RGB image (JPEG tables matter on it, unlike on flat colours)."
    small = np.random.default_rng(seed).integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def save(path, im=None, **kw) -> Path:
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    (im or photo()).save(path, **kw)
    return path


def tree(root, files) -> Path:
    "Images at the relative paths `files` below `root` (each one different)."
    for i, f in enumerate(files): save(Path(root)/f, photo(16, 16, seed=i))
    return Path(root)


def rel(paths, root): return [os.path.relpath(p, root) for p in paths]


# ---------------------------------------------------------------- JPEG quality and the other probe details
@pytest.mark.parametrize('q', [5, 20, 35, 50, 65, 75, 85, 90, 95, 98, 100])
def test_quality_of_files_saved_at_known_qualities(tmp_path, q):
    "libjpeg (Pillow) files give their quality exactly; the probe and the metadata record it."
    p = save(tmp_path/'a.jpg', quality=q, subsampling=2)
    info = probe_image(p, details=True)
    assert abs(info['quality'] - q) <= 2 and info['subsampling'] == '4:2:0', info
    assert probe_files([str(p)], progress=False)['quality'].tolist() == [info['quality']]


@pytest.mark.parametrize('q', [30, 60, 80, 92])
def test_quality_of_another_encoders_tables(tmp_path, q):
    "Tables scaled another way (rounded up, as some encoders do) are within 2 of the quality they were made for."
    from realfake.images import _STD_LUMA, _STD_CHROMA
    scale = 5000 / q if q < 50 else 200 - 2 * q
    tables = [[int(min(255, max(1, np.ceil(v * scale / 100)))) for v in t] for t in (_STD_LUMA, _STD_CHROMA)]
    buf = io.BytesIO(); photo().save(buf, 'JPEG', qtables=tables)
    est, exact = estimate_jpeg_quality(Image.open(buf).quantization)
    assert abs(est - q) <= 2 and not exact, (q, est)
    p = tmp_path/'x.jpg'; p.write_bytes(buf.getvalue())
    assert abs(probe_image(p, details=True)['quality'] - q) <= 2


def _with_chunk(png:bytes, typ:bytes, data:bytes) -> bytes:
    "`png` with a chunk inserted just before IEND (after the pixel data)."
    chunk = struct.pack('>I', len(data)) + typ + data + struct.pack('>I', zlib.crc32(typ + data) & 0xffffffff)
    return png[:-12] + chunk + png[-12:]


def test_probe_details_are_read_from_headers_only(tmp_path, monkeypatch):
    exif = Image.Exif(); exif[0x010F] = 'Canon'
    save(tmp_path/'camera.jpg', quality=88, subsampling=1, exif=exif.tobytes())
    save(tmp_path/'comment.jpg', quality=95, subsampling=0, comment=b'Steps: 30')
    save(tmp_path/'plain.png')
    (tmp_path/'late_text.png').write_bytes(_with_chunk((tmp_path/'plain.png').read_bytes(), b'tEXt', b'parameters\0a cat, Steps: 20'))
    (tmp_path/'c2pa.png').write_bytes(_with_chunk((tmp_path/'plain.png').read_bytes(), b'caBX', b'\0' * 16))
    (tmp_path/'other_text.png').write_bytes(_with_chunk((tmp_path/'plain.png').read_bytes(), b'tEXt', b'Title\0holiday'))
    info = PngImagePlugin.PngInfo(); info.add_text('prompt', '{"1": {}}')
    save(tmp_path/'comfy.png', pnginfo=info)
    def boom(self, *a, **k): raise AssertionError('pixels were decoded')
    monkeypatch.setattr(ImageFile.ImageFile, 'load', boom)
    got = {p.name: probe_image(p, details=True) for p in tmp_path.iterdir()}
    pick = lambda n: tuple(got[n][k] for k in ('quality', 'subsampling', 'exif', 'gen_text'))
    assert pick('camera.jpg') == (88, '4:2:2', True, False)
    assert pick('comment.jpg') == (95, '4:4:4', False, True)
    assert pick('plain.png') == (None, None, False, False)
    assert got['late_text.png']['gen_text'] and got['c2pa.png']['gen_text'] and got['comfy.png']['gen_text']
    assert not got['other_text.png']['gen_text']                      # a title is not generator text


def test_probe_warns_about_quality_subsampling_exif_and_generator_text(tmp_path):
    exif = Image.Exif(); exif[0x010F] = 'Canon'
    for i in range(8):
        save(tmp_path/'real'/f'{i}.jpg', photo(32, 32, i), quality=70 + 3 * i, subsampling=2, exif=exif.tobytes())
        save(tmp_path/'fake'/f'{i}.jpg', photo(32, 32, 100 + i), quality=95, subsampling=0, comment=b'a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7')   # A1111's parameter line
    res = prepare([f'real:folder:{tmp_path}/real', f'fake:folder:{tmp_path}/fake'], probe=True, valid_pct=0, progress=False)
    w = res.warnings
    assert [x.split(' ')[0:3] for x in w if x.startswith('JPEG')] == [['JPEG', 'quality', 'differs'], ['JPEG', 'chroma', 'subsampling']], w
    assert any('median 80' in x and 'vs 95' in x for x in w), w
    assert any('100% of real vs 0% of fake images carry EXIF' in x for x in w), w
    assert any('0% of real vs 100% of fake images carry generator text' in x for x in w), w
    rep = res.report()
    assert 'files by label and source' in rep and '4:4:4 100%' in rep and '95 [95-95]' in rep
    assert sorted(res.df.quality[res.df.label == 'real']) == [70 + 3 * i for i in range(8)]
    assert set(res.df.quality[res.df.label == 'fake']) == {95}
    # matched classes: no quality, subsampling or metadata warning
    for i in range(8): save(tmp_path/'fake2'/f'{i}.jpg', photo(32, 32, 200 + i), quality=70 + 3 * i, subsampling=2, exif=exif.tobytes())
    res = prepare([f'real:folder:{tmp_path}/real', f'fake:folder:{tmp_path}/fake2'], probe=True, valid_pct=0, progress=False)
    assert res.warnings == []


# ---------------------------------------------------------------- the benchmark layouts
GENIMAGE = ['sd14/imagenet_ai_0419_sdv4/train/ai/a1.png', 'sd14/imagenet_ai_0419_sdv4/train/ai/a2.png',
            'sd14/imagenet_ai_0419_sdv4/train/nature/n1.JPEG', 'sd14/imagenet_ai_0419_sdv4/train/nature/n2.JPEG',
            'sd14/imagenet_ai_0419_sdv4/val/ai/a3.png', 'sd14/imagenet_ai_0419_sdv4/val/nature/n3.JPEG',
            'Midjourney/train/ai/m1.png', 'Midjourney/train/nature/m2.JPEG', 'Midjourney/val/AI/m3.png', 'Midjourney/val/Nature/m4.JPEG',
            'README.png', 'sd14/preview.png']


def test_genimage_layout(tmp_path):
    root = tree(tmp_path/'GenImage', GENIMAGE)
    d = list_source(f'auto:genimage:{root}', progress=False).set_index('rel')
    assert len(d) == 10                                               # README.png and sd14/preview.png: not in ai/nature
    assert d.loc['sd14/imagenet_ai_0419_sdv4/val/nature/n3.JPEG', ['label', 'source', 'split']].tolist() == ['real', 'sd14', 'valid']
    assert d.loc['Midjourney/val/AI/m3.png', ['label', 'source', 'split']].tolist() == ['fake', 'Midjourney', 'valid']
    assert d.group.isna().all()
    assert (d.label == 'real').sum() == 5 and set(d.split) == {'train', 'valid'}
    fakes = list_source(f'fake:genimage:{root}:gi', progress=False)  # LABEL fake: only the ai folders, NAME as prefix
    assert set(fakes.label) == {'fake'} and len(fakes) == 5 and set(fakes.source) == {'gi/sd14', 'gi/Midjourney'}
    one = list_source(f'auto:genimage:{root}/Midjourney:mj', progress=False)   # PATH is one generator's folder
    assert set(one.source) == {'mj'} and len(one) == 4


FORENSYNTHS = ['train/progan/airplane/0_real/1.png', 'train/progan/airplane/1_fake/2.png', 'train/progan/cat/0_real/3.png',
               'train/progan/cat/1_fake/4.png', 'val/progan/airplane/0_real/5.png', 'val/progan/airplane/1_fake/6.png',
               'test/biggan/0_real/7.png', 'test/biggan/1_fake/8.png', 'test/crn/0_real/9.png', 'test/crn/1_fake/10.png',
               'test/notes.png']


def test_forensynths_layout(tmp_path):
    root = tree(tmp_path/'CNNDetection', FORENSYNTHS)
    d = list_source(f'auto:forensynths:{root}', progress=False).set_index('rel')
    assert len(d) == 10
    assert d.loc['train/progan/cat/1_fake/4.png', ['label', 'source', 'group', 'split']].tolist() == ['fake', 'progan', 'cat', 'train']
    assert d.loc['test/crn/0_real/9.png', ['label', 'source', 'split']].tolist() == ['real', 'crn', 'test'] and pd.isna(d.loc['test/crn/0_real/9.png', 'group'])
    assert d.split.value_counts().to_dict() == {'train': 4, 'test': 4, 'valid': 2}
    # the test set alone, as it is distributed (no split folder): no splits, generators as sources
    t = list_source(f'auto:forensynths:{root}/test', progress=False)
    assert t.split.isna().all() and set(t.source) == {'biggan', 'crn'}


def test_csv_layout(tmp_path):
    tree(tmp_path/'data', ['imgs/a.jpg', 'imgs/b.png', 'imgs/c.jpg', 'elsewhere/d.png'])
    latin = os.fsdecode(b'caf\xe9.jpg'); save(tmp_path/'data'/'imgs'/latin)
    (tmp_path/'data'/'list.csv').write_bytes(
        b'\xef\xbb\xbfpath,label,source,split,group,comment\n'
        b'imgs/a.jpg,real,coco,train,g1,fine\n'
        b'imgs/b.png,1,,val,g1,\n'
        b'imgs/caf\\xe9.jpg,0,coco,test,,escaped name\n'
        b'imgs/c.jpg,fake,sd,,,\n'
        + str(tmp_path/'data'/'elsewhere'/'d.png').encode() + b',FAKE,sd,TEST,,\n'
        b'imgs/missing.jpg,real,,,,\n\n')
    from realfake.sources import _list
    d, problems = _list(f'auto:csv:{tmp_path}/data/list.csv')
    assert [Path(p).name for p in d.path] == ['a.jpg', 'b.png', latin, 'c.jpg', 'd.png']
    assert d.label.tolist() == ['real', 'fake', 'real', 'fake', 'fake']
    assert d.source.tolist() == ['coco', 'list', 'coco', 'sd', 'sd']
    assert d.split.tolist() == ['train', 'valid', 'test', None, 'test'] and d.group.tolist() == ['g1', 'g1', None, None, None]
    assert problems == [(str(tmp_path/'data'/'imgs'/'missing.jpg'), 'listed in the manifest: No such file or directory')]
    assert load_image(d.path[2]).size == (48, 32)                     # the escaped name is the file on disk
    # LABEL real/fake: a label column selects; without one, every row has that label
    assert list_source(f'fake:csv:{tmp_path}/data/list.csv', progress=False).label.tolist() == ['fake'] * 3
    (tmp_path/'data'/'paths.csv').write_text('path\nimgs/a.jpg\nimgs/c.jpg\n')
    assert list_source(f'real:csv:{tmp_path}/data/paths.csv:mine', progress=False)[['label', 'source']].values.tolist() == [['real', 'mine']] * 2
    with pytest.raises(PrepareError, match=r'paths.csv:1: header: needs the columns path, label'):
        list_source(f'auto:csv:{tmp_path}/data/paths.csv')


@pytest.mark.parametrize('text,msg', [('file,label\na.jpg,real\n', ':1: header: needs the columns path, label'),
                                      ('path,label\na.jpg,real\nb.jpg,maybe\n', ":3: label: 'maybe' is not one of real, fake, 0, 1"),
                                      ('path,label,split\na.jpg,real,holdout\n', ":2: split: 'holdout' is not one of"),
                                      ('path,label\n,real\n', ':2: path: empty'),
                                      ('path,label\nnope.jpg,real\n', 'none of the 1 files it lists exist')])
def test_csv_errors_name_the_file_and_line(tmp_path, text, msg):
    save(tmp_path/'a.jpg')
    (tmp_path/'m.csv').write_text(text)
    with pytest.raises(PrepareError, match=msg): list_source(f'auto:csv:{tmp_path}/m.csv')


# ---------------------------------------------------------------- splits the folders define
def test_keep_splits_genimage_and_forensynths(tmp_path):
    tree(tmp_path/'GenImage', GENIMAGE); tree(tmp_path/'CNNDetection', FORENSYNTHS)
    srcs = [f'auto:genimage:{tmp_path}/GenImage', f'auto:forensynths:{tmp_path}/CNNDetection']
    res = prepare(srcs, keep_splits=True, progress=False)
    listed = pd.concat([list_source(s, progress=False) for s in srcs]).set_index('path')
    assert (res.df.split.to_numpy() == listed.split[res.df.path].to_numpy()).all()        # every record kept its split
    c = pd.crosstab(res.df.split, res.df.label)
    assert c.real.tolist() == c.fake.tolist() and c.to_dict('index') == {'train': {'fake': 5, 'real': 5}, 'valid': {'fake': 3, 'real': 3},
                                                                       'test': {'fake': 2, 'real': 2}}
    assert any('kept the splits the folders define' in x for x in res.notes)
    drawn = prepare(srcs, valid_pct=0.5, progress=False)                                # without keep_splits: drawn anew
    assert any('--keep_splits keeps theirs' in x for x in drawn.notes)
    half = prepare(srcs, keep_splits=True, n=12, progress=False)                         # n shared among the splits
    assert pd.crosstab(half.df.split, half.df.label).to_dict('index') == {'train': {'fake': 3, 'real': 3}, 'valid': {'fake': 2, 'real': 2},
                                                                          'test': {'fake': 1, 'real': 1}}


def test_keep_splits_from_the_command_line(tmp_path):
    tree(tmp_path/'GenImage', GENIMAGE)
    r = run_cli(f'auto:genimage:{tmp_path}/GenImage', '--keep_splits', '--out', tmp_path/'m.jsonl', '--no_progress', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = read_metadata(tmp_path/'m.jsonl')
    assert dict(zip(m.path.map(lambda p: Path(p).name), m.split)) == {
        'a1.png': 'train', 'a2.png': 'train', 'n1.JPEG': 'train', 'n2.JPEG': 'train', 'm1.png': 'train', 'm2.JPEG': 'train',
        'a3.png': 'valid', 'n3.JPEG': 'valid', 'm3.png': 'valid', 'm4.JPEG': 'valid'}


# ---------------------------------------------------------------- sampling never depends on where the folders are
def test_same_tree_in_two_parent_folders_gives_the_same_sample(tmp_path):
    files = [f'natural/{i:03d}.jpg' for i in range(40)] + [f'sd/{i:03d}.png' for i in range(60)] + [f'mj/{i:03d}.png' for i in range(30)]
    picks = []
    for parent in ('a', 'some/much/deeper/other_parent'):
        root = tmp_path/parent/'gen'
        for f in files: (root/f).parent.mkdir(parents=True, exist_ok=True); (root/f).write_bytes(b'x')
        res = prepare(f'auto:generators:{root}', n=40, valid_pct=0.25, seed=7, progress=False)
        picks.append(sorted(zip(rel(res.df.path, root), res.df.split)))
    assert picks[0] == picks[1] and len(picks[0]) == 40
    other = prepare(f'auto:generators:{tmp_path}/a/gen', n=40, valid_pct=0.25, seed=8, progress=False)
    assert sorted(rel(other.df.path, tmp_path/'a'/'gen')) != [p for p, _ in picks[0]]   # the seed still matters


# ---------------------------------------------------------------- symlinks, unreadable folders, odd names
def test_symlinked_folder_into_the_other_label(tmp_path):
    g = tree(tmp_path/'gen', [f'natural/r{i}.jpg' for i in range(6)] + [f'sd14/f{i}.png' for i in range(6)] + [f'mj/f{i}.png' for i in range(6)])
    os.symlink(g/'sd14', g/'natural'/'more')                       # real folder reaching into the fakes
    res = prepare(f'auto:generators:{g}', progress=False)
    assert sorted(Path(p).name for p in res.df.path[res.df.label == 'real']) == [f'r{i}.jpg' for i in range(6)]
    assert not res.df.path.str.contains('sd14').any()             # the six fakes carried both labels: all dropped
    loud = [w for w in res.warnings if 'both real and fake' in w]
    assert len(loud) == 1 and loud[0].startswith('6 files were listed as both real and fake') and 'check the sources' in loud[0]
    assert f"-> {g/'sd14'}" in res.report()                       # the report shows the file each route resolves to
    # the same file under two routes with one label: kept once, reported
    h = tree(tmp_path/'h', [f'real/{i}.jpg' for i in range(4)] + [f'fake/{i}.png' for i in range(4)])
    os.symlink(h/'real', tmp_path/'real_again')
    res = prepare([f'real:folder:{h}/real', f'real:folder:{tmp_path}/real_again:again', f'fake:folder:{h}/fake'], progress=False)
    assert len(res.df) == 8 and len(res.duplicates) == 4 and set(res.duplicates.labels) == {'real'}
    assert not any('both real and fake' in w for w in res.warnings)


def test_hard_links_are_one_file(tmp_path):
    "A hard link is the same file under another name: into the other label, every copy is dropped; within one label, kept once."
    g = tree(tmp_path/'gen', [f'natural/r{i}.jpg' for i in range(4)] + [f'sd14/f{i}.png' for i in range(4)])
    os.link(g/'sd14'/'f0.png', g/'natural'/'looks_real.png')               # one fake file, also listed as real
    os.link(g/'natural'/'r0.jpg', g/'natural'/'r0_again.jpg')              # one real file under two names
    res = prepare(f'auto:generators:{g}', progress=False)
    names = sorted(Path(p).name for p in res.df.path)
    assert 'f0.png' not in names and 'looks_real.png' not in names         # both labels: every copy dropped
    assert names.count('r0.jpg') + names.count('r0_again.jpg') == 1 and len(names) == 7 - 1
    loud = [w for w in res.warnings if 'both real and fake' in w]
    assert len(loud) == 1 and loud[0].startswith('1 files were listed as both real and fake') and 'hard link' in loud[0]
    # across sources, one of them a CSV manifest: the listing's report names the conflict
    (tmp_path/'solo').mkdir(); os.link(g/'sd14'/'f1.png', tmp_path/'solo'/'copy.png')
    (tmp_path/'list.csv').write_text('path,label\ngen/sd14/f1.png,fake\ngen/sd14/f2.png,fake\n')
    res = prepare([f'fake:csv:{tmp_path}/list.csv', f'real:folder:{tmp_path}/solo', f'real:folder:{g}/natural'], progress=False)
    assert sorted(res.duplicates.labels) == ['fake,real', 'real'] and res.duplicates['count'].tolist() == [2, 2]   # + r0's two names
    assert not any(Path(p).name in ('f1.png', 'copy.png') for p in res.df.path)

def test_unreadable_folders_are_counted_in_the_report(tmp_path, monkeypatch):
    g = tree(tmp_path/'gen', [f'natural/{i}.jpg' for i in range(4)] + [f'sd/{i}.png' for i in range(4)] + ['sd/secret/x.png'])
    scandir = os.scandir
    def locked(d):                                              # as chmod 0 does, also for root
        if os.fspath(d) == str(g/'sd'/'secret'): raise PermissionError(13, 'Permission denied', os.fspath(d))
        return scandir(d)
    monkeypatch.setattr(os, 'scandir', locked)
    res = prepare(f'auto:generators:{g}', progress=False)
    rep = res.report()
    assert 'listed 8 images; sampled 8; 1 folder(s) or file(s) could not be read' in rep
    assert f"{g/'sd'/'secret'}: Permission denied" in rep
    assert any('could not be read' in w for w in res.warnings)


def test_latin1_file_name_through_prepare_read_and_load(tmp_path):
    name = os.fsdecode(b'caf\xe9.jpg')
    save(tmp_path/'real'/name, photo(20, 10)); save(tmp_path/'real'/'ok.jpg'); save(tmp_path/'fake'/'a.png'); save(tmp_path/'fake'/'b.png')
    gen = os.fsdecode(b'g\xe9n\xe9rateur')                      # a generator folder with a Latin-1 name: a source name
    save(tmp_path/'gens'/'natural'/'n.jpg'); save(tmp_path/'gens'/gen/'f.png')
    out = tmp_path/'m.jsonl'
    res = realfake_prepare([f'real:folder:{tmp_path}/real', f'fake:folder:{tmp_path}/fake'], out=str(out), valid_pct=0,
                           probe=True, content_hash=True, no_progress=True)
    assert len(res.df) == 4
    m = read_metadata(out)
    p = [x for x in m.path if x.endswith('.jpg') and 'ok' not in x][0]
    assert os.fsencode(p) == os.fsencode(tmp_path/'real') + b'/caf\xe9.jpg' and load_image(p).size == (20, 10)
    assert m.quality[m.path == p].tolist() == [75] and m.quality[m.path.str.endswith('.png')].isna().all()   # Pillow's default quality
    res = prepare(f'auto:generators:{tmp_path}/gens', progress=False)
    assert 'g\\xe9n\\xe9rateur' in set(res.df.source)
    # the command prints its report with the escaped name, and writes the file
    r = run_cli(f'real:folder:{tmp_path}/real', f'fake:folder:{tmp_path}/fake', '--probe', '--out', tmp_path/'m2.jsonl',
                '--valid_pct', '0', '--no_progress', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert read_metadata(tmp_path/'m2.jsonl').path.tolist() == m.path.tolist()


# ---------------------------------------------------------------- one-line errors, exit status 2
def run_cli(*args, cwd):
    "Run realfake_prepare as its console script does (`realfake.cli.main`), in process: only its output is checked."
    return run_cli_here('realfake_prepare', *args, cwd=cwd)


@pytest.mark.parametrize('args,msg', [
    (['maybe:folder:{t}/r'], "label must be real, fake or auto, not 'maybe'"),
    (['real:tarball:{t}/r'], "unknown layout 'tarball'"),
    (['auto:folder:{t}/r'], "label 'auto' only works with"),
    (['real:folder:{t}/r', 'fake:folder:{t}/f', '--quota', 'r=1.5'], "quota 'r=1.5': expected"),
    (['real:folder:{t}/r', 'fake:folder:{t}/f', '--quota', 'r=nan'], "quota 'r=nan': expected"),
    (['real:folder:{t}/r', 'fake:folder:{t}/f', '--n', '1'], 'n must be at least 2'),
    (['real:folder:{t}/r', 'fake:folder:{t}/f', '--valid_pct', '1.5'], 'must be >= 0 with a sum below 1'),
    (['real:folder:{t}/r', 'fake:folder:{t}/f', '--workers', '0'], '--workers must be at least 1'),
    (['real:folder:{t}/r', 'fake:folder:{t}/f', '--out', '{t}'], 'is a folder'),
    (['real:folder:{t}/r', 'fake:folder:{t}/f', '--out', '{t}/exists.jsonl'], 'already exists; pass --overwrite'),
    (['real:folder:{t}/r', 'fake:folder:{t}/f', '--keep_splits', '--quota', 'r=3'], 'quotas must be fractions'),
    (['real:folder:{t}/r', 'real:folder:{t}/f'], 'cannot balance'),
    (['auto:csv:{t}/bad.csv'], "bad.csv:2: label: 'yes' is not one of"),
])
def test_cli_user_errors_are_one_line_with_status_2(tmp_path, args, msg):
    tree(tmp_path, ['r/1.jpg', 'r/2.jpg', 'f/1.png', 'f/2.png'])
    (tmp_path/'exists.jsonl').write_text('keep me\n')
    (tmp_path/'bad.csv').write_text('path,label\nr/1.jpg,yes\n')
    r = run_cli(*[a.format(t=tmp_path) for a in args], '--no_progress', cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith('realfake_prepare: error: '), r.stderr
    assert msg in lines[0], lines[0]
    assert (tmp_path/'exists.jsonl').read_text() == 'keep me\n' and not (tmp_path/'metadata.jsonl').exists()


def test_sample_functions_agree_without_kept_splits():
    "Records without any split: keep_splits draws them exactly as sample_balanced does (per split: balanced)."
    df = pd.DataFrame({'path': [f'/x/{i}.jpg' for i in range(200)], 'rel': [f'{i}.jpg' for i in range(200)],
                       'label': ['real', 'fake'] * 100, 'source': 's'})
    a, b = sample_balanced(df, valid_pct=0.2, seed=1), sample_kept_splits(df, valid_pct=0.2, seed=1)
    assert sorted(zip(a.path, a.split)) == sorted(zip(b.path, b.split))
    assert shortcut_warnings(pd.DataFrame({'label': ['real', 'fake'], 'width': [None, None]})) == []


def test_probe_on_the_genimage_sample(genimage_dir):
    "The shared GenImage sample: every file a JPEG with a quality and a subsampling; real and fake alike, so no warning."
    res = prepare(f'auto:generators:{genimage_dir}', probe=True, progress=False)
    assert len(res.df) and set(res.df.format) == {'JPEG'} and res.df.quality.between(1, 100).all()
    assert res.probed.subsampling.notna().all() and res.warnings == []
    assert 'files by label and source' in res.report()


def test_latin1_names_in_every_layout(tmp_path):
    "Folder and file names that are not UTF-8 as classes, generators, ForenSynths classes, manifest rows: listed, probed, hashed, written."
    L = os.fsdecode(b'\xe9t\xe9')
    tree(tmp_path, [f'cls/{L}/a.jpg', f'cls/n01/{L}.jpg', f'i2d/00000/{L}.jpg', f'gi/{L}/train/ai/{L}.png', f'gi/{L}/train/nature/b.jpg',
                    f'fs/{L}/{L}/0_real/c.png', f'fs/{L}/{L}/1_fake/d.png'])
    (tmp_path/'i2d'/'00000'/f'{L}.txt').write_text('a caption')
    (tmp_path/'i2d'/'00000'/f'{L}.jpg').write_bytes((tmp_path/'cls'/L/'a.jpg').read_bytes())          # identical to a real one
    (tmp_path/'list.csv').write_bytes(b'path,label\ncls/n01/\xe9t\xe9.jpg,real\ngi/\\xe9t\\xe9/train/ai/\\xe9t\\xe9.png,fake\n')   # raw and escaped
    assert list_source(f'real:classes:{tmp_path}/cls', progress=False).group.tolist() == ['n01', '\\xe9t\\xe9']
    assert list_source(f'fake:img2dataset:{tmp_path}/i2d', progress=False).prompt.tolist() == ['a caption']
    assert list_source(f'auto:csv:{tmp_path}/list.csv', progress=False).path.map(os.path.exists).all()
    res = realfake_prepare([f'real:classes:{tmp_path}/cls', f'fake:img2dataset:{tmp_path}/i2d', f'auto:genimage:{tmp_path}/gi',
                            f'auto:forensynths:{tmp_path}/fs'], out=str(tmp_path/'m.jsonl'), keep_splits=True, probe=True,
                           content_hash=True, prompt_groups=True, no_progress=True)
    assert '\\xe9t\\xe9' in set(res.df.source) | set(res.df.group.dropna()) and '\\xe9t\\xe9' in res.report()
    assert len(res.identical) == 2 and res.identical.cross_label.all()
    m = read_metadata(tmp_path/'m.jsonl')
    assert len(m) == len(res.df) == 6 and m.path.map(os.path.exists).all()


@pytest.mark.parametrize('entry', ['prepare', 'realfake_prepare'])
def test_symlink_into_the_other_label_is_named_when_prepare_fails(tmp_path, entry):
    "fake/loop_real -> ../real: every real file is also listed as fake, so none is left; the failure says why, naming a file."
    g = tree(tmp_path/'d', [f'real/r{i}.jpg' for i in range(4)] + [f'fake/f{i}.png' for i in range(4)])
    os.symlink('../real', g/'fake'/'loop_real')
    srcs = [f'real:folder:{g}/real', f'fake:folder:{g}/fake']
    if entry == 'prepare':
        with pytest.raises(PrepareError, match=r"cannot balance.*4 files were listed as both real and fake, e\.g\. .*r0\.jpg.*symlink"):
            prepare(srcs, progress=False)
    else:
        from helpers import run_cli
        r = run_cli('realfake_prepare', *srcs, '--out', tmp_path/'m.jsonl')
        assert r.returncode == 2 and 'cannot balance' in r.stderr and 'both real and fake' in r.stderr and 'r0.jpg' in r.stderr, r.stderr
