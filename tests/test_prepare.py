"Tests of realfake.prepare: source layouts, balanced sampling and split invariants, probing, hashing, the CLI."
import json, os, re
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image

import realfake.metadata as rmeta
from realfake.metadata import read_metadata
from helpers import run_cli_here
from realfake.core import VOCABULARY
from realfake.sources import PrepareError, Source, parse_source, list_source, find_duplicates, drop_duplicates
from realfake.sampling import sample_balanced, parse_quotas
from realfake.probe import probe_files, shortcut_warnings, find_identical
from realfake.prepare import prepare, realfake_prepare

REPO = Path(__file__).resolve().parents[1]


def img(path, size=(8, 8), color=(120, 60, 30), fmt=None):
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, color).save(path, format=fmt)
    return path


def noise(path, seed, size=(16, 16)):
    "A unique image (random pixels), saved losslessly or not by suffix."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def names(paths): return sorted(Path(p).name for p in paths)


def records(n_inet=600, n_coco=400, n_fake=2000, n_classes=50, seed=0):
    "Synthetic records (no files): imagenet real with class groups, coco real without, one fake source."
    r = np.random.default_rng(seed)
    return pd.DataFrame({
        'path': [f'/in/{i}.jpg' for i in range(n_inet)] + [f'/coco/{i}.jpg' for i in range(n_coco)]
                + [f'/sd/{i}.png' for i in range(n_fake)],
        'label': ['real'] * (n_inet + n_coco) + ['fake'] * n_fake,
        'source': ['imagenet'] * n_inet + ['coco'] * n_coco + ['sd'] * n_fake,
        'group': [f'n{c:03d}' for c in r.integers(0, n_classes, n_inet)] + [None] * (n_coco + n_fake)})


# ---------------------------------------------------------------- sources and layouts
def test_parse_source():
    assert parse_source('real:classes:/d/imagenet/train:inet') == Source('real', 'classes', '/d/imagenet/train', 'inet')
    assert parse_source('fake:folder:rel/dir') == Source('fake', 'folder', 'rel/dir', None)
    assert parse_source('real:folder:C:\\x') == Source('real', 'folder', 'C:\\x', None)
    for bad, msg in [('real:/x', 'expected LABEL:LAYOUT:PATH'), ('real:tar:/x', 'unknown layout'),
                     ('both:folder:/x', 'label must be'), ('auto:classes:/x', "only works with the generators")]:
        with pytest.raises(PrepareError, match=msg): parse_source(bad)


def test_folder_layout(tmp_path):
    for p in ['a.jpg', 'sub/b.PNG', 'sub/deeper/c.webp']: img(tmp_path/'photos'/p, fmt='PNG' if p.endswith('PNG') else None)
    (tmp_path/'photos/readme.txt').write_text('x')
    d = list_source(f'real:folder:{tmp_path}/photos', progress=False)
    assert names(d.path) == ['a.jpg', 'b.PNG', 'c.webp']
    assert set(d.label) == {'real'} and set(d.source) == {'photos'} and d.group.isna().all()
    assert all(os.path.isabs(p) for p in d.path)
    assert set(list_source(f'fake:folder:{tmp_path}/photos:mine', progress=False).source) == {'mine'}


def test_classes_layout(tmp_path):
    for p in ['n01/a.jpg', 'n01/b.jpg', 'n02/x/c.jpg', 'stray.jpg']: img(tmp_path/'inet'/p)
    d = list_source(f'real:classes:{tmp_path}/inet:imagenet', progress=False)
    assert dict(zip(names(d.path), d.sort_values('path').group)) == {'a.jpg': 'n01', 'b.jpg': 'n01', 'c.jpg': 'n02'}
    assert set(d.source) == {'imagenet'}                   # stray.jpg (no class folder) is skipped


