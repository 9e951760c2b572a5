"Provenance evidence: watermarks embedded by invisible-watermark, C2PA manifests signed with a test CA through c2pa-python, generator text; what survives re-encoding; bad input."
import datetime as dt, io, json, os, struct, sys, time, tracemalloc, zlib
import numpy as np, pytest
from PIL import Image, PngImagePlugin
from realfake.provenance import read_provenance, decode_watermark, WATERMARKS, WM_MIN_AGREEMENT, EXTRA, Provenance

def photo(h=320, w=320, seed=0) -> np.ndarray:
    "A photo-like RGB image: a ramp, a texture and mild noise (dwtDct needs each 4x4 block to have a clear largest value)."
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    ramp = (x + y)[..., None] * (200 / (h + w)) + 28
    tex = np.stack([np.sin(x / (7 + c) + c) * np.cos(y / (5 + c)) for c in (0, 1, 2)], -1) * 20
    return (ramp + tex + rng.normal(0, 4, ramp.shape)).clip(0, 255).astype(np.uint8)

def embed(rgb, name):
    "`rgb` marked the way the reference code marks it: SD 1.x/2.x scripts (bytes, uint8 BGR), diffusers SDXL (bits, float BGR)."
    iw = pytest.importorskip('imwatermark')
    bits, domain, _ = WATERMARKS[name]
    enc = iw.WatermarkEncoder()
    if domain == 'uint8':
        enc.set_watermark('bytes', np.packbits(bits).tobytes())
        return enc.encode(rgb[..., ::-1].copy(), 'dwtDct')[..., ::-1]
    enc.set_watermark('bits', [int(b) for b in bits])
    out = enc.encode(rgb[..., ::-1].astype(np.float32), 'dwtDct')[..., ::-1]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)

def encode(rgb, fmt='PNG', scale=None, **kw) -> bytes:
    im = Image.fromarray(rgb)
    if scale: im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BILINEAR)
    b = io.BytesIO(); im.save(b, fmt, **kw); return b.getvalue()

def reencode(data:bytes, fmt='JPEG', **kw) -> bytes:
    "What a website does: decode and save again (PIL keeps no metadata unless told)."
    return encode(np.asarray(Image.open(io.BytesIO(data)).convert('RGB')), fmt, **kw)

def found(p:Provenance, kind): return [e for e in p.items if e.kind == kind]

# ---- watermarks ----
@pytest.mark.parametrize('name', list(WATERMARKS))
def test_watermark_found_and_decoder_matches_reference(name):
    iw = pytest.importorskip('imwatermark')
    marked, bits = embed(photo(), name), WATERMARKS[name][0]
    p = read_provenance(encode(marked))
    w = found(p, 'watermark')
    assert [e.detail['message'] for e in w] == [name] and w[0].status == 'verified' and w[0].ai is True
    assert w[0].detail['agreement'] >= WM_MIN_AGREEMENT and p.checked['watermark'] == 'decoded'
    if WATERMARKS[name][1] == 'uint8':    # the reference decoder reads uint8 BGR, as the scripts wrote it
        for img in (marked, photo(seed=1)):
            ref = iw.WatermarkDecoder('bits', len(bits)).decode(img[..., ::-1].copy(), 'dwtDct')
            assert (decode_watermark(img, len(bits)) == np.array(ref, np.uint8)).all()

@pytest.mark.parametrize('seed', range(4))
def test_unmarked_images_carry_no_watermark(seed):
    for img in (photo(seed=seed), np.full((300, 300, 3), 128, np.uint8), np.random.default_rng(seed).integers(0, 256, (300, 300, 3), dtype=np.uint8)):
        p = read_provenance(encode(img))
        assert p.checked['watermark'] == 'decoded' and not found(p, 'watermark')

@pytest.mark.parametrize('how,survives,checked', [
    (dict(fmt='JPEG', quality=95), False, 'skipped: JPEG quality 95 < 98 with subsampled chroma'),
    (dict(fmt='JPEG', quality=75), False, 'skipped: JPEG quality 75 < 98 with subsampled chroma'),
    (dict(fmt='JPEG', quality=50), False, 'skipped: JPEG quality 50 < 98 with subsampled chroma'),
    (dict(fmt='JPEG', quality=50, subsampling=0), False, 'skipped: JPEG quality 50 < 70'),
    (dict(fmt='JPEG', quality=100), True, 'decoded'),
    (dict(fmt='JPEG', quality=95, subsampling=0), True, 'decoded'),
    (dict(fmt='JPEG', quality=75, subsampling=0), True, 'decoded'),
    (dict(fmt='PNG', scale=0.5), False, 'decoded'),
    (dict(fmt='PNG'), True, 'decoded')])
