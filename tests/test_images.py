"Tests for realfake.images: the one image loader (one decode path for every format, draft opt-in, modes, EXIF, bombs, bad files)."
import errno, os, pickle, warnings
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps
from PIL.JpegImagePlugin import JpegImageFile

import realfake.images as ri
from realfake.core import RealfakeError
from realfake.images import ImageLoadError, MAX_PIXELS, load_image, probe_image, _png_header

BIL = Image.Resampling.BILINEAR


def photo(w, h, seed=0, cell=16):
    "A smooth, photo-like RGB image (random colours every `cell` pixels, upsampled), so JPEG behaves as on photos."
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // cell + 2, w // cell + 2, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def save(im, path, fmt=None, **kw):
    im.save(path, fmt, **kw)
    return path


def arr(im): return np.asarray(im, dtype=np.float32)


def mad(a, b): return float(np.abs(arr(a) - arr(b)).mean())


# ---------------------------------------------------------------- draft mode against the reference
def test_draft_matches_reference(tmp_path, monkeypatch):
    """The opt-in (`draft=True`): draft-mode JPEG + bilinear resize stays within 2 grey levels (mean) of full decode + the same resize.
    (Measured on real photos at 1500x1000 and 3000x2000 -> 256: 0.2-1.0; here 1.2. Nearest-neighbour resizing
    or a misplaced crop would give 5 or more.) Details 32 px apart at 1200 px: like a sharp photo seen at 8x
    reduction; the DCT-domain 1/8 decode is a box average, the reference a triangle filter."""
    p = save(photo(1200, 800, cell=32), tmp_path/'big.jpg', quality=90)
    scales = []
    orig = JpegImageFile.draft
    def spy(self, mode, size):
        before = self.size; res = orig(self, mode, size); scales.append(before[0] / self.size[0]); return res
    monkeypatch.setattr(JpegImageFile, 'draft', spy)
    assert load_image(p, short_side=96).size == (144, 96) and not scales  # the default never drafts
    got = load_image(p, short_side=96, draft=True)
    assert scales and scales[0] >= 4, f'draft mode not used (scales={scales})'  # 1200/144 -> 1/8 would be too small, 1/4 fits
    ref = Image.open(p).convert('RGB').resize((144, 96), BIL)
    assert got.size == (144, 96) and got.mode == 'RGB'
    assert mad(got, ref) < 2.0
    assert np.abs(arr(got) - arr(ref)).max() < 40


def test_draft_never_undershoots(tmp_path):
    "The drafted image must still cover the target: the shorter side is exactly `size` for awkward sizes."
    for w, h, size in [(1025, 769, 128), (800, 801, 100), (640, 480, 479), (333, 1000, 41)]:
        p = save(photo(w, h), tmp_path/f'{w}x{h}.jpg', quality=85)
        for draft in (False, True):
            im = load_image(p, short_side=size, draft=draft)
            assert min(im.size) == size, (w, h, size, draft, im.size)
            assert abs(max(im.size) / min(im.size) - max(w, h) / min(w, h)) < 0.02


def test_full_resolution_and_png_reference(tmp_path):
    p = save(photo(300, 200), tmp_path/'a.png')
    im = load_image(p)
    assert im.size == (300, 200) and im.mode == 'RGB'
    assert np.array_equal(np.asarray(im), np.asarray(Image.open(p).convert('RGB')))
    small = load_image(p, short_side=50)
    assert small.size == (75, 50)
    assert mad(small, Image.open(p).convert('RGB').resize((75, 50), BIL)) == 0  # PNG: same filter, same pixels


