"Tests of realfake.synth: the simulated demo data (determinism, labels, formats, splits, traces, CLI)."
from pathlib import Path
import numpy as np, pytest
from PIL import Image

import realfake.synth as synth
from realfake.metadata import read_metadata
from helpers import run_cli_here
from realfake.synth import (make_demo, make_real, make_fake, simulate_vae_decode, periodic_peak_ratio, demo_photos,
                            procedural_photos, DemoError)

REPO = Path(__file__).resolve().parents[1]


def files(d): return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(Path(d).rglob('*')) if p.is_file()}


def test_demo_records_labels_formats_sizes(tmp_path):
    m = make_demo(tmp_path/'d', n=10, size=32, seed=0)
    assert m == tmp_path/'d'/'metadata.jsonl'
    assert not any(l.startswith('{"path":"/') for l in m.read_text().splitlines())     # relative paths
    df = read_metadata(m)
    assert df.label.value_counts().to_dict() == {'real': 10, 'fake': 10}
    for r in df.itertuples():
        with Image.open(r.path) as im:
            assert (im.format, im.width, im.height) == (r.format, r.width, r.height)
            assert im.mode == 'RGB'
        if r.label == 'real': assert r.format == 'JPEG' and 32 <= min(r.width, r.height) <= 48 and r.source == 'demo-photos'
        else: assert r.format == 'PNG' and (r.width, r.height) == (32, 32) and r.source == 'sim-sd1-vae'
    assert df[df.label == 'real'][['width', 'height']].drop_duplicates().shape[0] > 3      # varied real sizes


def test_demo_is_deterministic(tmp_path):
    make_demo(tmp_path/'a', n=6, seed=5); make_demo(tmp_path/'b', n=6, seed=5); make_demo(tmp_path/'c', n=6, seed=6)
    a, b, c = files(tmp_path/'a'), files(tmp_path/'b'), files(tmp_path/'c')
    assert a == b and len(a) == 13
    assert a.keys() == c.keys() and sum(a[k] != c[k] for k in a) >= 12
    make_demo(tmp_path/'big', n=9, seed=5)                      # more images: the first ones are unchanged
    big = files(tmp_path/'big')
    assert all(big[k] == a[k] for k in a if k != 'metadata.jsonl')


def test_same_format(tmp_path):
    base = read_metadata(make_demo(tmp_path/'x', n=5, seed=1))
    for fmt, ext in (('JPEG', '.jpg'), ('png', '.png')):
        df = read_metadata(make_demo(tmp_path/fmt, n=5, seed=1, same_format=fmt))
        assert set(df.format) == {fmt.upper()} and all(p.endswith(ext) for p in df.path)
        for p in df.path:
            with Image.open(p) as im: assert im.format == fmt.upper()
        assert list(df.label) == list(base.label) and list(df.split) == list(base.split)
    # only the container changes: lossless fakes are pixel-identical to the default PNG fakes
    f0, f1 = tmp_path/'x/fake/fake_000003.png', tmp_path/'png/fake/fake_000003.png'
    assert (np.asarray(Image.open(f0)) == np.asarray(Image.open(f1))).all()
    with pytest.raises(DemoError, match='JPEG or PNG'): make_demo(tmp_path/'bad', n=2, same_format='gif')


def test_splits(tmp_path):
    df = read_metadata(make_demo(tmp_path/'d', n=20, size=16, valid_pct=0.2, test_pct=0.1))
    for lab in ('real', 'fake'):
        assert df[df.label == lab].split.value_counts().to_dict() == {'train': 14, 'valid': 4, 'test': 2}
    df = read_metadata(make_demo(tmp_path/'e', n=20, size=16, valid_pct=0.2, test_pct=0, seed=1))
    assert set(df.split) == {'train', 'valid'}


def test_traces_present_and_difficulty_weakens_them(tmp_path):
    def ratios(diff):
        d = make_demo(tmp_path/f'd{diff}', n=16, size=64, seed=2, difficulty=diff, same_format='PNG').parent
        r = lambda lab: np.array([periodic_peak_ratio(np.asarray(Image.open(p))) for p in sorted((d/lab).iterdir())])
        return r('real'), r('fake')
    real, fake1 = ratios(1.0)
    _, fake8 = ratios(8.0)
    assert np.median(fake1) > 3 * np.median(real), (np.median(real), np.median(fake1))
    assert np.median(fake8) < np.median(fake1) / 2
    # learnable: a single threshold on the period-8 statistic already separates most images at difficulty 1
    thr = np.median(np.r_[real, fake1])
    assert ((real < thr).mean() + (fake1 >= thr).mean()) / 2 >= 0.85