def test_watermark_survival(how, survives, checked):
    "What survives a re-encode, and the skip rules are right: where the decode is skipped, decoding anyway finds nothing."
    marked = embed(photo(520, 520), 'StableDiffusionV1')
    data = encode(marked, **how)
    p = read_provenance(data)
    assert p.checked['watermark'] == checked and bool(found(p, 'watermark')) == survives
    px = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
    assert bool(found(read_provenance(data, rgb=px), 'watermark')) == survives

def test_small_images_and_pixels_given():
    p = read_provenance(encode(photo(100, 100)))
    assert p.checked['watermark'] == 'skipped: smaller than 256x256'
    marked = embed(photo(), 'SDV2')
    assert found(read_provenance(encode(photo()), rgb=marked), 'watermark')     # the pixels given are the ones read
    assert read_provenance(encode(marked), watermark=False).checked['watermark'] == 'skipped: off'

# ---- C2PA, signed with a test CA made here ----
def make_chain(valid_days=(-1, 30)):
    "(signer cert + CA cert PEM, signer key PEM, CA cert PEM): an ES256 chain with the extensions C2PA requires of a signer."
    pytest.importorskip('cryptography')
    from cryptography import x509
    from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    now = dt.datetime.now(dt.timezone.utc)
    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'realfake tests')])
    usage = lambda ca: x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name('realfake test CA')).issuer_name(name('realfake test CA'))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=3650)).not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).add_extension(usage(True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False).sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name('realfake test signer')).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=valid_days[0])).not_valid_after(now + dt.timedelta(days=valid_days[1]))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True).add_extension(usage(False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM).decode()
    return pem(leaf) + pem(ca), key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()).decode(), pem(ca)

IPTC = 'http://cv.iptc.org/newscodes/digitalsourcetype/'

def sign(data:bytes, mime:str, chain, key, source='trainedAlgorithmicMedia', extra_assertions=()) -> bytes:
    c2pa = pytest.importorskip('c2pa')
    manifest = {'claim_generator_info': [{'name': 'TestGen', 'version': '1.0'}], 'title': 'test',
                'assertions': [{'label': 'c2pa.actions', 'data': {'actions': [{'action': 'c2pa.created', 'digitalSourceType': IPTC + source}]}},
                               *extra_assertions]}
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain.encode(), key.encode(), None))
    out = io.BytesIO()
    with c2pa.Builder(manifest) as b: b.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()

@pytest.fixture(scope='module')
def chain(): return make_chain()

def tamper(data:bytes, fmt:str) -> bytes:
    "Change one byte of the pixel data, after the metadata."
    at = data.index(b'IDAT') + 20 if fmt == 'PNG' else data.rindex(b'\xff\xda') + 40
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1:]

@pytest.fixture(scope='module')
def expired():
    "PNG and JPEG signed with a certificate that expired after signing (c2pa refuses to sign with an expired one), and its CA."
    pem, key, ca = make_chain((-1, 2 / 86400))                  # valid for two more seconds
    signed = {fmt: sign(encode(photo(64, 64), fmt), Image.MIME[fmt], pem, key) for fmt in ('PNG', 'JPEG')}
    time.sleep(3.1)
    return signed, ca

@pytest.mark.parametrize('fmt', ['PNG', 'JPEG'])
@pytest.mark.parametrize('case,status', [('trusted', 'verified'), ('no anchors', 'untrusted'), ('other CA', 'untrusted'),
                                         ('tampered', 'tampered'), ('expired', 'expired')])
def test_c2pa_status(chain, expired, fmt, case, status):
    pem, key, ca = chain
    data = expired[0][fmt] if case == 'expired' else sign(encode(photo(64, 64), fmt), Image.MIME[fmt], pem, key)
    if case == 'tampered': data = tamper(data, fmt)
    anchors = {'no anchors': '', 'other CA': make_chain()[2], 'expired': expired[1]}.get(case, ca)
    p = read_provenance(data, trust_anchors=anchors)
    (e,) = found(p, 'c2pa')
    assert (e.status, p.checked['c2pa'], e.generator) == (status, 'read', 'TestGen')
    assert e.detail['digital_source_type'] == 'trainedAlgorithmicMedia' and e.detail['signer'] == 'realfake test signer'
    assert p.ai is (None if status in ('tampered', 'invalid') else True)