# ---------------------------------------------------------------- every mode to RGB
def _modes(tmp_path):
    "name -> (path, expected RGB value at pixel (0,0) of the full-resolution result, or None)."
    out = {}
    g16 = np.full((20, 30), 65535, np.uint16); g16[0, 0] = 257 * 100
    out['I;16 png'] = (save(Image.fromarray(g16), tmp_path/'g16.png'), (100, 100, 100))
    i32 = np.full((20, 30), 30000, np.int32); i32[0, 0] = 65535
    out['I tiff'] = (save(Image.fromarray(i32, 'I'), tmp_path/'i32.tif'), (255, 255, 255))
    f32 = np.full((20, 30), 0.5, np.float32); f32[0, 0] = 1.0
    out['F tiff'] = (save(Image.fromarray(f32, 'F'), tmp_path/'f.tif'), (255, 255, 255))
    out['L jpeg'] = (save(Image.new('L', (30, 20), 77), tmp_path/'l.jpg', quality=95), None)
    la = Image.new('LA', (30, 20), (10, 0))  # fully transparent -> background
    out['LA png'] = (save(la, tmp_path/'la.png'), ri.BACKGROUND)
    rgba = Image.new('RGBA', (30, 20), (255, 0, 0, 255)); rgba.putpixel((0, 0), (0, 255, 0, 0))
    out['RGBA png'] = (save(rgba, tmp_path/'rgba.png'), ri.BACKGROUND)
    p = Image.new('P', (30, 20), 1); p.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    out['P png'] = (save(p, tmp_path/'p.png'), (0, 255, 0))
    pt = p.copy(); pt.info['transparency'] = 1
    out['P transparency png'] = (save(pt, tmp_path/'pt.png', transparency=1), ri.BACKGROUND)
    out['1 png'] = (save(Image.new('1', (30, 20), 1), tmp_path/'one.png'), (255, 255, 255))
    out['CMYK jpeg'] = (save(Image.new('CMYK', (30, 20), (0, 0, 0, 0)), tmp_path/'cmyk.jpg', quality=95), None)
    frames = [Image.new('P', (30, 20), i) for i in range(3)]
    for f in frames: f.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * 759)
    gif = tmp_path/'anim.gif'; frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50, loop=0)
    out['animated GIF'] = (gif, (200, 10, 10))  # first frame's colour
    out['RGB webp'] = (save(Image.new('RGB', (30, 20), (9, 99, 199)), tmp_path/'x.webp', lossless=True), (9, 99, 199))
    out['BMP'] = (save(Image.new('RGB', (30, 20), (9, 99, 199)), tmp_path/'x.bmp'), (9, 99, 199))
    return out


def test_every_mode_to_rgb(tmp_path):
    cases = _modes(tmp_path)
    opened = {k: Image.open(p).mode for k, (p, _) in cases.items()}
    # make sure the fixtures really are the odd modes (otherwise the test would prove nothing)
    for k, m in [('I;16 png', 'I;16'), ('I tiff', 'I'), ('F tiff', 'F'), ('LA png', 'LA'), ('P transparency png', 'P'),
                 ('1 png', '1'), ('CMYK jpeg', 'CMYK'), ('L jpeg', 'L')]:
        assert opened[k] == m, (k, opened[k])
    for name, (path, px) in cases.items():
        full = load_image(path)
        assert full.mode == 'RGB' and full.size == (30, 20), name
        if px is not None: assert full.getpixel((0, 0)) == tuple(px), (name, full.getpixel((0, 0)))
        small = load_image(path, short_side=10)
        assert small.mode == 'RGB' and small.size == (15, 10), name
    assert load_image(cases['CMYK jpeg'][0]).getpixel((5, 5)) == (255, 255, 255)  # CMYK 0,0,0,0 is white paper
    assert load_image(cases['I;16 png'][0]).getpixel((5, 5)) == (255, 255, 255)   # 16-bit max is white, not clipped
    assert load_image(cases['L jpeg'][0]).getpixel((5, 5))[0] in range(75, 80)


def test_animated_gif_first_frame_only(tmp_path, monkeypatch):
    gif = _modes(tmp_path)['animated GIF'][0]
    seeks = []
    orig = Image.Image.seek
    monkeypatch.setattr(Image.Image, 'seek', lambda self, i: (seeks.append(i), orig(self, i))[1])
    im = load_image(gif, short_side=10)
    assert im.getpixel((5, 5)) == (200, 10, 10)
    assert all(i == 0 for i in seeks), seeks


