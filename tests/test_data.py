"Tests for realfake.data: the DataBlock over the metadata (vocab, splits, shapes, augmentation, bad files)."
import logging, random
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from fastai.vision.core import imagenet_stats

from realfake.core import LABELS, RealfakeError
from realfake.metadata import read_metadata, write_metadata
from realfake.images import load_image
from realfake.preprocess import Preprocess
from realfake.data import RobustAug, get_dls, skipped_images

def S(size=32, resize=None, **kw):
    "A preprocessing spec: `size` crops of images resized to `resize` (default: the seed's ratio)."
    return Preprocess(size=size, resize=round(size * 256 / 224) if resize is None else resize, **kw)


def make_data(d, n_train=(6, 10), n_valid=(3, 5), n_test=2, size=(48, 40)):
    """Metadata + tiny images: `n_train`/`n_valid` = (real, fake) counts, deliberately unbalanced and with more
    fakes, so a sorted vocabulary or a mixed-up split would show. Real = dark JPEG, fake = bright PNG."""
    d = Path(d); rng = np.random.default_rng(0); recs = []
    for split, counts in (('train', n_train), ('valid', n_valid), ('test', (n_test, n_test))):
        for lab, n in zip(LABELS, counts):
            for k in range(n):
                lo, hi = (0, 100) if lab == 'real' else (156, 256)
                a = rng.integers(lo, hi, (size[1], size[0], 3), dtype=np.uint8)
                p = d/f'{split}_{lab}_{k}.{"jpg" if lab == "real" else "png"}'
                Image.fromarray(a).save(p)
                recs.append(dict(path=p.name, label=lab, split=split, source='test'))
    write_metadata(recs, d/'metadata.jsonl')
    return read_metadata(d/'metadata.jsonl')


@pytest.fixture
def df(tmp_path): return make_data(tmp_path)


def labels_of(ds): return [ds.vocab[int(y)] for _, y in ds]


def test_vocab_and_splits(df):
    dls = get_dls(df, S(32), bs=4, num_workers=0, device='cpu')
    assert list(dls.vocab) == ['real', 'fake']  # not sorted: index 1 is fake
    assert len(dls.train_ds) == 16 and len(dls.valid_ds) == 8  # test rows left out
    tr, va = labels_of(dls.train_ds), labels_of(dls.valid_ds)
    assert (tr.count('real'), tr.count('fake')) == (6, 10)
    assert (va.count('real'), va.count('fake')) == (3, 5)
    # each item is the file of its own row: labels of dls and metadata agree, row by row
    for ds, rows in ((dls.train_ds, dls.rows[:16]), (dls.valid_ds, dls.rows[16:])):
        assert [df['label'].iloc[r] for r in rows] == labels_of(ds)
    assert set(df['split'].iloc[dls.rows[:16]]) == {'train'} and set(df['split'].iloc[dls.rows[16:]]) == {'valid'}
    # the fake images are the bright ones: the label really belongs to the pixels
    for x, y in dls.valid_ds:
        assert (np.asarray(x).mean() > 128) == (int(y) == 1)


def test_only_one_class_in_a_split_keeps_vocab(tmp_path):
    df = make_data(tmp_path, n_train=(4, 4), n_valid=(0, 3))
    dls = get_dls(df, S(32), bs=2, num_workers=0, device='cpu')
    assert list(dls.vocab) == ['real', 'fake'] and {int(y) for _, y in dls.valid_ds} == {1}