def test_c2pa_capture_claim_and_reencode(chain):
    pem, key, ca = chain
    data = sign(encode(photo(64, 64), 'JPEG'), 'image/jpeg', pem, key, source='digitalCapture')
    p = read_provenance(data, trust_anchors=ca)
    assert [(e.kind, e.status, e.ai) for e in p.items] == [('c2pa', 'verified', False)] and p.ai is False
    for fmt in ('JPEG', 'PNG', 'WEBP'):                        # a re-encode drops the manifest
        q = read_provenance(reencode(data, fmt))
        assert q.checked['c2pa'] == 'absent' and not q.items

def test_c2pa_without_the_extra(chain, monkeypatch):
    pem, key, _ = chain
    data = sign(encode(photo(64, 64), 'PNG'), 'image/png', pem, key)
    monkeypatch.setitem(sys.modules, 'c2pa', None)            # what a base install sees
    (e,) = read_provenance(data).items
    assert (e.kind, e.status) == ('c2pa', 'not checked') and EXTRA in e.says and e.ai is None

# ---- generator text ----
A1111 = 'a cat on a sofa\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Model: sd_xl_base_1.0, Version: v1.9.0'
COMFY_PROMPT = json.dumps({'3': {'class_type': 'KSampler', 'inputs': {'seed': 1}}, '4': {'class_type': 'CheckpointLoaderSimple', 'inputs': {}}})
COMFY_WORKFLOW = json.dumps({'nodes': [{'id': 3, 'type': 'KSampler'}], 'links': []})
XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
       'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
       f'Iptc4xmpExt:DigitalSourceType="{IPTC}trainedAlgorithmicMedia" xmp:CreatorTool="Midjourney"/></rdf:RDF></x:xmpmeta>')

def png_text(texts:dict, z=False) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in texts.items(): info.add_itxt(k, v, zip=True) if z == 'itxt' else info.add_text(k, v, zip=z)
    b = io.BytesIO(); Image.fromarray(photo(32, 32)).save(b, 'PNG', pnginfo=info); return b.getvalue()

def jpeg_exif(**tags) -> bytes:
    ex = Image.Exif()
    for t, v in tags.items():
        if t == 'UserComment': ex.get_ifd(0x8769)[0x9286] = b'UNICODE\0' + v.encode('utf-16-be')   # as piexif (A1111) writes it
        else: ex[{'Software': 0x0131, 'Make': 0x010F, 'Model': 0x0110}[t]] = v
    b = io.BytesIO(); Image.fromarray(photo(32, 32)).save(b, 'JPEG', exif=ex.tobytes()); return b.getvalue()

def with_xmp(fmt) -> bytes:
    if fmt == 'PNG': return png_text({'XML:com.adobe.xmp': XMP}, z='itxt')
    b = io.BytesIO(); Image.fromarray(photo(32, 32)).save(b, fmt, xmp=XMP.encode()); return b.getvalue()

TEXT_CASES = {
    'A1111 tEXt': (lambda: png_text({'parameters': A1111}), ['text/asserted: A1111 parameters (model sd_xl_base_1.0)']),
    'A1111 zTXt': (lambda: png_text({'parameters': A1111}, z=True), ['text/asserted: A1111 parameters (model sd_xl_base_1.0)']),
    'A1111 JPEG UserComment': (lambda: jpeg_exif(UserComment=A1111), ['text/asserted: A1111 parameters (model sd_xl_base_1.0)']),
    'ComfyUI': (lambda: png_text({'prompt': COMFY_PROMPT, 'workflow': COMFY_WORKFLOW}),
                ['text/asserted: ComfyUI prompt (2 nodes)', 'text/asserted: ComfyUI workflow (1 nodes)']),
    'ComfyUI iTXt': (lambda: png_text({'prompt': COMFY_PROMPT}, z='itxt'), ['text/asserted: ComfyUI prompt (2 nodes)']),
    'InvokeAI': (lambda: png_text({'invokeai_metadata': '{}'}), ['text/asserted: InvokeAI invokeai_metadata']),
    'NovelAI Software': (lambda: png_text({'Software': 'NovelAI', 'Comment': '{"steps": 28}'}), ['text/asserted: Software: NovelAI']),
    'EXIF Software': (lambda: jpeg_exif(Software='Adobe Firefly'), ['text/asserted: Software: Adobe Firefly']),
    'XMP PNG': (lambda: with_xmp('PNG'), ['text/asserted: XMP digital source type trainedAlgorithmicMedia', 'text/asserted: CreatorTool: Midjourney']),
    'XMP JPEG': (lambda: with_xmp('JPEG'), ['text/asserted: XMP digital source type trainedAlgorithmicMedia', 'text/asserted: CreatorTool: Midjourney']),
    'XMP WebP': (lambda: with_xmp('WEBP'), ['text/asserted: XMP digital source type trainedAlgorithmicMedia', 'text/asserted: CreatorTool: Midjourney']),
    'camera': (lambda: jpeg_exif(Make='Canon', Model='EOS R5'), ['text/asserted: EXIF camera Canon EOS R5']),
    'prompt words only': (lambda: png_text({'Description': 'a midjourney-style stable diffusion render', 'Title': 'DALL-E'}), []),
    'photo editor': (lambda: jpeg_exif(Software='Adobe Photoshop 25.1 (Windows)'), []),
}