# ---------------------------------------------------------------- EXIF
@pytest.mark.parametrize('orientation', [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation(tmp_path, orientation):
    base = photo(120, 80, seed=orientation)
    ex = Image.Exif(); ex[0x0112] = orientation
    p = save(base, tmp_path/'o.jpg', quality=95, exif=ex.tobytes())
    ref_full = ImageOps.exif_transpose(Image.open(p)).convert('RGB')
    got = load_image(p, short_side=40)
    assert got.size == ((60, 40) if orientation < 5 else (40, 60))
    ref = ref_full.resize(got.size, BIL)
    assert mad(got, ref) < 2.0, orientation
    again = load_image(load_image(p))  # the result carries no orientation any more: no double rotation
    assert again.size == ref_full.size and mad(again, ref_full) == 0
    assert probe_image(p) == dict(width=ref_full.width, height=ref_full.height, format='JPEG')


def test_exif_rotation_is_not_a_noop(tmp_path):
    "A JPEG, left half black / right half white, tagged 'rotate 90 CW' (6): black must end up on top."
    a = np.zeros((40, 80, 3), np.uint8); a[:, 40:] = 255
    ex = Image.Exif(); ex[0x0112] = 6
    p = save(Image.fromarray(a), tmp_path/'r.jpg', quality=95, exif=ex.tobytes())
    im = np.asarray(load_image(p))
    assert im.shape == (80, 40, 3)
    assert im[:30].mean() < 20 and im[50:].mean() > 235


# ---------------------------------------------------------------- bombs
@pytest.fixture
def no_decoding(monkeypatch):
    "Fail the test if any pixel data is decoded."
    def boom(self, *a, **k): raise AssertionError('pixels were decoded')
    monkeypatch.setattr(ImageFile.ImageFile, 'load', boom)


def test_bomb_refused_before_decoding(tmp_path, no_decoding):
    p = tmp_path/'bomb.png'; p.write_bytes(_png_header(40000, 40000))
    for f in (load_image, probe_image):
        with pytest.raises(ImageLoadError) as ei: f(p)
        assert 'decompression bomb' in ei.value.reason and str(p) in str(ei.value)
    with pytest.raises(ImageLoadError, match='decompression bomb'): load_image(p.read_bytes())


def test_bomb_between_limit_and_twice_limit(tmp_path, no_decoding):
    "Pillow only *warns* between MAX_IMAGE_PIXELS and twice it; we refuse, even with warnings filters reset."
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS
    p = tmp_path/'big.png'; p.write_bytes(_png_header(12000, 10000))  # 1.2e8 > 1e8 but < 2e8
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # as if someone reset the process-wide 'error' filter
        with pytest.raises(ImageLoadError, match='decompression bomb'): load_image(p)
    with warnings.catch_warnings():
        warnings.simplefilter('error', Image.DecompressionBombWarning)  # the filter realfake.images sets on import
        with pytest.raises(ImageLoadError, match='decompression bomb refused'): load_image(p)


def test_max_pixels_parameter(tmp_path):
    p = save(photo(100, 100), tmp_path/'a.png')
    assert load_image(p, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageLoadError, match='decompression bomb'): load_image(p, max_pixels=9_999)


# ---------------------------------------------------------------- bad files
def _bad_files(d):
    good_jpg = photo(200, 150).save(d/'ok.jpg', quality=90) or (d/'ok.jpg').read_bytes()
    photo(200, 150).save(d/'ok.png'); good_png = (d/'ok.png').read_bytes()
    files = {
        'empty.jpg': (b'', 'empty file'),
        'half.jpg': (good_jpg[:len(good_jpg) // 2], 'truncated'),
        'half.png': (good_png[:len(good_png) // 2], 'truncated'),
        'random.jpg': (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), 'not an image'),
        'page.jpg': (b'<!DOCTYPE html>\n<html><head><title>403</title></head><body>no</body></html>\n', 'looks like HTML'),
        'header only.png': (good_png[:20], 'truncated or corrupt PNG header'),
    }
    for name, (data, _) in files.items(): (d/name).write_bytes(data)
    return {d/name: reason for name, (data, reason) in files.items()}


def test_bad_files_give_clear_errors(tmp_path):
    cases = _bad_files(tmp_path)
    (tmp_path/'loop1.jpg').symlink_to(tmp_path/'loop2.jpg'); (tmp_path/'loop2.jpg').symlink_to(tmp_path/'loop1.jpg')
    (tmp_path/'dangling.jpg').symlink_to(tmp_path/'nowhere.jpg')
    (tmp_path/'adir.jpg').mkdir()
    cases.update({tmp_path/'missing.jpg': 'file not found', tmp_path/'loop1.jpg': 'symlink loop',
                  tmp_path/'dangling.jpg': 'broken symlink', tmp_path/'adir.jpg': 'is a directory'})
    for path, reason in cases.items():
        for arg in (path, str(path)):
            with pytest.raises(ImageLoadError) as ei: load_image(arg, short_side=32)
            e = ei.value
            assert reason in e.reason, (path.name, e.reason)
            assert str(path) in str(e) and e.path == arg
            assert isinstance(e, RealfakeError)
    for path, reason in cases.items():  # probe reads headers only: truncated bodies pass, the rest fail the same way
        if path.name in ('half.jpg', 'half.png'): assert probe_image(path)['width'] == 200; continue
        with pytest.raises(ImageLoadError, match=reason): probe_image(path)


def test_bad_bytes(tmp_path):
    cases = _bad_files(tmp_path)
    for path, reason in cases.items():
        with pytest.raises(ImageLoadError, match=reason if reason != 'empty file' else 'empty') as ei:
            load_image(path.read_bytes())
        assert ei.value.path == '<bytes>'


def test_truncated_is_never_accepted(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    p = next(p for p in _bad_files(tmp_path) if p.name == 'half.jpg')
    with pytest.raises(ImageLoadError, match='truncated'): load_image(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_permission_denied(tmp_path, monkeypatch):
    p = save(photo(20, 20), tmp_path/'locked.jpg')
    if os.geteuid() != 0:  # root reads anything: then only the simulated case below runs
        p.chmod(0)
        try:
            with pytest.raises(ImageLoadError, match='permission denied'): load_image(p)
        finally: p.chmod(0o644)
    def denied(path, *a, **k): raise PermissionError(errno.EACCES, 'Permission denied', str(path))
    monkeypatch.setattr(ri.os, 'open', denied)
    with pytest.raises(ImageLoadError, match='permission denied') as ei: load_image(p)
    assert str(p) in str(ei.value)


def test_error_survives_pickling_and_torch_reraise():
    e = ImageLoadError('/d/x.jpg', 'truncated file')
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.reason, str(e2)) == ('/d/x.jpg', 'truncated file', 'cannot read image /d/x.jpg: truncated file')
    assert str(ImageLoadError(str(e))) == str(e)  # torch's ExceptionWrapper re-raises exc_type(message)


# ---------------------------------------------------------------- shapes, sources, names
def test_tiny_and_extreme_aspect(tmp_path):
    one = save(Image.new('RGB', (1, 1), (1, 2, 3)), tmp_path/'1x1.png')
    im = load_image(one, short_side=64)
    assert im.size == (64, 64) and im.getpixel((10, 10)) == (1, 2, 3)
    strip = save(Image.new('RGB', (4000, 10), (5, 6, 7)), tmp_path/'strip.png')
    im = load_image(strip, short_side=32)
    assert im.size == (32 * ri.MAX_ASPECT, 32)  # centre part only: bounded work
    assert load_image(strip).size == (4000, 10)  # full resolution untouched
    tall = save(Image.new('L', (10, 4000), 9), tmp_path/'tall.jpg')
    assert load_image(tall, short_side=16).size == (16, 16 * ri.MAX_ASPECT)


def test_sources(tmp_path):
    p = save(photo(64, 48), tmp_path/'a.png')
    ref = load_image(p, short_side=24)
    assert np.array_equal(np.asarray(load_image(p.read_bytes(), short_side=24)), np.asarray(ref))
    assert np.array_equal(np.asarray(load_image(Image.open(p), short_side=24)), np.asarray(ref))
    assert np.array_equal(np.asarray(load_image(np.asarray(Image.open(p)), short_side=24)), np.asarray(ref))
    assert load_image(np.zeros((8, 6), np.uint8)).size == (6, 8)
    assert load_image(np.zeros((8, 6, 4), np.uint8)).getpixel((0, 0)) == ri.BACKGROUND
    with pytest.raises(ImageLoadError, match='shape'): load_image(np.zeros((8, 6, 2), np.uint8))
    with pytest.raises(TypeError): load_image(123)
    with pytest.raises(ValueError): load_image(p, short_side=0)


def test_odd_file_names(tmp_path):
    for name in ['with space.jpg', 'ünïcødé 写真.JPG', '-dash.jpeg']:
        p = save(photo(40, 30), tmp_path/name, 'JPEG')
        assert load_image(p, short_side=15).size == (20, 15)
        assert probe_image(p) == dict(width=40, height=30, format='JPEG')


def test_probe_reads_header_only(tmp_path, no_decoding):
    ex = Image.Exif(); ex[0x0112] = 8
    photo(90, 60).save(tmp_path/'r.jpg', quality=80, exif=ex.tobytes())
    photo(90, 60).save(tmp_path/'p.png')
    assert probe_image(tmp_path/'r.jpg') == dict(width=60, height=90, format='JPEG')
    assert probe_image(tmp_path/'p.png') == dict(width=90, height=60, format='PNG')


def test_restricted_formats(tmp_path):
    "Formats outside the allow-list (here: EPS, which would run Ghostscript) are not opened."
    p = tmp_path/'x.jpg'; p.write_bytes(b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n')
    with pytest.raises(ImageLoadError, match='not an image'): load_image(p)


def test_real_photos(genimage_dir):
    """Real and generated samples (256 px JPEGs): probe agrees with a full decode; at the pipeline size (256) the
    loader equals the reference exactly; at 2x reduction the default (full decode + bilinear) equals the reference
    exactly too, and the draft opt-in (a DCT-domain box average) stays within the spread between two standard Pillow
    filters (bilinear vs box or Lanczos: 2.5-3.7 grey levels on these images)."""
    files = sorted((genimage_dir/'natural').glob('*.jpg'))[:5] + sorted((genimage_dir/'stable_diffusion_1_4').glob('*'))[:5]
    assert files
    mads = []
    for f in files:
        info = probe_image(f)
        ref = ImageOps.exif_transpose(Image.open(f)).convert('RGB')
        assert (ref.width, ref.height) == (info['width'], info['height'])
        full = load_image(f, short_side=min(ref.size))
        assert np.array_equal(np.asarray(full), np.asarray(ref)), f
        im = load_image(f, short_side=min(ref.size) // 2)
        assert im.mode == 'RGB' and min(im.size) == min(ref.size) // 2
        assert mad(im, ref.resize(im.size, BIL)) == 0, f
        im = load_image(f, short_side=min(ref.size) // 2, draft=True)
        mads.append(mad(im, ref.resize(im.size, BIL)))
    assert np.mean(mads) < 4.0 and max(mads) < 8.0, mads


def test_fifo_and_nul_path_are_errors_not_hangs(tmp_path):
    "A named pipe called x.jpg must not block the loader, and a path with a NUL byte is an ImageLoadError."
    fifo = tmp_path/'pipe.jpg'
    os.mkfifo(fifo)
    with pytest.raises(ImageLoadError, match='not a regular file'): load_image(fifo)
    with pytest.raises(ImageLoadError, match='not a regular file'): probe_image(fifo)
    with pytest.raises(ImageLoadError, match='NUL'): load_image(str(tmp_path/'bad\0name.png'))


@pytest.mark.parametrize('seed', range(4))
def test_a_box_cut_while_resizing_equals_the_box_of_the_whole_resize(seed):
    "Any box, any size (upscaled, beyond MAX_ASPECT, shrunk past the block reduction), drafted or not: within one grey level."
    import io
    rng = np.random.default_rng(seed)
    for trial in range(6):
        w, h = int(rng.integers(40, 1400)), int(rng.integers(40, 1400))
        if trial == 0: w = h * 5                                  # cut to MAX_ASPECT first
        im = Image.fromarray(rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        b = io.BytesIO(); im.save(b, 'JPEG', quality=90)
        s, draft = int(rng.integers(16, 300)), bool(trial % 2)
        whole = np.asarray(load_image(b.getvalue(), short_side=s, draft=draft)).astype(int)
        H, W = whole.shape[:2]
        cw, ch = int(rng.integers(1, W + 1)), int(rng.integers(1, H + 1))
        l, t = int(rng.integers(0, W - cw + 1)), int(rng.integers(0, H - ch + 1))
        cut = np.asarray(load_image(b.getvalue(), short_side=s, draft=draft, crop=lambda *_: (l, t, l + cw, t + ch))).astype(int)
        assert cut.shape == (ch, cw, 3)
        assert np.abs(cut - whole[t:t + ch, l:l + cw]).max() <= 1, (w, h, s, draft, (l, t, cw, ch))


def test_a_file_a_container_member_and_bytes_reach_the_decoder_alike(tmp_path, monkeypatch):
    "Each source up to `IN_MEMORY_BYTES` is decoded from bytes in memory; a larger file is decoded from the open file, to the same pixels."
    import io, tarfile
    p = save(photo(64, 48), tmp_path/'a.jpg', quality=90)
    with tarfile.open(tmp_path/'s.tar', 'w') as tf: tf.add(p, 'a.jpg')
    seen, real = [], ri._open
    def spy(fp, *a, **k):
        seen.append((type(fp), fp.getvalue() if isinstance(fp, io.BytesIO) else None))
        return real(fp, *a, **k)
    monkeypatch.setattr(ri, '_open', spy)
    px = [np.asarray(load_image(s, short_side=24)) for s in (p, f'{tmp_path}/s.tar/a.jpg', p.read_bytes())]
    assert seen == [(io.BytesIO, p.read_bytes())] * 3
    assert all(np.array_equal(x, px[0]) for x in px)
    monkeypatch.setattr(ri, 'IN_MEMORY_BYTES', p.stat().st_size - 1)
    seen.clear()
    assert np.array_equal(np.asarray(load_image(p, short_side=24)), px[0])
    assert len(seen) == 1 and seen[0][0] is not io.BytesIO
    (tmp_path/'empty.jpg').write_bytes(b'')
    with pytest.raises(ImageLoadError, match='empty file'): load_image(tmp_path/'empty.jpg')
