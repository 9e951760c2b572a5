"Tests of realfake.app: the HTTP API with a test client, concurrent votes (threads and processes), the comparison."
import io, json, math, multiprocessing as mp, os, re, sqlite3, subprocess, sys, threading
from pathlib import Path

import numpy as np, pandas as pd, pytest
from PIL import Image

pytest.importorskip('fasthtml', reason='the web app needs python-fasthtml (pip install realfake[app])')
from starlette.testclient import TestClient

from realfake.core import LABELS
from realfake.app import VOLUNTEER_COOKIE, make_app, read_upload
from realfake.humans import VoteStore, LabelPool, compare_humans_model, _token
from realfake.images import ImageLoadError, load_image

SIZE = 32

# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def model_dir(tiny_model_dir): return tiny_model_dir

@pytest.fixture(scope='module')
def clf(model_dir):
    from realfake.predict import Classifier
    return Classifier.from_dir(model_dir, device='cpu', backend='torch')

def _img(seed, w=48, h=40, fmt='PNG'):
    rng = np.random.default_rng(seed)
    b = io.BytesIO(); Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(b, fmt)
    return b.getvalue()

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "12 small images (half real JPEG from source 'natural', half fake PNG from 'sdv14') and their metadata."
    from realfake.metadata import write_metadata
    root = tmp_path_factory.mktemp('data')
    recs = []
    for i in range(12):
        lab = LABELS[i % 2]
        fmt = 'PNG' if lab == 'fake' else 'JPEG'
        rel = f"{'fake/sdv14' if lab == 'fake' else 'real/natural'}/{i:03d}.{fmt.lower()[:3].replace('jpe', 'jpg')}"
        (root/rel).parent.mkdir(parents=True, exist_ok=True); (root/rel).write_bytes(_img(i, fmt=fmt))
        recs.append(dict(path=rel, label=lab, split='test' if i < 10 else 'train',
                         source='sdv14' if lab == 'fake' else 'natural'))
    return write_metadata(recs, root/'metadata.jsonl', relative_to=root)

@pytest.fixture
def app(clf, data, tmp_path):
    return make_app(clf, data, tmp_path/'votes.sqlite', split='test', max_bytes=50_000, max_pixels=100_000, max_files=4)

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
    # the HTML page shows the same probability and verdict
    html = cli.post('/detect', files=[('images', ('a.png', png, 'image/png'))]).text
    assert f"{100*r['prob_fake']:.1f}%" in html and ('generated' if r['label'] == 'fake' else 'real') in html

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
    r = cli.post('/detect', files=files)
    assert r.status_code == 200 and 'Traceback' not in r.text
    assert 'notes.txt: not an image' in r.text and 'huge.png' in r.text and '<form' in r.text
    r = cli.post('/detect', files=[('images', ('<i>evil.txt', b'hi', 'text/plain'))])   # names are escaped
    assert '<i>evil' not in r.text and '&lt;i&gt;evil.txt' in r.text

def test_detect_oversize_file_and_request(app):
    cli = TestClient(app)
    code, j = _json(cli, '/detect', files=[('images', ('big.png', b'\x89PNG' + bytes(60_000), 'image/png'))])
    assert code == 200 and 'more than the 50.0 kB limit' in j['results'][0]['error']
    # the whole request over max_files * max_bytes: refused by the middleware with a readable 413 page
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
    code, j = _json(cli, '/detect', files=[('images', (f'{i}.png', _img(i), 'image/png')) for i in range(5)])
    assert code == 400 and 'at most 4' in j['error']
    code, j = _json(cli, '/detect', data={'crops': '1'})
    assert code == 400 and 'choose at least one' in j['error']

def test_detect_crops_mode_shows_per_crop_scores(app, clf):
    cli = TestClient(app)
    png = _img(5, 96, 64)  # 3 x 2 crops of 32 px at full resolution
    code, j = _json(cli, '/detect', files=[('images', ('c.png', png, 'image/png'))], data={'crops': '1'})
    assert code == 200 and j['mode'] == 'crops'
    [r] = j['results']
    crops = r['details']['crops']
    assert r['details']['n_crops'] == len(crops) == 6
    native = clf.with_preprocess(resize='native', crops='grid')
    assert r['prob_fake'] == pytest.approx(float(native.predict([load_image(png)]).prob_fake[0]), abs=1e-6)
    # the combined score is the mean margin of the per-crop scores, so they are the same crops
    margins = [math.log(c['prob_fake'] / (1 - c['prob_fake'])) for c in crops]
    assert float(clf.margin_to_prob(np.mean(margins))) == pytest.approx(r['prob_fake'], abs=1e-5)
    assert all(0 <= v <= 1 for c in crops for v in c['box'])
    html = cli.post('/detect', files=[('images', ('c.png', png, 'image/png'))], data={'crops': '1'}).text
    assert html.count('class="crop"') == 6

def test_read_upload_names_the_file():
    with pytest.raises(ImageLoadError, match='x.png: the file is empty'): read_upload(b'', 'x.png')
    assert read_upload(_img(0), 'a.png').size == (48, 40)