@pytest.mark.parametrize('case', list(TEXT_CASES))
def test_generator_text(case):
    make, want = TEXT_CASES[case]
    data = make()
    p = read_provenance(data)
    assert [str(e) for e in p.items] == want and p.checked['text'] == 'read'
    assert p.ai is (None if not want else case != 'camera' or False)
    assert not read_provenance(reencode(data)).items            # a re-encode keeps none of it

# ---- bad input: bounded, an error item, never an exception ----
def chunk(typ:bytes, body:bytes) -> bytes: return struct.pack('>I', len(body)) + typ + body + struct.pack('>I', zlib.crc32(typ + body))

def png_with_chunks(*chunks) -> bytes:
    png = encode(photo(32, 32))
    return png[:33] + b''.join(chunks) + png[33:]             # after IHDR (8 + 25 bytes)

def jpeg_app11(body:bytes) -> bytes:
    j = encode(photo(32, 32), 'JPEG')
    return j[:2] + b'\xff\xeb' + struct.pack('>H', len(body) + 2) + body + j[2:]

BOMB = zlib.compress(b'\0' * (64 << 20), 9)                   # 64 MB of zeros in ~64 KB

BAD = {
    '10 MB manifest': (lambda: png_with_chunks(chunk(b'caBX', b'\0\0\0\x10jumb' + bytes(10 << 20))), 'error', 'exceeds'),
    'malformed JUMBF box (PNG)': (lambda: png_with_chunks(chunk(b'caBX', b'\xff\xff\xff\xffjumbc2pa' + bytes(100))), 'error', 'C2PA manifest unreadable'),
    'malformed JUMBF box (JPEG)': (lambda: jpeg_app11(b'JP\0\x01\0\0\0\x01\0\0\0\x08jumb' + bytes(50)), 'error', 'C2PA manifest unreadable'),
    'zTXt bomb': (lambda: png_with_chunks(chunk(b'zTXt', b'parameters\0\0' + BOMB)), 'cut', 'parameters'),
    'iTXt bomb': (lambda: png_with_chunks(chunk(b'iTXt', b'prompt\0\1\0\0\0' + BOMB)), 'cut', 'prompt'),
    '20 MB tEXt': (lambda: png_with_chunks(chunk(b'tEXt', b'workflow\0' + b'x' * (20 << 20))), 'cut', 'workflow'),
    '20000 chunks': (lambda: png_with_chunks(*[chunk(b'tEXt', b'k\0v')] * 20000), 'cut', 'chunks'),
    'chunk length past the end': (lambda: png_with_chunks(struct.pack('>I', 1 << 30) + b'tEXtparameters\0x'), None, ''),
    'truncated PNG': (lambda: encode(photo(300, 300))[:500], 'watermark', ''),
    'truncated JPEG': (lambda: encode(photo(300, 300), 'JPEG', quality=100)[:700], 'watermark', ''),
    'JPEG segment length 0': (lambda: b'\xff\xd8\xff\xe1\x00\x00' + bytes(50), None, ''),
    'EXIF garbage': (lambda: b'\xff\xd8\xff\xe1\x00\x20Exif\0\0MM\0*\xff\xff\xff\xff' + bytes(16) + b'\xff\xd9', None, ''),
    'random bytes': (lambda: np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), 'watermark', ''),
    'empty': (lambda: b'', 'watermark', ''),
    'not a file': (lambda: '/no/such/file.png', 'error', 'unreadable'),
    'a folder': (lambda: '/', 'error', 'unreadable'),
}