def test_img2dataset_layout(tmp_path):
    root = tmp_path/'dl'
    for i in (1, 2, 3): img(root/'00000'/f'{i:09d}.jpg')
    img(root/'00001'/'000010000.jpg')
    (root/'00000/000000001.txt').write_text('a cat on a mat\n')
    (root/'00000/000000001.json').write_text(json.dumps({'caption': 'other', 'width': 8, 'height': 6, 'status': 'success'}))
    (root/'00000/000000002.json').write_text(json.dumps({'caption': 'from the json'}))
    (root/'00000/000000003.json').write_text('{not json')
    (root/'00000.parquet').write_bytes(b'PAR1')
    d = list_source(f'fake:img2dataset:{root}:laion', progress=False)
    d.index = d.path.map(lambda p: Path(p).name)
    assert list(d.index) == ['000000001.jpg', '000000002.jpg', '000000003.jpg', '000010000.jpg']
    assert d.loc['000000001.jpg', 'prompt'] == 'a cat on a mat'       # the .txt caption wins
    assert d.loc['000000002.jpg', 'prompt'] == 'from the json'        # json caption when no .txt
    assert pd.isna(d.loc['000000003.jpg', 'prompt']) and pd.isna(d.loc['000010000.jpg', 'prompt'])
    assert (d.loc['000000001.jpg', 'width'], d.loc['000000001.jpg', 'height']) == (8, 6)
    assert d.loc[['000000002.jpg', '000000003.jpg'], 'width'].isna().all()


def test_img2dataset_prompt_groups(tmp_path):
    root = tmp_path/'dl'
    for i in range(40):
        img(root/'00000'/f'{i:09d}.jpg', color=(i, 0, 0))
        (root/'00000'/f'{i:09d}.txt').write_text(f'prompt {i % 4}')
        img(tmp_path/'real'/f'{i}.jpg', color=(0, i, 0))
    res = prepare([f'fake:img2dataset:{root}', f'real:folder:{tmp_path}/real'], valid_pct=0.25, prompt_groups=True,
                  progress=False)
    fakes = res.df[res.df.label == 'fake']
    assert fakes.group.nunique() == 4 and (fakes.groupby('prompt').split.nunique() == 1).all()
    assert set(fakes.split) == {'train', 'valid'}


def test_generators_layout(tmp_path):
    g = tmp_path/'gen'
    for p in ['natural/r1.jpg', 'REAL/r2.jpg', 'midjourney/f1.png', 'sd14/train/nature/r3.jpg', 'sd14/train/ai/f2.png',
              'mine/f3.png', 'top.jpg']:
        img(g/p)
    d = list_source(f'auto:generators:{g}', progress=False)
    got = {Path(p).name: (l, s) for p, l, s in zip(d.path, d.label, d.source)}
    assert got == {'r1.jpg': ('real', 'natural'), 'r2.jpg': ('real', 'REAL'), 'f1.png': ('fake', 'midjourney'),
                   'r3.jpg': ('real', 'sd14'), 'f2.png': ('fake', 'sd14'), 'f3.png': ('fake', 'mine')}
    d = list_source(f'auto:generators:{g}', real_names=['mine'], progress=False)
    assert set(d.path[d.label == 'real'].map(lambda p: Path(p).name)) == {'f3.png'}
    assert set(list_source(f'fake:generators:{g}:gi', progress=False).source) == {'gi/natural', 'gi/REAL', 'gi/midjourney', 'gi/sd14', 'gi/mine'}


def test_generators_on_shared_genimage_sample(genimage_dir):
    d = list_source(f'auto:generators:{genimage_dir}', progress=False)
    n_nat = sum(1 for p in (genimage_dir/'natural').iterdir() if p.suffix.lower() in ('.jpg', '.jpeg', '.png'))
    assert (d.label == 'real').sum() == n_nat and set(d.source[d.label == 'real']) == {'natural'}
    assert 'natural' not in set(d.source[d.label == 'fake']) and d.source.nunique() >= 3
    s = sample_balanced(d, valid_pct=0.2, seed=0)
    assert (s.label == 'real').sum() == (s.label == 'fake').sum() == n_nat


def test_missing_or_empty_source(tmp_path):
    with pytest.raises(PrepareError, match='folder not found'): list_source(f'real:folder:{tmp_path}/nope', progress=False)
    (tmp_path/'empty').mkdir()
    with pytest.raises(PrepareError, match='no images'): list_source(f'real:folder:{tmp_path}/empty', progress=False)