def test_batch_shapes_default_and_other_sizes(df):
    dls = get_dls(df, S(64), bs=4, num_workers=0, device='cpu', seed=0)
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 3, 64, 64) and yb.shape == (4,) and xb.dtype == torch.float32
    assert S(64).resize == 73                                   # the seed's ratio: 256 -> 224
    xb, yb, counts = dls.valid.one_batch()
    assert xb.shape == (4, 3, 64, 64) and counts.tolist() == [1] * 4
    dls = get_dls(df, S(40, 48), bs=3, num_workers=0, device='cpu')
    assert dls.one_batch()[0].shape == (3, 3, 40, 40)
    big = get_dls(df, S(384), bs=2, num_workers=0, device='cpu')  # the seed's weakness: larger inputs must work
    assert S(384).resize == 439 and big.one_batch()[0].shape == (2, 3, 384, 384)
    native = get_dls(df, S(32, 'native', crops='grid', max_crops=4), bs=4, num_workers=0, device='cpu')   # 48x40: 2x2 crops
    assert native.one_batch()[0].shape == (4, 3, 32, 32)
    xb, yb, counts = native.valid.one_batch()
    assert counts.tolist() == [4] * 2 and xb.shape == (8, 3, 32, 32) and yb.shape == (2,)
    small = get_dls(df, S(32), bs=64, num_workers=0, device='cpu')  # 16 training images < bs: one partial batch
    assert len(small.train) == 1 and small.one_batch()[0].shape == (16, 3, 32, 32)


def test_normalisation_and_centre_crop(df):
    "Valid items are exact centre crops of load_image(resize), normalised with the spec's statistics."
    dls = get_dls(df, S(32, 40), bs=4, num_workers=0, device='cpu', aug=False)
    xb, _, _ = dls.valid.one_batch()
    p = df['path'].iloc[dls.rows[16]]
    img = np.asarray(load_image(p, short_side=40), np.float32) / 255  # 48x40 -> 48x40: crop 32 from the centre
    crop = img[4:36, 8:40].transpose(2, 0, 1)
    mean, std = (np.array(s, np.float32)[:, None, None] for s in imagenet_stats)
    assert np.allclose(xb[0].numpy(), (crop - mean) / std, atol=1e-5)
    other = get_dls(df, S(32, 40, mean=(0.5,) * 3, std=(0.25,) * 3), bs=4, num_workers=0, device='cpu', aug=False)
    assert np.allclose(other.valid.one_batch()[0][0].numpy(), (crop - 0.5) / 0.25, atol=1e-5)


def test_augmentation_is_random_only_on_train(df):
    torch.manual_seed(0); random.seed(0)
    dls = get_dls(df, S(32), bs=16, num_workers=0, device='cpu', seed=0)
    a, b = dls.train.one_batch()[0], dls.train.one_batch()[0]
    assert not torch.equal(a, b)  # shuffled and augmented
    v1, v2 = dls.valid.one_batch()[0], dls.valid.one_batch()[0]
    assert torch.equal(v1, v2)  # validation: deterministic
    tfms = [type(t).__name__ for t in dls.train.after_batch.fs]
    assert {'Flip', 'Brightness', 'RandomErasing', 'Normalize'} <= set(tfms), tfms
    assert [type(t).__name__ for t in get_dls(df, S(32), num_workers=0, device='cpu', aug=False).train.after_batch.fs] == \
        ['IntToFloatTensor', 'Normalize']
    native = [type(t).__name__ for t in get_dls(df, S(32, 'native'), num_workers=0, device='cpu').train.after_batch.fs]
    assert 'Flip' not in native and {'Brightness', 'RandomErasing'} <= set(native), native   # no affine resampling


def test_seed_fixes_shuffle_order(df):
    orders = []
    for _ in range(2):
        dls = get_dls(df, S(32), bs=4, num_workers=0, device='cpu', seed=123)
        orders.append([list(dls.train.get_idxs()) for _ in range(2)])
    assert orders[0] == orders[1]
    assert sorted(orders[0][0]) == list(range(16)) and orders[0][0] != list(range(16))


def _pixels(dls, i, split='train'):
    "Item `i` of `split` as a float array, through the item transforms."
    dl = dls.train if split == 'train' else dls.valid
    dl.after_item.split_idx = dl.split_idx  # as the DataLoader does at the start of each iteration
    assert dl.split_idx == (0 if split == 'train' else 1)
    x, y = dl.after_item(dl.dataset[i])
    return np.asarray(x, np.float32), int(y)