@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='no FIFOs here')
def test_fifo_does_not_hang(tmp_path):
    os.mkfifo(tmp_path/'pipe.png')
    (e,) = read_provenance(tmp_path/'pipe.png').items
    assert (e.kind, e.says) == ('error', 'unreadable (ValueError: not a regular file)')

def test_says_is_one_line():
    p = read_provenance(png_text({'Software': 'NovelAI\n=cmd|\r\n x'}))
    assert [e.says for e in p.items] == ['Software: NovelAI =cmd| x']

@pytest.mark.parametrize('case', list(BAD))
def test_bad_input(case):
    make, what, word = BAD[case]
    src = make()
    tracemalloc.start()
    try: p = read_provenance(src)
    finally: peak = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
    assert peak < 24 << 20, f'{case}: {peak >> 20} MB'
    assert isinstance(p, Provenance)
    errs = [e for e in p.items if e.kind == 'error']
    if what == 'error': assert errs and word in errs[0].says, p
    elif what == 'cut': assert word in p.checked['text'] and 'cut' in p.checked['text'], p
    elif what == 'watermark': assert p.checked['watermark'].startswith('skipped: pixels unreadable'), p
    assert not [e for e in p.items if e.kind not in ('error',)] or case.startswith(('zTXt', 'iTXt', '20 MB'))

# ---- where it shows: Classifier.predict and realfake_predict ----
def test_predict_provenance_column(tiny_model_dir, tmp_path):
    import pandas as pd
    from realfake.core import RealfakeError
    from realfake.predict import Classifier, realfake_predict
    clf = Classifier.from_dir(tiny_model_dir, backend='torch', device='cpu')
    d = tmp_path/'imgs'; d.mkdir()
    (d/'a1111.png').write_bytes(png_text({'parameters': A1111}))
    (d/'plain.png').write_bytes(encode(photo(32, 32)))
    marked = embed(photo(), 'SDV2'); (d/'marked.png').write_bytes(encode(marked))
    items = [d/'a1111.png', d/'plain.png', marked, (d/'a1111.png').read_bytes()]
    plain, dp = clf.predict(items), clf.predict(items, provenance=True)
    assert 'provenance' not in plain.columns
    want = ['text/asserted: A1111 parameters (model sd_xl_base_1.0)', '', 'watermark/verified: invisible watermark SDV2 (100% of 32 bits)',
            'text/asserted: A1111 parameters (model sd_xl_base_1.0)']
    assert list(dp.provenance) == want
    assert np.allclose(dp.prob_fake, plain.prob_fake)                 # the score never changes
    realfake_predict([d], model=clf, out=tmp_path/'p.csv', provenance=True, no_progress=True)
    res = pd.read_csv(tmp_path/'p.csv', keep_default_na=False).set_index('path')
    assert list(res.columns)[-1] == 'provenance'
    assert res.provenance.to_dict() == {str(d/'a1111.png'): want[0], str(d/'plain.png'): '', str(d/'marked.png'): want[2]}
    realfake_predict([d], model=clf, out=tmp_path/'p.csv', provenance=True, no_progress=True)   # resumes
    assert len(pd.read_csv(tmp_path/'p.csv')) == 3
    realfake_predict([d], model=clf, out=tmp_path/'q.csv', no_progress=True)
    with pytest.raises(RealfakeError): realfake_predict([d], model=clf, out=tmp_path/'q.csv', provenance=True, no_progress=True)

def test_large_png_decodes_only_the_rows_read():
    "A large PNG: only the top rows the check reads are decoded, with the same answer as from all its pixels."
    from realfake.provenance import _wm_rows, _pixels, _scan
    big = np.concatenate([embed(photo(600, 1200, seed=s), 'SDXL') for s in (0, 1)])        # 1200 x 1200
    data = encode(big)
    assert _pixels(data, _scan(memoryview(data))).shape == (_wm_rows(1200), 1200, 3) and _wm_rows(1200) < 600
    p = read_provenance(data)
    assert [e.detail['message'] for e in found(p, 'watermark')] == ['SDXL']
    assert [str(e) for e in p.items] == [str(e) for e in read_provenance(data, rgb=big).items]