# ---------------------------------------------------------------- sampling and splits
@pytest.mark.parametrize('seed', [0, 1, 7])
def test_split_invariants(seed):
    recs = records()
    s = sample_balanced(recs, n=1000, valid_pct=0.1, test_pct=0.1, seed=seed)
    assert len(s) == 1000 and s.label.value_counts().to_dict() == {'real': 500, 'fake': 500}
    assert not s.path.duplicated().any()                                       # no path in two splits
    assert set(s.path) <= set(recs.path)
    assert (s.dropna(subset=['group']).groupby('group').split.nunique() == 1).all()   # no group in two splits
    for split in ('valid', 'test'):
        c = s[s.split == split].label.value_counts()
        assert 35 <= c['real'] <= 70 and 45 <= c['fake'] <= 55, (split, c.to_dict())  # each label ~10% (+ one group)
    assert s.split.isin(['train', 'valid', 'test']).all()


def test_same_seed_same_output_any_order():
    recs = records()
    a = sample_balanced(recs, n=800, seed=3)
    pd.testing.assert_frame_equal(a, sample_balanced(recs, n=800, seed=3))
    b = sample_balanced(recs.sample(frac=1, random_state=0), n=800, seed=3)
    key = lambda d: d.sort_values('path').reset_index(drop=True)
    pd.testing.assert_frame_equal(key(a), key(b))                               # listing order is irrelevant
    assert set(sample_balanced(recs, n=800, seed=4).path) != set(a.path)


def test_group_shared_by_labels_gets_one_split():
    df = pd.DataFrame({'path': [f'/{l}/{i}' for l in ('real', 'fake') for i in range(300)],
                       'label': [l for l in ('real', 'fake') for _ in range(300)], 'source': 's',
                       'group': [f'c{i % 30}' for _ in range(2) for i in range(300)]})
    s = sample_balanced(df, valid_pct=0.2, seed=2)
    assert (s.groupby('group').split.nunique() == 1).all() and 0.1 <= (s.split == 'valid').mean() <= 0.3


def test_balance_cut_to_smaller_label_and_errors():
    recs = records()
    assert sample_balanced(recs, n=100_000).label.value_counts().to_dict() == {'real': 1000, 'fake': 1000}
    with pytest.raises(PrepareError, match='cannot balance'): sample_balanced(recs[recs.label == 'fake'])
    with pytest.raises(PrepareError, match='labels must be'): sample_balanced(recs.assign(label='fake?'))
    with pytest.raises(PrepareError, match='sum below 1'): sample_balanced(recs, valid_pct=0.5, test_pct=0.5)


def test_quotas():
    recs = records()
    real = lambda s: s[s.label == 'real'].source.value_counts().to_dict()
    assert real(sample_balanced(recs, n=1000, quotas={'coco': 0.2})) == {'imagenet': 400, 'coco': 100}
    assert real(sample_balanced(recs, n=1000, quotas=parse_quotas('coco=350'))) == {'imagenet': 150, 'coco': 350}
    assert parse_quotas('a=50%, b=0.25,c=10') == {'a': 0.5, 'b': 0.25, 'c': 10}
    with pytest.raises(PrepareError, match='has only 400'): sample_balanced(recs, n=1000, quotas={'coco': 450})
    with pytest.raises(PrepareError, match='unknown source'): sample_balanced(recs, n=1000, quotas={'flickr': 0.1})
    with pytest.raises(PrepareError, match='quota'): parse_quotas('coco=2.5')