def test_robust_aug_off_by_default_and_applied_to_both_labels(tmp_path):
    df = make_data(tmp_path, size=(40, 40))            # crops as large as the images: one possible position
    spec = S(40, 40)
    plain = get_dls(df, spec, bs=4, num_workers=0, device='cpu', aug=False)
    zero = get_dls(df, spec, bs=4, num_workers=0, device='cpu', aug=False, robust=RobustAug(0, blur_p=0, downscale_p=0))
    rob = get_dls(df, spec, bs=4, num_workers=0, device='cpu', aug=False,
                  robust=RobustAug(jpeg_p=1, blur_p=1, blur_sigma=(1, 3), downscale_p=1, downscale=(0.3, 0.6)))
    changed = {0: [], 1: []}
    for i in range(16):
        base, y = _pixels(plain, i)
        assert np.array_equal(base, _pixels(zero, i)[0])  # all probabilities 0: identical pixels
        r, y2 = _pixels(rob, i)
        assert y2 == y and r.shape == base.shape
        changed[y].append(np.abs(r - base).mean())
    assert min(changed[0]) > 2 and min(changed[1]) > 2, changed  # every image of both classes degraded
    for i in range(8):  # never on validation
        assert np.array_equal(_pixels(plain, i, 'valid')[0], _pixels(rob, i, 'valid')[0])


def test_robust_aug_probabilities():
    cfg = RobustAug(jpeg_p=0.5, blur_p=0.0, downscale_p=0.0)
    rng = random.Random(0)
    n = sum('jpeg' in cfg.draw(rng) for _ in range(300))
    assert 110 < n < 190, n
    assert RobustAug.cnndetection(0.5) == RobustAug(0.5, (30, 100), 0.5, (0.0, 3.0), 0.0)
    with pytest.raises(ValueError): RobustAug(jpeg_quality=(0, 100))
    with pytest.raises(TypeError): get_dls(pd.DataFrame(dict(path=['a'], label=['real'], split=['train'])), robust='yes')


