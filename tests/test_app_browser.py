"""End-to-end test of the web app in a real headless browser: Debian's chromium driven by Playwright.

Uploads an image on the Detect page, casts a vote on the Label page, checks the vote is in the database and saves
screenshots to $REALFAKE_ARTIFACTS (or the test's tmp_path). Skips, saying why, where no browser can be launched.
Never downloads a browser (no `playwright install`): it uses the system chromium ($REALFAKE_CHROMIUM or
/usr/bin/chromium; `apt-get install -y chromium`)."""
import os, shutil, socket, threading, time
from pathlib import Path

import numpy as np, pytest
from PIL import Image

pytest.importorskip('fasthtml', reason='the web app needs python-fasthtml (pip install realfake[app])')
uvicorn = pytest.importorskip('uvicorn', reason='the browser test serves the app with uvicorn (pip install uvicorn)')

from realfake.core import LABELS
from realfake.app import make_app

CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']

def _chromium_path():
    for p in (os.environ.get('REALFAKE_CHROMIUM'), '/usr/bin/chromium', shutil.which('chromium'),
              shutil.which('chromium-browser')):
        if p and os.path.isfile(p) and os.access(p, os.X_OK): return p
    return None

@pytest.fixture(scope='module')
def browser():
    sp = pytest.importorskip('playwright.sync_api', reason='Playwright is not installed (pip install playwright)')
    exe = _chromium_path()
    if exe is None: pytest.skip('no chromium found (apt-get install -y chromium, or set REALFAKE_CHROMIUM)')
    pw = sp.sync_playwright().start()
    try: b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True, timeout=30_000)
    except Exception as e:
        pw.stop()
        pytest.skip(f'chromium at {exe} could not be launched by Playwright: {str(e).splitlines()[0][:300]}')
    yield b
    b.close(); pw.stop()

@pytest.fixture
def artifacts(tmp_path):
    d = Path(os.environ.get('REALFAKE_ARTIFACTS') or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture
def server(tmp_path):
    "The app (stand-in-free: a tiny real Classifier) served by uvicorn in a thread on 127.0.0.1:<free port>."
    from helpers import make_model_dir
    from realfake.metadata import write_metadata
    from realfake.predict import Classifier
    mdir = make_model_dir(tmp_path/'model', size=32, resize=40)
    rng = np.random.default_rng(0)
    recs = []
    for i in range(4):
        lab = LABELS[i % 2]
        p = tmp_path/'data'/f'{i}.png'; p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(p)
        recs.append(dict(path=f'{i}.png', label=lab, split='test', source='sd' if lab == 'fake' else 'natural'))
    meta = write_metadata(recs, tmp_path/'data'/'metadata.jsonl', relative_to=tmp_path/'data')
    app = make_app(Classifier.from_dir(mdir, device='cpu'), meta, tmp_path/'votes.sqlite')
    srv = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=_free_port(), log_level='warning', lifespan='off'))
    th = threading.Thread(target=srv.run, daemon=True); th.start()
    for _ in range(200):
        if srv.started: break
        time.sleep(0.05)
    assert srv.started, 'uvicorn did not start'
    yield f'http://127.0.0.1:{srv.config.port}', app
    srv.should_exit = True; th.join(10)

def test_upload_and_vote_in_browser(browser, server, artifacts, tmp_path):
    url, app = server
    img = tmp_path/'upload.png'
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(img)
    bad = tmp_path/'notes.txt'; bad.write_text('not an image')
    page = browser.new_page(viewport={'width': 1100, 'height': 900})
    try:
        # Detect: upload a good image and a bad file, with full-resolution crops on
        page.goto(f'{url}/detect')
        page.set_input_files('#images', [str(img), str(bad)])
        page.check('#crops')
        page.click('#detect-btn')
        page.wait_for_selector('#results')
        text = page.inner_text('#results')
        assert 'upload.png' in text and '%' in text
        assert 'notes.txt: not an image' in text                      # a message in the page, not an error page
        assert page.locator('.crop').count() == 9                     # at most 9 crops of 32 px of a 128 x 96 image
        page.screenshot(path=str(artifacts/'app_detect.png'), full_page=True)
        # Label: an image is shown; answer "Generated", sure; the next image comes with the counter moved on
        page.goto(f'{url}/label')
        page.wait_for_selector('#shown')
        assert page.evaluate("document.querySelector('#shown').naturalWidth") == 512   # loaded, at the one display size
        assert 'Image 1 of 4' in page.inner_text('#progress')
        page.screenshot(path=str(artifacts/'app_label.png'), full_page=True)
        page.check('input[name=confidence][value="3"]')
        page.click('#vote-fake')
        page.wait_for_selector('text=Image 2 of 4')
        store = app.state.realfake.store
        votes = store.votes()
        assert len(votes) == 1 and votes.answer[0] == 'fake' and votes.confidence[0] == 3
        cookie = {c['name']: c['value'] for c in page.context.cookies()}['realfake_volunteer']
        assert votes.volunteer[0] == cookie
        page.goto(f'{url}/results')
        assert 'Humans vs model' in page.inner_text('h1')
        page.screenshot(path=str(artifacts/'app_results.png'), full_page=True)
    finally: page.close()
    assert (artifacts/'app_detect.png').stat().st_size > 1000 and (artifacts/'app_label.png').stat().st_size > 1000
