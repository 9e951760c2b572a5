"""A corpus of bad (and oddly valid) image files for the torture tests, made in a temporary folder.

`make_corpus(dest)` writes every file and returns a list of `Entry`: the file, its label (for training/evaluation),
and what every entry point must do with it: `'ok'` (scored like any image; `size` and `ref` say what a correct
decode looks like) or `'error'` with `reason`, substrings of which one must appear in the reported error (together
with the file's name). `probe` overrides the expectation for header-only probing (a truncated file has a valid header).
"""
from __future__ import annotations
import io, os, random, struct, zlib
from dataclasses import dataclass
from pathlib import Path
import numpy as np
from PIL import Image

__all__ = ['Entry', 'make_corpus', 'is_root_readable', 'png_declaring', 'base_image', 'reason_ok', 'CONTROL']

CONTROL = ('plain_jpeg', 'plain_png')  # clean files: if these fail, the entry point is broken, not the corpus


@dataclass
class Entry:
    key: str                       # short id, used in test ids and the outcome table
    path: Path                     # the file (may be a symlink, unreadable, ...)
    expect: str                    # 'ok' or 'error'
    reason: tuple = ()             # for 'error': one of these (lower-case) substrings must be in the message
    label: str = 'real'            # label used when the corpus goes through training / evaluation
    size: tuple | None = None      # for 'ok': (width, height) of the upright, full-resolution decode
    ref: np.ndarray | None = None  # for 'ok': the correct upright RGB pixels (HxWx3 uint8), None = no pixel check
    mask: np.ndarray | None = None # pixels of `ref` that must match (None = all)
    tol: float = 2.0               # max mean absolute difference (0-255) against `ref` on `mask`
    probe: str | None = None       # expected outcome of header-only probing when it differs from `expect`
    note: str = ''

    @property
    def probe_expect(self) -> str: return self.probe or self.expect

    def __repr__(self): return f"Entry({self.key!r}, {self.expect!r})"


def reason_ok(msg: str, e: Entry) -> bool:
    "True when error message `msg` names the file of `e` and gives one of its reasons."
    m = str(msg).lower()
    names_file = e.path.name.lower() in m or str(e.path).lower() in m
    return names_file and any(r in m for r in e.reason)


def base_image(w=48, h=32) -> np.ndarray:
    "A smooth, non-symmetric RGB test picture (gradients + a block), so rotations and flips are detectable."
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 255 // max(w + h - 2, 1)], -1).astype(np.uint8)
    a[2:h // 3, 2:w // 4] = (250, 20, 20)  # a red block near the top-left corner
    return a


def _noise(w, h, seed) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_declaring(w: int, h: int) -> bytes:
    "A tiny, well-formed PNG whose IHDR declares `w` x `h` RGB pixels (valid CRCs; nothing of that size allocated)."
    def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xffffffff)
    ihdr = struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)  # 8-bit, truecolour, deflate, no filter, no interlace
    idat = zlib.compress(b'\x00' * (1 + 3 * 16) * 4)    # a few (too few) rows: a decoder would stop long before
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', idat) + chunk(b'IEND', b'')


def is_root_readable(path) -> bool:
    "True when `path`, although chmod 000, can still be read (we run as root / with CAP_DAC_OVERRIDE)."
    try:
        with open(path, 'rb') as f: f.read(1)
        return True
    except PermissionError: return False


def _jpeg(a, **kw) -> bytes:
    b = io.BytesIO(); Image.fromarray(a).save(b, 'JPEG', quality=95, **kw); return b.getvalue()


def _png(im) -> bytes:
    b = io.BytesIO(); (im if isinstance(im, Image.Image) else Image.fromarray(im)).save(b, 'PNG'); return b.getvalue()