def test_unreadable_training_image_is_logged_once_and_skipped(df, caplog):
    tr = df.index[(df['split'] == 'train') & (df['label'] == 'fake')]
    bad_trunc, bad_html = df['path'][tr[0]], df['path'][tr[1]]
    data = Path(bad_trunc).read_bytes(); Path(bad_trunc).write_bytes(data[:len(data) // 3])
    Path(bad_html).write_bytes(b'<!DOCTYPE html><html><body>Access denied</body></html>')
    caplog.set_level(logging.WARNING, logger='realfake')
    dls = get_dls(df, S(32), bs=16, num_workers=0, device='cpu', aug=False)
    for epoch in range(2):
        xb, yb = dls.train.one_batch()  # the whole training split in one batch
        assert xb.shape == (16, 3, 32, 32)
        assert int(yb.sum()) == 10  # still 10 fakes: substitutes keep the label
        assert all((xb[k].mean() > 0) == (yb[k] == 1) for k in range(16))  # and they are fake (bright) images
    msgs = [r.getMessage() for r in caplog.records if r.name == 'realfake.data']
    assert len(msgs) == 2, msgs  # once per file, not once per epoch
    assert any(bad_trunc in m and 'truncated' in m for m in msgs), msgs
    assert any(bad_html in m and 'looks like HTML' in m for m in msgs), msgs
    assert sorted(skipped_images(dls)) == sorted([bad_trunc, bad_html])


def test_workers_fork_and_shared_skip_flags(df):
    tr = df.index[(df['split'] == 'train') & (df['label'] == 'real')]
    bad = df['path'][tr[0]]; Path(bad).write_bytes(b'')
    dls = get_dls(df, S(32), bs=8, num_workers=2, device='cpu', aug=True, robust=0.5)
    n = 0
    for xb, yb in dls.train: n += len(xb); assert xb.shape[1:] == (3, 32, 32)
    assert n == 16
    assert skipped_images(dls) == [bad]  # flagged in a worker process, visible here
    assert sum(len(b[1]) for b in dls.valid) == 8


def test_bad_dataframes(df):
    with pytest.raises(RealfakeError, match='label'): get_dls(df.assign(label=df['label'].replace('fake', 'Fake')))
    with pytest.raises(RealfakeError, match='valid'): get_dls(df[df['split'] != 'valid'])
    with pytest.raises(RealfakeError, match='column'): get_dls(df.drop(columns='split'))


def test_substitutes_come_from_same_split_and_label(df, monkeypatch, caplog):
    "Many draws: every substitute for an unreadable train/fake item is another readable train/fake file."
    import realfake.preprocess as rp
    dls = get_dls(df, S(32), bs=4, num_workers=0, device='cpu', aug=False)
    items = dls.image_items
    paths = [items.paths[k] for k in range(len(items.paths))]
    meta = df.set_index('path')
    train_fake = [k for k, p in enumerate(paths) if meta.loc[p, 'split'] == 'train' and meta.loc[p, 'label'] == 'fake']
    bad = train_fake[:3]
    for k in bad: Path(paths[k]).write_bytes(b'\x00garbage')
    loaded = []
    orig = rp.load_image
    monkeypatch.setattr(rp, 'load_image', lambda p, **kw: (loaded.append(p), orig(p, **kw))[1])
    random.seed(0)
    for _ in range(60): items(bad[0])
    good = {paths[k] for k in train_fake[3:]}
    subs = [p for p in loaded if p not in {paths[k] for k in bad}]
    assert len(subs) == 60 and set(subs) <= good and len(set(subs)) == len(good), set(subs) ^ good
    assert sum(p == paths[bad[0]] for p in loaded) == 1  # the bad file itself is tried once, then known bad


def test_align_compresses_only_non_jpeg_training_images(tmp_path, monkeypatch):
    "align=True: fake PNGs become JPEG content with a real JPEG's own tables and subsampling; real JPEGs and validation items are untouched."
    import realfake.data as rd
    from realfake.images import jpeg_info
    df = make_data(tmp_path, size=(40, 40))
    real = jpeg_info(df[(df.label == 'real') & (df.split == 'train')].path.iloc[0])
    encoded = []
    orig = rd.encode_jpeg
    monkeypatch.setattr(rd, 'encode_jpeg', lambda img, q, sub=None, tabs=None: (encoded.append(dict(qtables=tabs, subsampling=sub)), orig(img, q, sub, tabs))[1])
    dls = get_dls(df, S(40, 40), bs=16, num_workers=0, device='cpu', aug=False, align=True)
    xb, yb = dls.train.one_batch()
    assert len(encoded) == int(yb.sum()) == 10                               # the 10 PNG fakes
    assert all(e['qtables'] == real['qtables'] and e['subsampling'] == real['subsampling'] for e in encoded)
    import io
    out = jpeg_info(Image.open(io.BytesIO(orig(Image.new('RGB', (16, 16)), None, encoded[0]['subsampling'], encoded[0]['qtables']))))            # the copy carries the real's tables exactly
    assert out['qtables'] == real['qtables'] and out['subsampling'] == real['subsampling']
    plain = get_dls(df, S(40, 40), bs=16, num_workers=0, device='cpu', aug=False)
    for i in range(16):
        a, y = _pixels(plain, i); b, _ = _pixels(dls, i)
        assert np.array_equal(a, b) == (y == 0)                              # reals identical, fakes changed
    assert np.array_equal(_pixels(plain, 0, 'valid')[0], _pixels(dls, 0, 'valid')[0])
