"Tests of realfake.app: the HTTP routes with a test client, the limits, what the Label and Results pages give away, the CLI."
import copy, io, json, math, re, threading
from pathlib import Path

import numpy as np, pytest
from PIL import Image

pytest.importorskip('fasthtml', reason='the web app needs python-fasthtml (pip install realfake[app])')
from starlette.testclient import TestClient

from realfake.core import LABELS, USER_ERRORS, RealfakeError
from realfake.app import (ADMIN_COOKIE, STATIC, VOLUNTEER_COOKIE, _BodyLimit, label_image, make_app,
                          realfake_app)
from realfake.images import load_image
from realfake.metadata import write_metadata

# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def clf(tiny_model_dir):
    from realfake.predict import Classifier
    return Classifier.from_dir(tiny_model_dir, device='cpu', backend='torch')

def _img(seed, w=48, h=40, fmt='PNG'):
    rng = np.random.default_rng(seed)
    b = io.BytesIO(); Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(b, fmt)
    return b.getvalue()

def _dataset(root, n=12, n_test=10, broken=()):
    "n small images (real: JPEG 'natural' of one size, fake: PNG 'sdv14' of another) and their metadata."
    recs = []
    for i in range(n):
        lab = LABELS[i % 2]
        fmt, (w, h) = ('PNG', (64, 64)) if lab == 'fake' else ('JPEG', (48, 40))
        rel = f"{'fake/sdv14' if lab == 'fake' else 'real/natural'}/{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}"
        (root/rel).parent.mkdir(parents=True, exist_ok=True)
        data = _img(i, w, h, fmt)
        (root/rel).write_bytes(data[:len(data) // 2] if i in broken else data)
        recs.append(dict(path=rel, label=lab, split='test' if i < n_test else 'train',
                         source='sdv14' if lab == 'fake' else 'natural'))
    return write_metadata(recs, root/'metadata.jsonl', relative_to=root)

@pytest.fixture(scope='module')
def data(tmp_path_factory): return _dataset(tmp_path_factory.mktemp('data'))

@pytest.fixture
def app(clf, data, tmp_path):
    return make_app(clf, data, tmp_path/'votes.sqlite', max_bytes=50_000, max_pixels=100_000, max_files=4,
                    max_request_bytes=200_000, display_size=96, admin_token='s3cret')

def _json(client, url, **kw):
    r = client.post(url, headers={'accept': 'application/json'}, **kw)
    return r.status_code, r.json()

def _token_of(html):
    m = re.search(r'name="token" value="(\w+)"', html)
    return m.group(1) if m else None

def _label_all(client, answer=lambda i: 'fake'):
    "Vote on every image the app offers this client; returns the tokens seen in order."
    seen = []
    for i in range(100):
        tok = _token_of(client.get('/label').text)
        if tok is None: return seen
        seen.append(tok)
        r = client.post('/vote', data=dict(token=tok, answer=answer(i)), follow_redirects=False)
        assert r.status_code == 303, r.text
    raise AssertionError('the app never ran out of images')

# ---------------------------------------------------------------- Detect
def test_detect_good_image_matches_classifier(app, clf):
    cli = TestClient(app)
    png = _img(1, 64, 48)
    code, j = _json(cli, '/detect', files=[('images', ('a.png', png, 'image/png'))])
    assert code == 200 and j['mode'] == 'model'
    [r] = j['results']
    assert r['error'] is None and r['name'] == 'a.png'
    expected = clf.predict([load_image(png)]).iloc[0]
    assert r['prob_fake'] == pytest.approx(float(expected.prob_fake), abs=1e-6)
    assert r['label'] == expected.label in LABELS
    assert j['threshold'] == clf.threshold
    html = cli.post('/detect', files=[('images', ('a.png', png, 'image/png'))]).text
    assert f"{100*r['prob_fake']:.1f}%" in html and ('generated' if r['label'] == 'fake' else 'real') in html

def test_detect_jpeg_is_scored_as_the_classifier_scores_the_file(app, clf, tmp_path):
    "The upload is decoded once at the model's size (full decode, one resize): the same score as predict on the file."
    b = io.BytesIO()   # 97,200 pixels (just under the fixture's limit), smooth so that the file is small
    Image.fromarray(np.stack([*np.meshgrid(np.arange(360) % 256, np.arange(270) % 256), np.full((270, 360), 99)], -1).astype(np.uint8)).save(b, 'JPEG')
    jpg = b.getvalue()
    (tmp_path/'x.jpg').write_bytes(jpg)
    code, j = _json(TestClient(app), '/detect', files=[('images', ('x.jpg', jpg, 'image/jpeg'))])
    assert j['results'][0]['prob_fake'] == pytest.approx(float(clf.predict([tmp_path/'x.jpg']).prob_fake[0]), abs=1e-6)

def test_detect_bad_files_get_messages_not_error_pages(app):
    cli = TestClient(app)
    big_pixels = io.BytesIO(); Image.new('RGB', (400, 300)).save(big_pixels, 'PNG')  # 120k px > 100k limit
    files = [('images', ('ok.jpg', _img(2, fmt='JPEG'), 'image/jpeg')),
             ('images', ('notes.txt', b'hello, I am text', 'text/plain')),
             ('images', ('cut.jpg', _img(3, fmt='JPEG')[:200], 'image/jpeg')),
             ('images', ('huge.png', big_pixels.getvalue(), 'image/png'))]
    code, j = _json(cli, '/detect', files=files)
    assert code == 200
    res = {r['name']: r for r in j['results']}
    assert res['ok.jpg']['error'] is None and 0 <= res['ok.jpg']['prob_fake'] <= 1
    assert 'notes.txt' in res['notes.txt']['error'] and 'not an image' in res['notes.txt']['error']
    assert 'cut.jpg' in res['cut.jpg']['error'] and res['cut.jpg']['prob_fake'] is None
    assert '120,000 pixels' in res['huge.png']['error']
    assert not any('.upload' in (r['error'] or '') or 'tmp' in (r['error'] or '') for r in j['results'])  # no server paths
    r = cli.post('/detect', files=files)
    assert r.status_code == 200 and 'Traceback' not in r.text
    assert 'notes.txt: not an image' in r.text and 'huge.png' in r.text and '<form' in r.text
    r = cli.post('/detect', files=[('images', ('<i>evil.txt', b'hi', 'text/plain'))])   # names are escaped
    assert '<i>evil' not in r.text and '&lt;i&gt;evil.txt' in r.text

def test_detect_oversize_file_and_request(app):
    cli = TestClient(app)
    code, j = _json(cli, '/detect', files=[('images', ('big.png', b'\x89PNG' + bytes(60_000), 'image/png'))])
    assert code == 200 and 'more than the 50.0 kB limit' in j['results'][0]['error']
    # the whole request over max_request_bytes: refused by the middleware with a readable 413 page
    r = cli.post('/detect', files=[('images', ('x.png', bytes(300_000), 'image/png'))])
    assert r.status_code == 413 and 'upload is too large' in r.text and '<form' in r.text
    code, j = _json(cli, '/detect', files=[('images', ('x.png', bytes(300_000), 'image/png'))])
    assert code == 413 and 'too large' in j['error']
    # no Content-Length (chunked upload): the middleware counts the bytes and stops at the cap
    def chunks():
        yield b'--xyz\r\nContent-Disposition: form-data; name="images"; filename="c.png"\r\n\r\n'
        for _ in range(40): yield bytes(10_000)
    r = cli.post('/detect', content=chunks(), headers={'content-type': 'multipart/form-data; boundary=xyz'})
    assert 'content-length' not in r.request.headers and r.status_code == 413 and 'too large' in r.text
    code, j = _json(cli, '/detect', data={'crops': '1'})
    assert code == 400 and 'choose at least one' in j['error']

def test_too_many_files_get_the_page_not_plain_text(app):
    "Over max_files (even past Starlette's own 1000-file limit): the Detect page with a message, parsing stopped early."
    cli = TestClient(app)
    for n in (5, 1001):
        r = cli.post('/detect', files=[('images', (f'{i}.png', b'x', 'image/png')) for i in range(n)])
        assert r.status_code == 400 and 'at most 4 images' in r.text and '<form' in r.text
        assert r.headers['content-type'].startswith('text/html')

def test_body_limit_refuses_by_content_length_before_reading():
    "A body declared larger than the limit is refused without reading (spooling) a byte of it."
    import asyncio
    reads, sent = [], []
    async def receive(): reads.append(1); return {'type': 'http.request', 'body': b'x' * 1000, 'more_body': True}
    async def send(msg): sent.append(msg)
    async def never(scope, receive, send): raise AssertionError('the app must not run')
    mw = _BodyLimit(never, limit_for=lambda p: 10_000, page=lambda m: m)
    scope = {'type': 'http', 'method': 'POST', 'path': '/detect', 'headers': [(b'content-length', b'200000000')]}
    asyncio.run(mw(scope, receive, send))
    assert reads == [] and sent[0]['status'] == 413 and b'too large' in sent[1]['body']

def test_detect_crops_mode_shows_per_crop_scores_and_how_they_combine(app, clf):
    cli = TestClient(app)
    png = _img(5, 96, 64)  # 3 x 2 crops of 32 px at full resolution
    code, j = _json(cli, '/detect', files=[('images', ('c.png', png, 'image/png'))], data={'crops': '1'})
    assert code == 200 and j['mode'] == 'crops'
    [r] = j['results']
    crops = r['details']['crops']
    assert r['details']['n_crops'] == len(crops) == 6
    native = clf.with_preprocess(resize='native', crops='grid')
    assert r['prob_fake'] == pytest.approx(float(native.predict([load_image(png)]).prob_fake[0]), abs=1e-6)
    # the combined score is the mean margin of the per-crop scores, as the page says
    margins = [math.log(c['prob_fake'] / (1 - c['prob_fake'])) for c in crops]
    assert float(clf.margin_to_prob(np.mean(margins))) == pytest.approx(r['prob_fake'], abs=1e-5)
    assert 'mean of the crops\' log-odds' in j['scoring'] and native.spec.describe() in j['scoring']
    assert all(0 <= v <= 1 for c in crops for v in c['box'])
    html = cli.post('/detect', files=[('images', ('c.png', png, 'image/png'))], data={'crops': '1'}).text
    assert html.count('class="crop"') == 6 and 'log-odds' in html

def test_unsure_verdict_is_shown_as_unsure(clf, data, tmp_path):
    unsure = copy.copy(clf); unsure.unsure = [0.0, 1.0]          # an abstain band covering everything
    cli = TestClient(make_app(unsure, None, tmp_path/'v.sqlite'))
    code, j = _json(cli, '/detect', files=[('images', ('a.png', _img(1), 'image/png'))])
    assert j['results'][0]['label'] == 'unsure'
    assert '<span class="tag unsure">unsure</span>' in cli.post('/detect', files=[('images', ('a.png', _img(1), 'image/png'))]).text

# ---------------------------------------------------------------- Label
def test_label_shows_each_image_once_without_the_answer(app, data):
    cli = TestClient(app)
    first = cli.get('/label')
    vol = cli.cookies[VOLUNTEER_COOKIE]
    assert re.fullmatch(r'[0-9a-f]{32}', vol) and 'HttpOnly' in first.headers['set-cookie']
    assert not re.search(r'natural|sdv14|real/|fake/|\.jpg|\.png', first.text)  # no hint of the answer
    assert _token_of(cli.get('/label').text) == _token_of(first.text)        # a reload shows the same image
    seen = _label_all(cli)
    pool = app.state.realfake.pool
    assert len(seen) == len(set(seen)) == len(pool) == 10                   # the 'test' split, each image once
    assert set(seen) == set(pool.by_token)
    assert 'You have labelled all 10 images' in cli.get('/label').text
    assert app.state.realfake.store.n_votes(vol) == 10

def test_tokens_are_random_per_database_not_hashes(clf, data, tmp_path):
    import hashlib
    a = make_app(clf, data, tmp_path/'a.sqlite').state.realfake.pool
    b = make_app(clf, data, tmp_path/'b.sqlite').state.realfake.pool
    assert a.token.keys() == b.token.keys() and all(a.token[k] != b.token[k] for k in a.token)
    for k, t in a.token.items():
        assert t not in (hashlib.sha256(k.encode()).hexdigest()[:len(t)], hashlib.md5(k.encode()).hexdigest()[:len(t)])
    assert make_app(clf, data, tmp_path/'a.sqlite').state.realfake.pool.token == a.token    # kept across restarts

def test_label_images_all_look_alike(app):
    "Real JPEGs of 48x40 and fake PNGs of 64x64 are all served as 96x96 PNGs without metadata: no size or format hint."
    cli, pool = TestClient(app), app.state.realfake.pool
    sizes = set()
    for tok, key in pool.by_token.items():
        r = cli.get(f'/img/{tok}')
        assert r.status_code == 200 and r.headers['content-type'] == 'image/png'
        im = Image.open(io.BytesIO(r.content))
        assert im.format == 'PNG' and not im.info.get('exif') and not getattr(im, 'text', {})
        sizes.add(im.size)
        assert r.content == label_image(pool.rows[key]['path'], 96)
    assert sizes == {(96, 96)} and {r['format'] for r in pool.rows.values()} == {'JPEG', 'PNG'}
    assert cli.get('/img/0123456789abcdef01234567').status_code == 404

def test_vote_validation(app):
    cli = TestClient(app)
    tok = _token_of(cli.get('/label').text)
    store = app.state.realfake.store
    assert TestClient(app).post('/vote', data=dict(token=tok, answer='fake')).status_code == 400   # no cookie
    other = next(t for t in app.state.realfake.pool.by_token if t != tok)
    r = cli.post('/vote', data=dict(token=other, answer='fake'))
    assert r.status_code == 400 and 'not shown to you' in r.text
    r = cli.post('/vote', data=dict(token=tok, answer='maybe'))
    assert r.status_code == 200 and 'could not be recorded' in r.text and _token_of(r.text) == tok
    assert store.n_votes() == 0
    code, j = _json(cli, '/vote', data=dict(token=tok, answer='real', confidence='3'))
    assert code == 200 and j == {'stored': True, 'votes': 1}
    code, j = _json(cli, '/vote', data=dict(token=tok, answer='fake'))        # double submit: first vote counts
    assert code == 200 and j == {'stored': False, 'votes': 1}
    v = store.votes().iloc[0]
    assert (v.answer, v.confidence) == ('real', 3)
    assert v.label == app.state.realfake.pool.rows[v.image]['label']

def test_votes_from_another_site_are_refused_and_headers_set(app):
    cli = TestClient(app)
    tok = _token_of(cli.get('/label').text)
    for hdr in ({'origin': 'https://evil.example'}, {'origin': 'null'}, {'sec-fetch-site': 'cross-site'}):
        r = cli.post('/vote', data=dict(token=tok, answer='fake'), headers=hdr)
        assert r.status_code == 403 and ('another site' in r.text or 'not from' in r.text)
    assert app.state.realfake.store.n_votes() == 0
    r = cli.post('/vote', data=dict(token=tok, answer='fake'), headers={'origin': 'http://testserver'}, follow_redirects=False)
    assert r.status_code == 303 and app.state.realfake.store.n_votes() == 1
    h = cli.get('/label').headers
    assert h['x-frame-options'] == 'DENY' and h['x-content-type-options'] == 'nosniff' and h['referrer-policy'] == 'same-origin'
    assert "script-src 'self'" in h['content-security-policy']

def test_new_volunteer_ids_are_capped_per_address(clf, data, tmp_path):
    app = make_app(clf, data, tmp_path/'v.sqlite', new_per_hour=3)
    codes = [TestClient(app).get('/label').status_code for _ in range(5)]    # a client that drops its cookie
    assert codes == [200, 200, 200, 429, 429]
    cli = TestClient(make_app(clf, data, tmp_path/'w.sqlite', new_per_hour=3))
    assert all(cli.get('/label').status_code == 200 for _ in range(5))      # a client that keeps its cookie

def test_next_image_is_atomic_for_one_volunteer(app):
    "Eight simultaneous /label requests of one volunteer all get the same image: exactly one is pending."
    cli = TestClient(app)
    vol = 'ab' * 16
    cli.cookies.set(VOLUNTEER_COOKIE, vol)
    toks, errs = [], []
    def go():
        try: toks.append(_token_of(cli.get('/label').text))
        except Exception as e: errs.append(e)
    ths = [threading.Thread(target=go) for _ in range(8)]
    for t in ths: t.start()
    for t in ths: t.join()
    assert not errs and len(set(toks)) == 1 and len(app.state.realfake.store.shown(vol)) == 1

# ---------------------------------------------------------------- the pool: splits and unreadable images
def test_no_test_split_is_refused_unless_asked(clf, tmp_path):
    meta = _dataset(tmp_path/'d', n=6, n_test=0)         # prepare's default: train/valid only
    with pytest.raises(RealfakeError, match="no 'test' rows to label.*--split all"): make_app(clf, meta, tmp_path/'v.sqlite')
    app = make_app(clf, meta, tmp_path/'v.sqlite', split='all')
    assert len(app.state.realfake.pool) == 6
    html = TestClient(app).get('/label').text
    assert 'class="msg warn"' in html and '6 of the 6 images to label are training images' in html
    assert 'training images' in TestClient(app).get('/results').text

def test_unreadable_images_leave_the_pool_and_their_votes_do_not_count(clf, tmp_path):
    meta = _dataset(tmp_path/'d', n=6, n_test=6, broken=(1, 2))   # 1: header cut; 2: JPEG pixels cut
    (tmp_path/'d'/'fake'/'sdv14'/'001.png').write_bytes(b'\x89PNG\r\n\x1a\n')
    app = make_app(clf, meta, tmp_path/'v.sqlite')
    pool, store = app.state.realfake.pool, app.state.realfake.store
    assert 'fake/sdv14/001.png' in store.dropped() and len(pool) == 5     # dropped when the pool is built
    cli = TestClient(app)
    store.add_vote('old', 'real/natural/002.jpg', 'real', label='real', source='natural')  # a vote cast before
    seen = _label_all(cli)                                                # 002.jpg fails to decode when first served
    assert len(seen) == 4 and 'real/natural/002.jpg' in store.dropped()
    j = cli.get('/results', headers={'accept': 'application/json'}).json()
    assert j['overall'][0]['images'] == 4 and j['n_dropped'] == 1

# ---------------------------------------------------------------- Results: the truth stays off public pages
def test_results_compare_humans_and_model(app, clf, data):
    pool = app.state.realfake.pool
    truth = {t: pool.rows[k]['label'] for t, k in pool.by_token.items()}
    assert 'No votes yet' in TestClient(app).get('/results').text
    good, bad = TestClient(app), TestClient(app)
    for cli, right in ((good, True), (bad, False)):  # one volunteer always right, one always wrong
        while (tok := _token_of(cli.get('/label').text)) is not None:
            ans = truth[tok] if right else LABELS[1 - LABELS.index(truth[tok])]
            cli.post('/vote', data=dict(token=tok, answer=ans))
    j = good.get('/results', headers={'accept': 'application/json'}).json()
    [o] = j['overall']
    assert (o['images'], o['votes'], j['n_volunteers']) == (10, 20, 2)
    assert o['human_acc'] == 0.5 and o['human_majority_acc'] == 0.5   # every image is a tie
    preds = clf.predict([pool.rows[k]['path'] for k in pool.keys])
    model_acc = float((preds.label.values == np.array([pool.rows[k]['label'] for k in pool.keys])).mean())
    assert o['model_acc'] == pytest.approx(model_acc)
    assert {r['human_acc'] for r in j['by_source']} == {0.5} and len(j['by_source']) == 2
    assert {y['token']: y['truth'] for y in j['yours']} == truth and all(y['answer'] == y['truth'] for y in j['yours'])
    html = good.get('/results').text
    assert 'Humans vs model' in html and 'natural' in html and 'sdv14' in html and 'Your images' in html
    assert 'by 2 volunteers' in html

def test_public_results_hide_the_truth_of_images_not_voted(app, data, tmp_path):
    pool = app.state.realfake.pool
    voter, stranger = TestClient(app), TestClient(app)
    tok = _token_of(voter.get('/label').text)
    voter.post('/vote', data=dict(token=tok, answer='fake'))
    j = stranger.get('/results', headers={'accept': 'application/json'}).json()
    assert j['yours'] == [] and 'disagree' not in j
    html = stranger.get('/results').text
    keys = list(pool.rows)
    assert not any(k in html or Path(k).name in html for k in keys) and tok not in html
    assert str(Path(data).parent) not in html and str(tmp_path) not in html       # no server paths
    assert 'by 1 volunteer;' in html                                              # "1 volunteer", not "1 volunteers"
    mine = voter.get('/results', headers={'accept': 'application/json'}).json()['yours']
    assert [y['token'] for y in mine] == [tok] and mine[0]['truth'] == pool.rows[pool.by_token[tok]]['label']
    # the admin, after entering the token in the form (never in a URL), sees the disagreements by relative key
    admin = TestClient(app)
    assert admin.post('/admin', data={'token': 'wrong'}).status_code == 403
    r = admin.post('/admin', data={'token': 's3cret'}, follow_redirects=False)
    assert r.status_code == 303 and ADMIN_COOKIE in admin.cookies
    j = admin.get('/results', headers={'accept': 'application/json'}).json()
    assert [d['image'] for d in j['disagree']] == [pool.by_token[tok]] and str(Path(data).parent) not in json.dumps(j)
    html = admin.get('/results').text
    assert pool.by_token[tok] in html and str(Path(data).parent) not in html

def test_label_off_without_metadata(clf, tmp_path):
    cli = TestClient(make_app(clf, None, tmp_path/'v.sqlite'))
    assert 'Labelling is off' in cli.get('/label').text
    assert cli.post('/vote', data=dict(token='x', answer='fake')).status_code == 404
    assert not (tmp_path/'v.sqlite').exists()
    assert cli.get('/detect').status_code == 200

def test_static_files_are_served_and_in_the_package():
    assert (STATIC/'app.css').is_file() and (STATIC/'app.js').is_file()
    cli = TestClient(make_app(_Broken(), None))
    r = cli.get('/static/app.css')
    assert r.status_code == 200 and r.headers['content-type'].startswith('text/css') and '.tag.unsure' in r.text
    assert 'form.detect' in cli.get('/static/app.js').text
    assert cli.get('/static/../core.py').status_code == 404
    manifest = (Path(__file__).parents[1]/'MANIFEST.in').read_text()
    assert 'recursive-include realfake/static' in manifest               # shipped in sdists and wheels

# ---------------------------------------------------------------- concurrency
def test_concurrent_votes_threads_via_http(app):
    "8 volunteers, each with their own client and thread, label all 10 images at the same time: 80 votes."
    errors, n = [], 8
    def run():
        try: _label_all(TestClient(app), answer=lambda i: LABELS[i % 2])
        except Exception as e: errors.append(e)
    ths = [threading.Thread(target=run) for _ in range(n)]
    for t in ths: t.start()
    for t in ths: t.join()
    assert not errors, errors
    votes = app.state.realfake.store.votes()
    assert len(votes) == n * 10 and votes.volunteer.nunique() == n
    assert (votes.groupby('volunteer').image.nunique() == 10).all()

# ---------------------------------------------------------------- errors: messages, never tracebacks
class _Broken:
    threshold, unsure = 0.5, None
    from realfake.preprocess import Preprocess
    spec = Preprocess(size=32, resize=36)
    def predict(self, items, **kw): raise RuntimeError('boom: internal detail')

def test_model_failure_gives_a_message_not_a_traceback(data, tmp_path):
    app = make_app(_Broken(), data, tmp_path/'v.sqlite')
    cli = TestClient(app, raise_server_exceptions=False)
    code, j = _json(cli, '/detect', files=[('images', ('a.png', _img(0), 'image/png'))])
    assert code == 200 and 'the model failed on this image' in j['results'][0]['error']
    tok = _token_of(cli.get('/label').text)
    assert cli.post('/vote', data=dict(token=tok, answer='real')).status_code == 200
    r = cli.get('/results')                      # needs the model: fails inside, answers with a readable page
    assert r.status_code == 500 and 'Something went wrong' in r.text and 'boom' not in r.text and '<html' in r.text
    r = cli.get('/nowhere')
    assert r.status_code == 404 and '<html' in r.text

def test_bad_arguments_are_user_errors(tiny_model_dir, data, tmp_path, monkeypatch):
    "Every bad argument raises a user error (one line and exit status 2 from the command), before serving anything."
    import uvicorn
    monkeypatch.setattr(uvicorn.Server, 'run', lambda *a, **k: pytest.fail('must not serve'))
    notdb = tmp_path/'notes.txt'; notdb.write_text('hello\n' * 100)
    nodata = _dataset(tmp_path/'nt', n=4, n_test=0)
    cases = [dict(db=str(notdb)), dict(db=str(tmp_path)), dict(split='everything'), dict(metadata=str(nodata)),
             dict(metadata=str(tmp_path/'missing.jsonl')), dict(max_mb=0), dict(max_files=0), dict(port=70000),
             dict(decode_mpix=1), dict(model=str(tmp_path/'nomodel')), dict(max_request_mb=1)]
    for kw in cases:
        args = dict(model=str(tiny_model_dir), metadata=str(data), db=str(tmp_path/'v.sqlite'), port=0, device='cpu') | kw
        with pytest.raises(USER_ERRORS) as e: realfake_app(**args)
        assert '\n' not in str(e.value).strip(), (kw, e.value)
    assert notdb.read_text() == 'hello\n' * 100

@pytest.mark.slow
def test_cli_non_sqlite_db_is_one_line_exit_2(run_cli, tiny_model_dir, data, tmp_path):
    notdb = tmp_path/'metadata_copy.jsonl'; notdb.write_text(Path(data).read_text())
    r = run_cli('realfake_app', data, '--model', tiny_model_dir, '--db', notdb, '--port', '0', timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"realfake_app: error: {notdb}: not an SQLite database; give --db a new or existing votes file"]

@pytest.fixture
def served(monkeypatch):
    "Stub uvicorn's server: `realfake_app` builds everything, hands over the app (recorded here) and returns."
    import logging, uvicorn
    got, log = [], logging.getLogger('realfake')
    handlers, level = list(log.handlers), log.level
    monkeypatch.setattr(uvicorn.Server, 'run', lambda self, sockets=None: (got.append(self.config.app), [s.close() for s in sockets or []]))
    yield got
    log.handlers[:] = handlers; log.setLevel(level)

@pytest.mark.parametrize('spelling, label_on, crops, notice', [
    ('{data}', True, False, False),                      # METADATA positional
    ('--metadata {data}', True, False, True),            # the old spelling: still works, with a notice
    ('--metadata={data}', True, False, True),
    ('{data} --crops', True, True, False),               # --crops alone = grid
    ('--crops grid', False, True, False), ('--crops center', False, False, False), ('', False, False, False)])
def test_cli_spellings(served, tiny_model_dir, data, tmp_path, monkeypatch, capsys, spelling, label_on, crops, notice):
    "The command line as the vocabulary says: METADATA positional (old --metadata hidden, with a notice), --crops center|grid."
    import shlex, sys
    from realfake.cli import main
    argv = shlex.split(spelling.format(data=data)) + ['--model', str(tiny_model_dir), '--db', str(tmp_path/'v.sqlite'), '--port', '0', '--device', 'cpu']
    monkeypatch.setattr(sys, 'argv', ['realfake_app', *argv])
    main('realfake_app')
    st = served[-1].state.realfake
    assert (st.label_on, st.crops) == (label_on, crops)
    err = capsys.readouterr().err
    assert ('--metadata is now METADATA (positional)' in err) == notice, err

def test_cli_help_is_the_same_each_time():
    "Each parser gets fresh Params: building the parser twice (as --help and the real run do) gives the same help."
    from fastcore.script import anno_parser
    helps = [anno_parser(realfake_app.__wrapped__).format_help() for _ in range(2)]
    assert helps[0] == helps[1] and helps[0].count('(default: model)') == 1

def test_cli_bad_crops_is_a_usage_error(run_cli):
    r = run_cli('realfake_app', '--crops', 'tiles', timeout=120)
    assert r.returncode == 2 and "invalid choice: 'tiles'" in r.stderr, r.stderr[-500:]

def test_cli_help_documents_every_option(run_cli):
    r = run_cli('realfake_app', '--help', timeout=120)
    assert r.returncode == 0, r.stderr
    assert '[metadata]' in r.stdout and '--metadata' not in r.stdout    # positional; the old spelling is hidden
    for opt in ('--db', '--host', '--port', '--split', '--crops', '--max_mb', '--max_mpix',
                '--max_request_mpix', '--decode_mpix', '--display_size', '--admin_token', '--new_per_hour'):
        assert opt in r.stdout
    assert 'SQLite file the votes go to' in r.stdout
    assert 'Serve the realfake web app: Detect (score uploaded images), Label (volunteers vote) and Results' in ' '.join(r.stdout.split())

def test_detect_heatmap_overlay(app, clf):
    "Ticking the heatmap box draws the model's evidence over each image (realfake.explain); hovering shows the image alone."
    cli = TestClient(app)
    png = _img(6, 96, 64)
    html = cli.post('/detect', files=[('images', ('h.png', png, 'image/png'))], data={'heatmap': '1'}).text
    assert html.count('class="heatwrap"') == 1 and 'alt="heatmap of h.png"' in html
    assert 'class="heatwrap"' not in cli.post('/detect', files=[('images', ('h.png', png, 'image/png'))]).text
    code, j = _json(cli, '/detect', files=[('images', ('h.png', png, 'image/png'))], data={'heatmap': '1', 'crops': '1'})
    assert code == 200 and j['results'][0]['error'] is None and 'heat' not in j['results'][0]

def test_heatmaps_work_when_onnx_scores(tiny_model_dir, tmp_path):
    "After realfake_export the app scores on ONNX; ticking the heatmap box still draws a map (the torch network, loaded lazily)."
    pytest.importorskip('onnxruntime')
    import shutil
    from realfake.export import export_onnx
    from realfake.predict import load_classifier
    md = tmp_path/'model'; shutil.copytree(tiny_model_dir, md); export_onnx(md)
    onnx = load_classifier(md, 'cpu')                     # 'auto' picks ONNX, as after the README tour
    assert onnx.backend == 'onnx' and onnx.model is None
    cli = TestClient(make_app(onnx, None, tmp_path/'v.sqlite'))
    html = cli.post('/detect', files=[('images', ('h.png', _img(6, 96, 64), 'image/png'))], data={'heatmap': '1'}).text
    assert html.count('class="heatwrap"') == 1 and 'need the torch network' not in html
    assert onnx.model is None                             # the scoring classifier is untouched

@pytest.mark.slow
def test_app_backend_option_reaches_the_loader(tiny_model_dir, run_cli):
    "realfake_app --backend onnx on a model without model.onnx fails at once (exit 2, one line), as realfake_predict does."
    r = run_cli('realfake_app', '--model', tiny_model_dir, '--backend', 'onnx', '--port', '0', timeout=120)
    assert r.returncode == 2 and 'onnx' in r.stderr.lower() and len(r.stderr.strip().splitlines()) == 1, r.stderr[-500:]
    assert "'torch', 'onnx', 'openvino' or 'auto'" in run_cli('realfake_app', '--help', timeout=120).stdout

@pytest.mark.parametrize('https', ['direct', 'proxy', 'no'])
def test_cookies_secure_over_https_and_admin_cookie_is_a_session_id(app, https):
    base = 'https://testserver' if https == 'direct' else 'http://testserver'
    cli = TestClient(app, base_url=base)
    hdr = {'x-forwarded-proto': 'https'} if https == 'proxy' else {}
    r = cli.get('/label', headers=hdr)
    r2 = cli.post('/admin', data={'token': 's3cret'}, headers=hdr, follow_redirects=False)
    for resp, name in ((r, VOLUNTEER_COOKIE), (r2, ADMIN_COOKIE)):
        c = [v for v in resp.headers.get_list('set-cookie') if v.startswith(name + '=')][0]
        assert ('; secure' in c.lower()) == (https != 'no') and 'httponly' in c.lower()
    sid = r2.headers['set-cookie'].split(';')[0].split('=', 1)[1]
    assert 's3cret' not in r2.headers['set-cookie'] and len(sid) >= 32
    j = cli.get('/results', headers={**hdr, 'accept': 'application/json', 'cookie': f'{ADMIN_COOKIE}=s3cret'}).json()
    assert 'disagree' not in j                            # the token itself is no longer a cookie that works
    j = cli.get('/results', headers={**hdr, 'accept': 'application/json', 'cookie': f'{ADMIN_COOKIE}={sid}'}).json()
    assert 'disagree' in j
