"""JPEG quality for non-standard tables (issue 23 item 3): the estimate is marked approximate, `--probe` says so,
and `--align` / `fakes_jpeg` copy a real image's actual quantization tables and subsampling."""
import io
import numpy as np
import pytest
from PIL import Image

from realfake.images import jpeg_info, probe_image
from realfake.perturb import fakes_jpeg, encode_jpeg
from realfake.probe import probe_files, format_table


def photo(seed=0):
    small = np.random.default_rng(seed).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((64, 48), Image.Resampling.BICUBIC)


def jpeg(im=None, **kw):
    b = io.BytesIO(); (im or photo()).save(b, 'JPEG', **kw); return b.getvalue()


def info(data): return jpeg_info(Image.open(io.BytesIO(data)))


def _mixed():
    "Luma tables of IJG quality 50 with chroma tables of quality 90 (the issue's example)."
    q50, q90 = info(jpeg(quality=50))['qtables'], info(jpeg(quality=90))['qtables']
    return jpeg(qtables=[q50[0], q90[1]])


NON_STANDARD = {**{p: (lambda p=p: jpeg(quality=p)) for p in ('low', 'medium', 'high', 'maximum')}, 'luma50_chroma90': _mixed}


@pytest.mark.parametrize('kind', list(NON_STANDARD))
def test_non_standard_tables_are_marked_and_copied(kind):
    real = info(NON_STANDARD[kind]())
    assert real['approximate'] and not real['standard']
    fj = fakes_jpeg([(real['quality'], real['subsampling'], real['qtables'])])
    got = info(fj(photo(1)))
    assert got['qtables'] == real['qtables'] and got['subsampling'] == real['subsampling'], kind
    assert 'tables' in fj.doc
    # what the quality number alone would have given: other tables (the reason to copy)
    assert info(encode_jpeg(photo(1), real['quality'], real['subsampling']))['qtables'] != real['qtables']


@pytest.mark.parametrize('q,sub', [(50, 2), (75, 0), (95, 1)])
def test_ijg_tables_are_exact(q, sub):
    i = info(jpeg(quality=q, subsampling=sub))
    assert (i['quality'], i['approximate']) == (q, False)


def test_pairs_still_work():
    "A (quality, subsampling) pair still means IJG tables at that quality."
    assert info(fakes_jpeg([(70, '4:4:4')])(photo()))['quality'] == 70


def test_probe_marks_approximate_quality(tmp_path):
    (tmp_path/'std.jpg').write_bytes(jpeg(quality=80))
    (tmp_path/'preset.jpg').write_bytes(jpeg(quality='high'))
    assert probe_image(tmp_path/'std.jpg', details=True)['tables'] == 'IJG'
    assert probe_image(tmp_path/'preset.jpg', details=True)['tables'] == 'non-standard'
    pf = probe_files([str(tmp_path/'std.jpg'), str(tmp_path/'preset.jpg')], progress=False)
    table = format_table(pf.assign(label='real', source='x'))
    assert 'non-standard tables: approximate' in table['quality'].iloc[0] and '50%' in table['quality'].iloc[0]
    only_std = format_table(pf.iloc[:1].assign(label='real', source='x'))
    assert 'approximate' not in only_std['quality'].iloc[0]