def test_duplicate_paths_reported(tmp_path):
    for i in range(6):
        img(tmp_path/'real'/f'{i}.jpg', color=(i, 0, 0)); img(tmp_path/'fake'/f'{i}.png', color=(0, i, 0))
        img(tmp_path/'fake2'/f'{i}.png', color=(0, 0, i))
    res = prepare([f'real:folder:{tmp_path}/real', f'real:folder:{tmp_path}/real/../real:again',
                   f'fake:folder:{tmp_path}/fake', f'fake:folder:{tmp_path}/fake2', f'real:folder:{tmp_path}/fake:oops'],
                  progress=False)
    d = res.duplicates.set_index(res.duplicates.path.map(lambda p: Path(p).name))
    assert len(d) == 12 and (d['count'] == 2).all() and res.n_listed == 30
    assert d.loc['0.jpg', 'sources'] == 'real,again' and d.loc['0.png', 'labels'] == 'fake,real'
    # paths listed as both real and fake are dropped entirely; the others are kept once
    assert not res.df.path.str.contains(f'{os.sep}fake{os.sep}', regex=False).any()
    assert res.df.label.value_counts().to_dict() == {'real': 6, 'fake': 6} and not res.df.path.duplicated().any()
    rep = res.report()
    assert '12 files were listed more than once' in rep and '6 listed as both real and fake were dropped' in rep
    df, rep = drop_duplicates(pd.DataFrame({'path': ['a', 'a', 'b'], 'label': ['real'] * 3, 'source': ['x', 'y', 'x']}))
    assert list(df.path) == ['a', 'b'] and find_duplicates(df).empty and rep['count'].tolist() == [2]


# ---------------------------------------------------------------- probing, shortcut warnings, hashing
def test_probe_drops_unreadable_files(tmp_path):
    for i in range(5): img(tmp_path/'r'/f'{i}.jpg', (20 + i, 10)); img(tmp_path/'f'/f'{i}.png', (16, 16))
    (tmp_path/'r'/'9_broken.jpg').write_bytes(b'\xff\xd8\xff garbage')
    (tmp_path/'f'/'9_truncated.png').write_bytes((tmp_path/'f'/'0.png').read_bytes()[:30])
    pf = probe_files([str(p) for p in sorted((tmp_path/'r').iterdir())], progress=False)
    assert pf.error.notna().tolist() == [False] * 5 + [True] and pf.width.tolist()[:2] == [20, 21]
    res = prepare([f'real:folder:{tmp_path}/r', f'fake:folder:{tmp_path}/f'], probe=True, valid_pct=0.2, progress=False)
    assert names(res.dropped.path) == ['9_broken.jpg', '9_truncated.png'] and res.dropped.error.str.len().gt(0).all()
    assert len(res.df) == 10 and res.df[['width', 'height', 'format']].notna().all().all()
    assert set(res.df.format[res.df.label == 'real']) == {'JPEG'}
    rep = res.report()
    assert '9_broken.jpg' in rep and '9_truncated.png' in rep and 'dropped 2 unreadable' in rep


def test_probe_warns_about_format_shortcut(tmp_path):
    for i in range(6):
        img(tmp_path/'r'/f'{i}.jpg', (40 + i, 30)); img(tmp_path/'f'/f'{i}.png', (64, 64))
        img(tmp_path/'f2'/f'{i}.jpg', (40 + i, 30), color=(9, 9, 9))
    res = prepare([f'real:folder:{tmp_path}/r', f'fake:folder:{tmp_path}/f'], probe=True, progress=False)
    w = ' '.join(res.warnings)
    assert 'file format differs' in w and 'PNG' in w and '64x64' in w
    assert 'PNG 100%' in res.report() and 'JPEG 100%' in res.report()
    res = prepare([f'real:folder:{tmp_path}/r', f'fake:folder:{tmp_path}/f2'], probe=True, progress=False)
    assert res.warnings == []
    assert shortcut_warnings(pd.DataFrame({'label': ['real', 'fake'], 'format': ['JPEG', 'JPEG'],
                                           'width': pd.array([100, 300], dtype='Int64'),
                                           'height': pd.array([100, 300], dtype='Int64')}), threshold=1.1)[0].startswith('image scale')