# ---------------------------------------------------------------- Label
def test_label_shows_each_image_once_without_the_answer(app, data):
    cli = TestClient(app)
    first = cli.get('/label')
    vol = cli.cookies[VOLUNTEER_COOKIE]
    assert re.fullmatch(r'[0-9a-f]{32}', vol) and 'HttpOnly' in first.headers['set-cookie']
    assert not re.search(r'natural|sdv14|real/|fake/|\.jpg|\.png', first.text)  # no hint of the answer
    assert _token_of(cli.get('/label').text) == _token_of(first.text)        # a reload shows the same image
    seen = _label_all(cli)
    pool = app.state.realfake['pool']
    assert len(seen) == len(set(seen)) == len(pool) == 10                   # the 'test' split, each image once
    assert set(seen) == set(pool.by_token)
    assert 'You have labelled all 10 images' in cli.get('/label').text
    assert app.state.realfake['store'].n_votes(vol) == 10

def test_image_is_reencoded_png_with_same_pixels(app):
    cli = TestClient(app)
    tok = _token_of(cli.get('/label').text)
    r = cli.get(f'/img/{tok}')
    assert r.status_code == 200 and r.headers['content-type'] == 'image/png'
    served = Image.open(io.BytesIO(r.content))
    assert served.format == 'PNG' and not served.info.get('exif') and not getattr(served, 'text', {})
    pool = app.state.realfake['pool']
    src = load_image(pool.rows[pool.by_token[tok]]['path'])
    assert np.array_equal(np.asarray(served.convert('RGB')), np.asarray(src))  # the pixels as decoded, nothing else
    assert cli.get('/img/0123456789abcdef0123').status_code == 404

def test_vote_validation(app):
    cli = TestClient(app)
    tok = _token_of(cli.get('/label').text)
    store = app.state.realfake['store']
    # no cookie (e.g. a form on another site: SameSite=Lax): refused
    assert TestClient(app).post('/vote', data=dict(token=tok, answer='fake')).status_code == 400
    # an image that was not shown to this volunteer: refused
    other = next(t for t in app.state.realfake['pool'].by_token if t != tok)
    r = cli.post('/vote', data=dict(token=other, answer='fake'))
    assert r.status_code == 400 and 'not shown to you' in r.text
    # an invalid answer: back to the same image with a message
    r = cli.post('/vote', data=dict(token=tok, answer='maybe'))
    assert r.status_code == 200 and 'could not be recorded' in r.text and _token_of(r.text) == tok
    assert store.n_votes() == 0
    code, j = _json(cli, '/vote', data=dict(token=tok, answer='real', confidence='3'))
    assert code == 200 and j == {'stored': True, 'votes': 1}
    code, j = _json(cli, '/vote', data=dict(token=tok, answer='fake'))        # double submit: first vote counts
    assert code == 200 and j == {'stored': False, 'votes': 1}
    v = store.votes().iloc[0]
    assert (v.answer, v.confidence) == ('real', 3)
    assert v.label == app.state.realfake['pool'].rows[v.image]['label']

def test_results_compare_humans_and_model(app, clf, data):
    pool, store = app.state.realfake['pool'], app.state.realfake['store']
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
    html = good.get('/results').text
    assert 'Humans vs model' in html and 'natural' in html and 'sdv14' in html and 'disagree' in html

def test_label_off_without_metadata(clf, tmp_path):
    cli = TestClient(make_app(clf, None, tmp_path/'v.sqlite'))
    assert 'Labelling is off' in cli.get('/label').text
    assert cli.post('/vote', data=dict(token='x', answer='fake')).status_code == 404
    assert not (tmp_path/'v.sqlite').exists()
    assert cli.get('/detect').status_code == 200

# ---------------------------------------------------------------- compare_humans_model
def test_compare_humans_model_with_predictions(data, clf, tmp_path):
    from realfake.metadata import read_metadata
    meta = read_metadata(data)
    root = Path(data).parent
    store = VoteStore(tmp_path/'v.sqlite')
    keys = [Path(p).relative_to(root).as_posix() for p in meta.path]
    for k, lab in zip(keys, meta.label):
        store.add_vote('a', k, lab)                 # a: always right
        store.add_vote('b', k, 'real')              # b: always says real
    preds = pd.DataFrame(dict(path=meta.path, prob_fake=np.where(meta.label == 'fake', 0.9, 0.2)))
    cmp = compare_humans_model(tmp_path/'v.sqlite', data, preds, top=3)
    o = cmp.overall.loc['all']
    assert (o['images'], o['votes'], cmp.n_volunteers) == (12, 24, 2)
    assert o['human_acc'] == pytest.approx(18 / 24) and o['model_acc'] == 1.0
    assert cmp.by_source.loc['natural', 'human_acc'] == 1.0 and cmp.by_source.loc['sdv14', 'human_acc'] == 0.5
    assert len(cmp.disagree) == 3 and set(cmp.disagree.label) == {'fake'}   # fakes: half the votes say real
    assert 'By source' in cmp.text() and json.dumps(cmp.to_dict())
    # with the Classifier's predictions: the same numbers as its labels
    cmp2 = compare_humans_model(store, meta, clf.predict(list(meta.path)).rename(columns={'label': 'pred'}))
    exp = (clf.predict(list(meta.path)).label.values == meta.label.values).mean()
    assert cmp2.overall.loc['all', 'model_acc'] == pytest.approx(exp)
    with pytest.raises(FileNotFoundError): compare_humans_model(tmp_path/'missing.sqlite', data, preds)

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
    votes = app.state.realfake['store'].votes()
    assert len(votes) == n * 10 and votes.volunteer.nunique() == n
    assert (votes.groupby('volunteer').image.nunique() == 10).all()