def test_app_detect_shows_provenance(tiny_model_dir, tmp_path):
    "The Detect page's result row: the evidence under the score, or the plain sentence when there is none."
    pytest.importorskip('fasthtml')
    from fasthtml.common import to_xml
    from realfake.app import score_image
    from realfake.pages import result_row
    from realfake.predict import Classifier
    clf = Classifier.from_dir(tiny_model_dir, backend='torch', device='cpu')
    (tmp_path/'a.png').write_bytes(png_text({'parameters': A1111})); (tmp_path/'b.png').write_bytes(encode(photo(32, 32)))
    a, b = score_image(clf, tmp_path/'a.png', 'a.png'), score_image(clf, tmp_path/'b.png', 'b.png')
    assert [e['says'] for e in a['provenance']['items']] == ['A1111 parameters (model sd_xl_base_1.0)']
    assert a['prob_fake'] == pytest.approx(float(clf.predict([tmp_path/'a.png']).prob_fake[0]), abs=1e-6)   # the score is the model's
    assert 'text (asserted): A1111 parameters (model sd_xl_base_1.0)' in to_xml(result_row(a))
    assert b['provenance']['items'] == [] and 'no provenance found; absence proves nothing' in to_xml(result_row(b))

def test_evidence_per_class_warns_of_shortcuts(tmp_path):
    "Fakes with A1111 text and watermarks, reals with camera EXIF: each difference is warned about with its numbers; alike classes are not."
    from realfake.provenance import evidence_counts, evidence_warnings
    fakes = [read_provenance(png_text({'parameters': A1111}))] * 3 + [read_provenance(encode(embed(photo(), 'SDV2')))] + [read_provenance(encode(photo(32, 32)))]
    reals = [read_provenance(jpeg_exif(Make='Canon', Model='EOS R5'))] * 2 + [read_provenance(encode(photo(32, 32)))] * 3
    provs, labels = fakes + reals, ['fake'] * 5 + ['real'] * 5
    assert evidence_counts(provs, labels) == {'files': {'real': 5, 'fake': 5}, 'text claiming generated': {'real': 0, 'fake': 3},
                                              'watermark claiming generated': {'real': 0, 'fake': 1}, 'text claiming capture': {'real': 2, 'fake': 0}}
    w = evidence_warnings(provs, labels)
    assert sorted(x.split(':')[0] for x in w) == ['text claiming capture', 'text claiming generated', 'watermark claiming generated']
    assert any('3 of 5 fake images (60.0%) carry it, 0 of 5 real (0.0%)' in x for x in w)
    assert evidence_warnings(fakes + fakes, labels * 2) == []

@pytest.mark.parametrize('fmt', ['PNG', 'JPEG'])
def test_damaged_files_never_raise(chain, fmt):
    "Random bytes of a signed file with text chunks changed, cut or repeated: always an answer, never an exception."
    pem, key, _ = chain
    base = png_text({'parameters': A1111}) if fmt == 'PNG' else jpeg_exif(UserComment=A1111)
    data = sign(base, Image.MIME[fmt], pem, key)
    rng = np.random.default_rng(0)
    kinds = set()
    for i in range(60):
        b = bytearray(data)
        for at in rng.integers(0, len(b), int(rng.integers(1, 20))): b[at] = int(rng.integers(0, 256))
        if i % 3 == 1: b = b[:int(rng.integers(0, len(b)))]
        if i % 3 == 2: at = int(rng.integers(0, len(b))); b = b[:at] + b[at - 500:]
        p = read_provenance(bytes(b))
        assert isinstance(p, Provenance)
        kinds |= {e.kind + '/' + e.status for e in p.items}
    assert 'error/error' in kinds and kinds & {'c2pa/tampered', 'c2pa/invalid', 'c2pa/untrusted'}   # damage was seen, and reported

def test_import_pulls_no_torch_and_no_extra():
    "realfake.provenance is floor 1: importing it loads neither torch nor the optional libraries (c2pa is imported on first use)."
    import subprocess
    code = "import sys, realfake.provenance; print(sorted(m for m in ('torch', 'cv2', 'c2pa', 'imwatermark', 'pywt') if m in sys.modules))"
    import realfake
    root = os.path.dirname(os.path.dirname(realfake.__file__))
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, env={**os.environ, 'PYTHONPATH': root})
    assert out.stdout.strip() == '[]'