def test_content_hash_reports_identical_files_across_splits(tmp_path):
    # as many fakes as reals + copies, so every file is sampled whatever tmp_path's name does to the sampling hash
    for i in range(20): noise(tmp_path/'r'/f'{i:02d}.jpg', i)
    for i in range(40): noise(tmp_path/'f'/f'{i:02d}.png', 100 + i)
    for i in range(20): (tmp_path/'r'/f'copy{i:02d}.jpg').write_bytes((tmp_path/'r'/f'{i:02d}.jpg').read_bytes())
    res = prepare([f'real:folder:{tmp_path}/r', f'fake:folder:{tmp_path}/f'], valid_pct=0.3, content_hash=True,
                  progress=False, seed=1)
    ident = res.identical
    assert len(ident) and ident.groupby('digest').size().eq(2).all()
    assert all(Path(p).name.replace('copy', '') in set(names(ident.path)) for p in ident.path)
    assert ident.cross_split.any() and not ident.cross_label.any()
    assert any('span more than one split' in w for w in res.warnings)
    df = res.df.copy(); df['split'] = 'train'
    assert not find_identical(df, progress=False).cross_split.any()


# ---------------------------------------------------------------- the CLI
def one_line(r) -> bool:
    "The command failed with exactly one line on stderr: 'realfake_prepare: error: ...', no traceback."
    lines = r.stderr.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith('realfake_prepare: error: ') and 'Traceback' not in r.stderr


def run_cli(*args, cwd): return run_cli_here('realfake_prepare', *args, cwd=cwd)   # in process: only the output is checked


@pytest.fixture
def small_tree(tmp_path):
    for i in range(12):
        img(tmp_path/'data/natural'/f'{i:02d}.jpg', (30 + i, 20), color=(i, 100, 50))
        img(tmp_path/'data/sd'/f'{i:02d}.png', (32, 32), color=(100, i, 50))
    return tmp_path


def test_cli_writes_deterministic_metadata_and_refuses_overwrite(small_tree):
    t = small_tree
    r = run_cli(f'auto:generators:{t}/data', '--out', 'm.jsonl', '--valid_pct', '0.25', '--relative', '--no_progress', cwd=t)
    assert r.returncode == 0, r.stderr
    assert 'valid' in r.stdout and 'natural' in r.stdout and 'wrote 24 records' in r.stderr
    first = (t/'m.jsonl').read_bytes()
    m = read_metadata(t/'m.jsonl')
    assert len(m) == 24 and m.path.map(os.path.exists).all() and not first.startswith(b'{"path":"/')
    r = run_cli(f'auto:generators:{t}/data', '--out', 'm.jsonl', '--no_progress', '--seed', '5', cwd=t)
    assert r.returncode == 2 and 'already exists' in r.stderr and '--overwrite' in r.stderr and one_line(r)
    assert (t/'m.jsonl').read_bytes() == first                                   # untouched
    r = run_cli(f'auto:generators:{t}/data', '--out', 'm2.jsonl', '--valid_pct', '0.25', '--relative', '--no_progress', cwd=t)
    assert r.returncode == 0 and (t/'m2.jsonl').read_bytes() == first            # same seed: byte-identical
    r = run_cli(f'auto:generators:{t}/data', '--out', 'm.jsonl', '--valid_pct', '0.25', '--seed', '5', '--overwrite',
                '--relative', '--no_progress', cwd=t)
    assert r.returncode == 0 and (t/'m.jsonl').read_bytes() != first


def test_cli_errors_are_one_line_and_write_nothing(small_tree):
    t = small_tree
    r = run_cli(f'real:folder:{t}/missing', f'fake:folder:{t}/data/sd', '--out', 'x.jsonl', '--no_progress', cwd=t)
    assert r.returncode == 2 and 'folder not found' in r.stderr and one_line(r)
    r = run_cli(f'real:folder:{t}/data/natural', f'fake:folder:{t}/data/sd', '--quota', 'nope=0.5', '--out', 'x.jsonl',
                '--no_progress', cwd=t)
    assert r.returncode == 2 and 'unknown source' in r.stderr and one_line(r)
    r = run_cli(f'auto:generators:{t}/data', '--dry_run', '--out', 'x.jsonl', '--no_progress', cwd=t)
    assert r.returncode == 0 and 'natural' in r.stdout
    assert not (t/'x.jsonl').exists() and not list(t.glob('.x.jsonl*'))