def make_corpus(dest) -> list[Entry]:
    "Write the corpus into folder `dest` (created) and return its entries, in a fixed order."
    dest = Path(dest); dest.mkdir(parents=True, exist_ok=True)
    base = base_image()                      # 48x32
    H, W = base.shape[:2]
    out: list[Entry] = []
    def add(name, data, key, expect, **kw):
        p = dest / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if data is not None: p.write_bytes(data)
        e = Entry(key, p, expect, **kw); out.append(e); return e

    # controls
    add('plain.jpg', _jpeg(base), 'plain_jpeg', 'ok', size=(W, H), ref=base, tol=6, note='clean JPEG (control)')
    add('plain.png', _png(base), 'plain_png', 'ok', label='fake', size=(W, H), ref=base, tol=0, note='clean PNG (control)')

    # broken files
    add('zero bytes.jpg', b'', 'zero_byte', 'error', reason=('empty', '0 bytes', 'zero'), note='zero-byte .jpg')
    big = _noise(64, 64, 1)
    j = _jpeg(big)
    add('truncated.jpg', j[:len(j) // 2], 'trunc_jpeg', 'error', reason=('truncat', 'premature end', 'corrupt'),
        label='fake', probe='ok', size=(64, 64), note='JPEG cut at half its length (header intact: probing may pass)')
    p = _png(big)
    add('truncated.png', p[:len(p) // 2], 'trunc_png', 'error', reason=('truncat', 'incomplete', 'corrupt'),
        probe='ok', size=(64, 64), note='PNG cut at half its length (header intact: probing may pass)')
    rnd = random.Random(0).randbytes(4096)
    add('random.jpg', b'\x00\x01' + rnd[2:], 'random_bytes', 'error',
        reason=('not an image', 'unrecogni', 'cannot identify', 'unknown format'), label='fake', note='random bytes named .jpg')
    html = (b'<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>\n<body><h1>Forbidden</h1>'
            b'<p>You don\'t have permission to access this resource.</p></body></html>\n')
    add('page.jpg', html, 'html_page', 'error', reason=('html', 'not an image'), note='HTML error page saved as .jpg')
    add('bomb.png', png_declaring(40000, 40000), 'bomb_png', 'error',
        reason=('bomb', 'pixels', 'too large', 'limit'), label='fake', note='PNG header declares 40000x40000')

    # valid but odd formats: must be scored like any image, and decoded correctly
    b = io.BytesIO(); Image.fromarray(base).convert('CMYK').save(b, 'JPEG', quality=95)
    add('cmyk.jpg', b.getvalue(), 'cmyk_jpeg', 'ok', size=(W, H), ref=base, tol=8, note='CMYK JPEG')
    g16 = ((np.arange(W)[None, :] * 65535 // (W - 1)) * np.ones((H, 1), int)).astype(np.uint16)
    g8 = np.rint(g16 / 65535 * 255).astype(np.uint8)
    add('gray16.png', _png(Image.fromarray(g16)), 'gray16_png', 'ok', label='fake', size=(W, H),
        ref=np.repeat(g8[..., None], 3, -1), tol=2, note='16-bit grayscale PNG (I;16): must not saturate to white')
    pal = Image.fromarray(base).quantize(16)
    pa = np.array(pal); pa[:4, :4] = 15                 # palette index 15 = transparent in the top-left corner
    pal2 = Image.fromarray(pa, 'P'); pal2.putpalette(pal.getpalette())
    bio = io.BytesIO(); pal2.save(bio, 'PNG', transparency=15)
    opaque = pa != 15
    ref_pal = np.array(pal2.convert('RGB'))
    add('palette_transparent.png', bio.getvalue(), 'palette_trns', 'ok', size=(W, H), ref=ref_pal, mask=opaque, tol=1,
        note='palette PNG with a transparent index')
    rgba = np.dstack([base, np.full((H, W), 255, np.uint8)]); rgba[:, :W // 2, 3] = 0
    add('rgba.png', _png(Image.fromarray(rgba, 'RGBA')), 'rgba_png', 'ok', label='fake', size=(W, H), ref=base,
        mask=rgba[..., 3] == 255, tol=1, note='RGBA PNG, left half fully transparent')
    frames = [Image.new('RGB', (W, H), c) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    bio = io.BytesIO(); frames[0].save(bio, 'GIF', save_all=True, append_images=frames[1:], duration=100, loop=0)
    add('animated.gif', bio.getvalue(), 'animated_gif', 'ok', size=(W, H), ref=np.array(frames[0]), tol=3,
        note='3-frame animated GIF: the first frame is scored')
    # stored sideways with EXIF orientation 6 ("rotate 90 CW to display"): the upright picture is `base`
    sideways = np.ascontiguousarray(np.rot90(base, 1))  # 90 CCW: 32 wide, 48 high
    ex = Image.Exif(); ex[0x0112] = 6
    add('exif_rotated.jpg', _jpeg(sideways, exif=ex.tobytes()), 'exif_rot_jpeg', 'ok', label='fake', size=(W, H), ref=base,
        tol=6, note='JPEG stored sideways with EXIF orientation 6')
    add('one_pixel.png', _png(np.array([[[10, 200, 30]]], np.uint8)), 'tiny_1x1', 'ok', size=(1, 1),
        ref=np.array([[[10, 200, 30]]], np.uint8), tol=0, note='1x1 image')
    wide = _noise(4000, 10, 2)
    add('wide_4000x10.png', _png(wide), 'wide_4000x10', 'ok', label='fake', size=(4000, 10), ref=wide, tol=0,
        note='extreme aspect ratio 4000x10')

    # names
    add('name with spaces.jpg', _jpeg(base), 'name_spaces', 'ok', size=(W, H), ref=base, tol=6, note='spaces in the name')
    add('sub dir ñ/ünïcødé 日本語 é.png', _png(base), 'name_unicode', 'ok', label='fake', size=(W, H), ref=base, tol=0,
        note='non-ASCII file and folder names')
    add('new\nline, "quoted".jpg', _jpeg(base), 'name_newline', 'ok', label='fake', size=(W, H), ref=base, tol=6,
        note='a newline, a comma and quotes in the name (CSV/JSONL escaping)')

    # file system oddities
    e = add('unreadable.jpg', _jpeg(base), 'no_read_perm', 'error', reason=('permission',), note='chmod 000')
    os.chmod(e.path, 0)
    if is_root_readable(e.path):
        e.expect, e.reason, e.size, e.ref, e.tol = 'ok', (), (W, H), base, 6
        e.note = 'chmod 000, but running as root: reads are not blocked, so it must be scored like any image'
    loop = dest / 'symlink_loop.jpg'
    os.symlink(loop.name, loop)                        # points at itself: open() fails with ELOOP
    out.append(Entry('symlink_loop', loop, 'error', reason=('loop', 'symbolic links'), label='fake',
                     note='symlink pointing at itself'))
    fifo = dest / 'named pipe.jpg'
    os.mkfifo(fifo)                                    # open() would block until someone writes: must not hang
    out.append(Entry('fifo', fifo, 'error', reason=('regular file', 'fifo', 'pipe'), note='a named pipe called .jpg'))
    os.symlink(dest, dest / 'loop dir')                # a folder symlink back to the corpus: scans must not loop
    return out