def test_simulated_decoder():
    p = np.asarray(procedural_photos(1, 64)['procedural:0'])[:64, :64]
    assert np.abs(simulate_vae_decode(p, difficulty=1e9) * 255 - p).max() < 1e-3      # flawless decoder = identity
    e1 = np.abs(simulate_vae_decode(p, 1.0) * 255 - p).mean(); e4 = np.abs(simulate_vae_decode(p, 4.0) * 255 - p).mean()
    assert e1 > 2 and abs(e4 - e1 / 4) < e1 / 10                                         # traces scale with 1/difficulty
    err = simulate_vae_decode(np.full((64, 64, 3), 128, np.uint8), 1.0) * 255 - 128    # on a flat image: a periodic pattern
    inner = err[8:-16, 8:-16]                                                           # (away from the borders)
    assert np.allclose(inner, err[16:-8, 8:-16]) and np.allclose(inner, err[8:-16, 16:-8]) and np.abs(inner).max() > 3
    assert not np.allclose(inner, err[12:-12, 8:-16])                                  # period 8, not 4
    with pytest.raises(ValueError, match='multiples of 8'): simulate_vae_decode(p[:60])
    with pytest.raises(ValueError, match='difficulty'): simulate_vae_decode(p, 0)


def test_single_images_deterministic():
    ph = demo_photos()
    assert len(ph) >= 10
    r = lambda: np.random.default_rng(42)
    assert (np.asarray(make_real(r(), ph, 32)) == np.asarray(make_real(r(), ph, 32))).all()
    assert (np.asarray(make_fake(r(), ph, 32)) == np.asarray(make_fake(r(), ph, 32))).all()
    assert make_fake(r(), ph, 40).size == (40, 40)


def test_fallback_without_demo_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, 'demo_photos', lambda: {})
    with pytest.warns(UserWarning, match='procedural'):
        m = make_demo(tmp_path/'d', n=4, size=32)
    df = read_metadata(m)
    assert set(df.source[df.label == 'real']) == {'procedural'} and len(df) == 8
    ims = [np.asarray(Image.open(p)) for p in df.path]
    assert all(a.std() > 3 for a in ims)                                              # not blank


def test_refuses_overwrite_and_bad_options(tmp_path):
    m = make_demo(tmp_path/'d', n=2, size=16)
    before = m.read_bytes()
    with pytest.raises(FileExistsError, match='already exists'): make_demo(tmp_path/'d', n=3, size=16)
    assert m.read_bytes() == before
    make_demo(tmp_path/'d', n=3, size=16, overwrite=True)
    assert len(read_metadata(m)) == 6
    for kw, msg in [(dict(size=20), 'multiple of 8'), (dict(size=65536), 'from 16 to 2048'), (dict(n=0), 'at least 1'), (dict(difficulty=0), 'difficulty'),
                    (dict(valid_pct=0.7, test_pct=0.4), 'sum below 1')]:
        with pytest.raises(DemoError, match=msg): make_demo(tmp_path/'bad', **kw)
    assert not (tmp_path/'bad'/'metadata.jsonl').exists()




def run_cli(*args, cwd): return run_cli_here('realfake_demo', *args, cwd=cwd)   # in process: only the output is checked


def test_cli(tmp_path):
    r = run_cli('--out', 'demo', '--per_class', '3', '--size', '32', '--same_format', 'PNG', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'simulated' in r.stdout and 'valid' in r.stdout
    df = read_metadata(tmp_path/'demo'/'metadata.jsonl')
    assert len(df) == 6 and set(df.format) == {'PNG'}
    r = run_cli('--out', 'demo', '--per_class', '3', cwd=tmp_path)
    assert r.returncode == 2 and 'already exists' in r.stderr and 'Traceback' not in r.stderr
    r = run_cli('--help', cwd=tmp_path)
    for opt in ['--out', '--per_class', '--size', '--seed', '--difficulty', '--same_format', '--valid_pct', '--test_pct',
                '--overwrite', '--verbose']:
        assert opt in r.stdout, opt
    assert '--dest' not in r.stdout and '--n ' not in r.stdout    # the old spellings are hidden


def test_cli_old_spellings_still_work(tmp_path):
    "--dest and --n are the old spellings of --out and --per_class: accepted for this version, with a one-line notice each."
    r = run_cli('--dest', 'old', '--n', '2', '--size', '32', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '--dest is now --out' in r.stderr and '--n is now --per_class' in r.stderr
    assert len(read_metadata(tmp_path/'old'/'metadata.jsonl')) == 4