def _proc_vote(db, who, n, barrier):
    store = VoteStore(db)
    barrier.wait()
    for i in range(n):
        assert store.add_vote(who, f'img{i:03d}.png', LABELS[i % 2], confidence=1 + i % 3)
        store.add_vote(who, f'img{i:03d}.png', 'real')   # a duplicate: must be ignored, not counted

def test_concurrent_votes_processes_lose_nothing(tmp_path):
    "4 processes and 2 threads write to the same SQLite file at once: every vote is there exactly once."
    db, N = tmp_path/'votes.sqlite', 24
    ctx = mp.get_context('spawn')
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_proc_vote, args=(str(db), f'p{i}', N, barrier)) for i in range(4)]
    for p in procs: p.start()
    tb = threading.Barrier(2)
    ths = [threading.Thread(target=_proc_vote, args=(str(db), f't{i}', N, tb)) for i in range(2)]
    for t in ths: t.start()
    for t in ths: t.join()
    for p in procs: p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    with sqlite3.connect(db) as con:
        assert con.execute('SELECT COUNT(*) FROM votes').fetchone()[0] == 6 * N
        assert con.execute('SELECT COUNT(DISTINCT volunteer || image) FROM votes').fetchone()[0] == 6 * N
        assert con.execute("SELECT COUNT(*) FROM votes WHERE answer = 'fake'").fetchone()[0] == 6 * (N // 2)
        assert con.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
        assert con.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'

# ---------------------------------------------------------------- CLI
def test_cli_help_documents_every_option(tmp_path):
    script = tmp_path/'app_cli.py'
    script.write_text('from realfake.app import realfake_app\nrealfake_app()\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, str(script), '--help'], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    for opt in ('--metadata', '--db', '--host', '--port', '--split', '--crops', '--max_mb', '--max_mpix'):
        assert opt in r.stdout
    assert 'SQLite file the votes go to' in r.stdout

class _Broken:
    threshold = 0.5
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

def test_compare_with_realfake_evaluate_predictions(data, model_dir, tmp_path):
    "What `realfake_evaluate --votes` does: reuse its predictions.csv (label = truth, pred = the model's verdict)."
    from realfake.evaluate import evaluate
    from realfake.metadata import read_metadata
    res = evaluate(str(model_dir), str(data), split='test', out=tmp_path/'report', num_workers=0, calibration=False)
    preds = pd.read_csv(tmp_path/'report'/'predictions.csv')
    meta = read_metadata(data)
    store, root = VoteStore(tmp_path/'v.sqlite'), Path(data).parent
    for p, lab, split in zip(meta.path, meta.label, meta.split):
        if split == 'test': store.add_vote('a', Path(p).relative_to(root).as_posix(), 'fake')
    cmp = compare_humans_model(store, data, preds, threshold=res['threshold'])
    o = cmp.overall.loc['all']
    assert (o['images'], o['model_images']) == (10, 10) and o['human_acc'] == 0.5
    assert o['model_acc'] == pytest.approx((preds.pred == preds.label).mean())

def test_realfake_evaluate_votes_option(data, model_dir, tmp_path):
    "`realfake_evaluate --votes votes.sqlite` writes humans_vs_model.json next to the report."
    from realfake.evaluate import realfake_evaluate
    from realfake.metadata import read_metadata
    meta = read_metadata(data)
    store, root = VoteStore(tmp_path/'v.sqlite'), Path(data).parent
    tests = [(p, lab) for p, lab, s in zip(meta.path, meta.label, meta.split) if s == 'test']
    for p, lab in tests: store.add_vote('a', Path(p).relative_to(root).as_posix(), lab)   # a perfect volunteer
    res = realfake_evaluate(str(data), model=str(model_dir), split='test', out=str(tmp_path/'rep'), num_workers=0,
                            no_progress=True, votes=str(tmp_path/'v.sqlite'))
    j = json.loads((tmp_path/'rep'/'humans_vs_model.json').read_text())
    assert res['humans_vs_model'] == j
    assert 'overall' in j and len(tests) == 10
    assert json.dumps(j).count('"human_acc": 1.0') >= 1