def test_cli_help_explains_every_option(tmp_path):
    r = run_cli('--help', cwd=tmp_path)
    assert r.returncode == 0
    for opt in ['sources', '--out', '--n', '--valid_pct', '--test_pct', '--seed', '--quota', '--real_names', '--keep_splits',
                '--prompt_groups', '--probe', '--content_hash', '--relative', '--overwrite', '--dry_run', '--workers',
                '--no_progress', '--verbose']:
        assert opt in r.stdout, opt
    for layout in ('folder', 'classes', 'img2dataset', 'generators', 'genimage', 'forensynths', 'csv'): assert layout in r.stdout
    assert 'LABEL:LAYOUT:PATH' in r.stdout
    assert re.search(r'--no_progress\s+' + re.escape(VOCABULARY['no_progress'][:20]), r.stdout), r.stdout   # the flag and its help agree


def test_crash_while_writing_leaves_no_partial_file(small_tree, monkeypatch):
    t, calls = small_tree, []
    def boom(rec):
        calls.append(rec)
        if len(calls) > 5: raise KeyboardInterrupt('killed')
        return json.dumps(rec).encode()
    monkeypatch.setattr(rmeta, '_dumps', boom)
    with pytest.raises(KeyboardInterrupt):
        realfake_prepare([f'auto:generators:{t}/data'], out=str(t/'m.jsonl'), no_progress=True)
    assert len(calls) == 6 and not (t/'m.jsonl').exists() and not [p for p in t.iterdir() if 'm.jsonl' in p.name]


def _a1111_tree(root, n=6, both=False):
    "n real and n fake PNGs; the fakes (and with `both` the reals too) carry A1111 parameters."
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo(); info.add_text('parameters', 'a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1')
    for i in range(n):
        for lab, tagged in (('real', both), ('fake', True)):
            p = root/lab/f'{lab}{i}.png'; p.parent.mkdir(parents=True, exist_ok=True)
            Image.new('RGB', (16, 16), (i * 20, 3, 4)).save(p, pnginfo=info if tagged else None)
    return [f'real:folder:{root}/real', f'fake:folder:{root}/fake']


def test_probe_warns_when_one_label_carries_provenance_evidence(tmp_path):
    "Issue 25: --probe counts each kind of origin evidence per class and warns, with the numbers, when one label carries it alone."
    res = prepare(_a1111_tree(tmp_path), valid_pct=0.0, probe=True, progress=False)
    assert res.evidence['text claiming generated'] == {'real': 0, 'fake': 6} and res.evidence['files'] == {'real': 6, 'fake': 6}
    w = [x for x in res.warnings if x.startswith('text claiming generated')]
    assert len(w) == 1 and '6 of 6 fake images (100.0%) carry it, 0 of 6 real' in w[0], res.warnings
    assert 'text claiming generated: 0 of 6 real, 6 of 6 fake' in res.report()


def test_probe_is_quiet_when_both_labels_carry_the_evidence(tmp_path):
    res = prepare(_a1111_tree(tmp_path, both=True), valid_pct=0.0, probe=True, progress=False)
    assert res.evidence['text claiming generated'] == {'real': 6, 'fake': 6}
    assert not [x for x in res.warnings if x.startswith('text claiming generated')], res.warnings


def test_probe_cli_prints_the_evidence_warning(tmp_path):
    r = run_cli('--probe', '--dry_run', '--no_progress', *_a1111_tree(tmp_path/'t'), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'WARNING: text claiming generated: 6 of 6 fake images' in r.stdout, r.stdout


def test_generators_layout_reads_every_real_name(tmp_path):
    "--real_names defaults to core.REAL_NAMES, the one list evaluate uses too: a ForenSynths-style 0_real folder is real."
    from realfake.core import REAL_NAMES
    for name in REAL_NAMES + ('sd14',):
        p = tmp_path/name/'x.png'; p.parent.mkdir(); Image.new('RGB', (8, 8)).save(p)
    d = list_source(f'auto:generators:{tmp_path}', progress=False)
    assert dict(zip(d.source, d.label)) == {**{n: 'real' for n in REAL_NAMES}, 'sd14': 'fake'}
