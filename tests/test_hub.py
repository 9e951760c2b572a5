"""Tests of the Hub side: loading `org/name` (offline from a pre-filled cache, or from a Hub endpoint), the model card
written from a real `realfake_evaluate` report, and `realfake_push`.

Nothing here touches the network. Uploads and downloads go to `FakeHub`, a small HTTP server in this process that
speaks the part of the Hub's HTTP API that huggingface_hub uses to create a repo, commit files (preupload, the Git LFS
batch API and basic transfer, the NDJSON commit) and download a snapshot (repo info, file tree, resolve). The commands
run in subprocesses with `HF_ENDPOINT` pointing at it and `HF_HUB_CACHE` in the test's folder, exactly as a user's
shell would run them; what the server received is then checked byte for byte.
"""
from __future__ import annotations
import base64, hashlib, json, re, threading, logging
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlparse, unquote
import numpy as np, pandas as pd, pytest, torch, yaml
from PIL import Image

import sys
import forks
from helpers import cli_env, make_model_dir
from realfake.core import RealfakeError
from realfake.hub import card_from_folders, model_facts, write_model_card, push_model, read_report
from realfake.report import model_card
from realfake.metadata import write_metadata
from realfake.modeldir import resolve_model_dir, write_model_dir, load_tensors, read_config
from realfake.predict import Classifier

hf = pytest.importorskip('huggingface_hub')


# ------------------------------------------------------------------------------------------------ a fake Hub endpoint
class FakeHub:
    "A Hub endpoint in a thread: repos as {path: bytes} per commit, LFS objects by SHA-256, and a log of the requests."
    BINARY = ('.safetensors', '.onnx', '.bin')

    def __init__(self):
        self.repos, self.lfs, self.requests, self.validated = {}, {}, [], []
        hub = self
        class H(_Handler): pass
        H.hub = hub
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), H)
        self.url = f'http://127.0.0.1:{self.server.server_address[1]}'
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self): self.server.shutdown(); self.server.server_close()

    def commit(self, repo, files:dict, branch='main') -> str:
        r = self.repos[repo]
        tree = dict(r['branches'].get(branch) and r['commits'][r['branches'][branch]] or {})
        tree.update(files)
        sha = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in tree.items())).encode()
                           + str(len(r['commits'])).encode()).hexdigest()
        r['commits'][sha] = tree; r['branches'][branch] = sha
        return sha

class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    hub: FakeHub = None
    def log_message(self, *a): pass

    def _body(self) -> bytes:
        if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
            out = b''
            while True:
                n = int(self.rfile.readline().strip(), 16)
                if n == 0: self.rfile.readline(); return out
                out += self.rfile.read(n); self.rfile.readline()
        return self.rfile.read(int(self.headers.get('Content-Length') or 0))

    def _send(self, code, body=b'', headers=None, head=False):
        if not isinstance(body, bytes): body = json.dumps(body).encode(); headers = {'Content-Type': 'application/json', **(headers or {})}
        self.send_response(code)
        for k, v in (headers or {}).items(): self.send_header(k, v)
        self.send_header('Content-Length', str(len(body))); self.end_headers()
        if not head: self.wfile.write(body)

    def _not_found(self, head=False):
        self._send(404, {'error': 'Repository not found'}, {'X-Error-Code': 'RepoNotFound', 'X-Error-Message': 'Repository not found'}, head)

    def _log(self): self.hub.requests.append((self.command, urlparse(self.path).path))

    def do_POST(self):
        self._log(); path = unquote(urlparse(self.path).path); body = self._body(); hub = self.hub
        if path == '/api/repos/create':
            d = json.loads(body); repo = f"{d['organization']}/{d['name']}" if d.get('organization') else d['name']
            hub.repos.setdefault(repo, dict(commits={}, branches={}, private=d.get('visibility') == 'private' or d.get('private')))
            if not hub.repos[repo]['branches']: hub.commit(repo, {'.gitattributes': b'*.safetensors filter=lfs\n'})
            return self._send(200, {'url': f'{hub.url}/{repo}', 'name': repo})
        if path == '/api/validate-yaml':            # the Hub checks a README's metadata header before a commit
            d = json.loads(body); hub.validated.append(d['content'])
            try: hf.ModelCard(d['content'], ignore_metadata_errors=False).data.to_dict()
            except Exception as e: return self._send(400, {'error': f'invalid metadata: {e}'})
            return self._send(200, {'warnings': []})
        if m := re.fullmatch(r'/api/models/([^/]+/[^/]+)/preupload/(.+)', path):
            if m[1] not in hub.repos: return self._not_found()
            files = json.loads(body)['files']
            return self._send(200, {'files': [dict(path=f['path'], uploadMode='lfs' if f['path'].endswith(FakeHub.BINARY) else 'regular',
                                                   shouldIgnore=False) for f in files], 'commitOid': 'x'})
        if m := re.fullmatch(r'/([^/]+/[^/]+)\.git/info/lfs/objects/batch', path):
            objs = json.loads(body)['objects']
            return self._send(200, {'transfer': 'basic', 'objects': [
                dict(oid=o['oid'], size=o['size'], authenticated=True,
                     **({} if o['oid'] in hub.lfs else {'actions': {'upload': {'href': f"{hub.url}/lfs-put/{o['oid']}"}}})) for o in objs]})
        if m := re.fullmatch(r'/api/models/([^/]+/[^/]+)/commit/(.+)', path):
            if m[1] not in hub.repos: return self._not_found()
            files = {}
            for line in body.splitlines():
                item = json.loads(line)
                if item['key'] == 'file': files[item['value']['path']] = base64.b64decode(item['value']['content'])
                elif item['key'] == 'lfsFile': files[item['value']['path']] = hub.lfs[item['value']['oid']]
            sha = hub.commit(m[1], files, m[2])
            return self._send(200, {'commitUrl': f'{hub.url}/{m[1]}/commit/{sha}', 'commitOid': sha, 'success': True})
        if m := re.fullmatch(r'/api/models/([^/]+/[^/]+)/branch/(.+)', path):
            r = hub.repos[m[1]]; r['branches'].setdefault(m[2], r['branches']['main'])
            return self._send(200, {})
        return self._send(404, {'error': f'no route {path}'})

    def do_PUT(self):
        self._log(); path = urlparse(self.path).path; body = self._body()
        m = re.fullmatch(r'/lfs-put/([0-9a-f]{64})', path)
        if not m or hashlib.sha256(body).hexdigest() != m[1]: return self._send(400, {'error': 'bad upload'})
        self.hub.lfs[m[1]] = body
        return self._send(200, {})

    def _tree(self, repo, rev):
        r = self.hub.repos.get(repo)
        sha = r and (rev if rev in r['commits'] else r['branches'].get(rev))
        return (sha, r['commits'][sha]) if sha else (None, None)

    def do_HEAD(self): self.do_GET(head=True)

    def do_GET(self, head=False):
        self._log(); path = unquote(urlparse(self.path).path)
        if m := re.fullmatch(r'/api/models/([^/]+/[^/]+?)(?:/revision/(.+))?', path):
            sha, tree = self._tree(m[1], m[2] or 'main')
            if sha is None: return self._not_found(head)
            return self._send(200, {'id': m[1], 'modelId': m[1], 'sha': sha, 'private': False,
                                    'siblings': [{'rfilename': p} for p in tree]}, head=head)
        if m := re.fullmatch(r'/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?', path):
            sha, tree = self._tree(m[1], m[2])
            if sha is None: return self._not_found(head)
            return self._send(200, [dict(type='file', path=p, size=len(b), oid=hashlib.sha1(b'blob %d\0' % len(b) + b).hexdigest(),
                                         **({'lfs': dict(oid=hashlib.sha256(b).hexdigest(), size=len(b), pointerSize=130)}
                                            if p.endswith(FakeHub.BINARY) else {})) for p, b in tree.items()], head=head)
        if m := re.fullmatch(r'/([^/]+/[^/]+)/resolve/([^/]+)/(.+)', path):
            sha, tree = self._tree(m[1], m[2])
            if sha is None: return self._not_found(head)
            if m[3] not in tree: return self._send(404, {'error': 'Entry not found'}, {'X-Error-Code': 'EntryNotFound'}, head)
            b = tree[m[3]]
            etag = hashlib.sha256(b).hexdigest() if m[3].endswith(FakeHub.BINARY) else hashlib.sha1(b'blob %d\0' % len(b) + b).hexdigest()
            h = {'X-Repo-Commit': sha, 'ETag': f'"{etag}"', 'Content-Type': 'application/octet-stream'}
            if m[3].endswith(FakeHub.BINARY): h.update({'X-Linked-Etag': f'"{etag}"', 'X-Linked-Size': str(len(b))})
            return self._send(200, b, h, head)
        return self._send(404, {'error': f'no route {path}'}, head=head)


@pytest.fixture
def fake_hub():
    h = FakeHub()
    yield h
    h.close()

def hub_env(tmp_path, hub=None, offline=False, **extra) -> dict:
    "The environment of a command that talks to `hub` (or to nothing): a cache in tmp_path, no telemetry, no xet."
    env = cli_env(HF_HUB_CACHE=tmp_path/'hf_cache', HF_HOME=tmp_path/'hf_home', HF_HUB_DISABLE_TELEMETRY=1,
                  HF_HUB_DISABLE_XET=1, HF_HUB_DISABLE_PROGRESS_BARS=1, HF_TOKEN='hf_fake_token_for_tests',
                  HF_ENDPOINT=hub.url if hub else 'http://127.0.0.1:9', HF_HUB_ETAG_TIMEOUT=5, **extra)
    if offline: env['HF_HUB_OFFLINE'] = '1'
    else: env.pop('HF_HUB_OFFLINE', None)
    return env


# ------------------------------------------------------------------------------------------------ data for the card
def _img(seed, size=40):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))

@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp('hubmodel')/'model', resize=36, mean=(0.5,) * 3, std=(0.25,) * 3)

@pytest.fixture(scope='module')
def report(model_dir, tmp_path_factory):
    "A real realfake_evaluate report (with the shortcut audit) on a folder: natural + two generators."
    from realfake.evaluate import evaluate
    d = tmp_path_factory.mktemp('hubeval')
    for k, (folder, ext) in enumerate([('natural', '.jpg'), ('sdv5', '.png'), ('midjourney', '.png')]):
        (d/'data'/folder).mkdir(parents=True)
        for i in range(6): _img(10 * k + i).save(d/'data'/folder/f'{i}{ext}')
    log, level, threads = logging.getLogger('realfake'), logging.getLogger('realfake').level, torch.get_num_threads()
    log.setLevel(logging.ERROR); torch.set_num_threads(1)
    try: evaluate(model_dir, d/'data', out=d/'report', audit=True, bs=8, num_workers=0)
    finally: log.setLevel(level); torch.set_num_threads(threads)   # other tests in this process read realfake's warnings
    return d/'report'

@pytest.fixture(scope='module')
def train_metadata(tmp_path_factory):
    d = tmp_path_factory.mktemp('hubmeta')
    recs = ([dict(path=f'r{i}.jpg', label='real', split='train' if i < 8 else 'valid', source='imagenet', format='JPEG') for i in range(10)] +
            [dict(path=f'f{i}.png', label='fake', split='train' if i < 8 else 'valid', source='sdv5', format='PNG') for i in range(10)] +
            [dict(path=f'm{i}.png', label='fake', split='test', source='midjourney', format='PNG') for i in range(2)])   # test only
    return write_metadata(recs, d/'metadata.jsonl')

def _split_card(text):
    assert text.startswith('---\n'), text[:100]
    _, head, body = text.split('---\n', 2)
    return yaml.safe_load(head), body


# ------------------------------------------------------------------------------------------------ the card
@pytest.mark.slow
def test_card_from_real_report(model_dir, report, train_metadata):
    "The card of a real evaluation report: the Hub parses its header and model-index; every section holds the report's numbers."
    res = read_report(report)
    text = card_from_folders(model_dir, report, train_metadata, repo_id='org/tiny', license='apache-2.0')
    card = hf.ModelCard(text)                                  # the Hub library's own parser
    assert card.data.library_name == 'realfake' and card.data.license == 'apache-2.0'
    ev = {r.metric_type: r for r in card.data.eval_results}
    assert set(ev) == {'accuracy', 'roc_auc', 'average_precision'}
    assert ev['accuracy'].metric_value == pytest.approx(res['overall']['accuracy'], abs=1e-4)
    assert ev['roc_auc'].metric_value == pytest.approx(res['overall']['auc'], abs=1e-4)
    _, body = _split_card(text)
    evaluation = body.split('## Evaluation')[1].split('## Intended use')[0]
    for src in res['per_source']:                               # one row per source, with its accuracy
        row = next(l for l in evaluation.splitlines() if l.startswith(f"| {src['source']} |"))
        assert f"{src['accuracy']:.3f}" in row
    assert f"temperature {res['calibration']['temperature']:.3f}" in body
    for a in res['audit']: assert f"| {a['transform']} |" in body
    assert 'convnext_atto' in body and 'centre crop 32' in body and "Classifier.from_pretrained('org/tiny')" in body
    assert '| imagenet | 10 | 0 | 10 |' in body and '| PNG | 0 | 12 | 12 |' in body          # training data summary
    never = body.split('Generators never seen')[1].split('\n')[0]
    assert 'midjourney' in never and 'sdv5' not in never          # unseen: evaluated, not in the train split (only in test)
    assert 'most real images are JPEG and most fake images PNG' in body
    assert str(report.parent) not in text and str(model_dir.parent) not in text          # no local paths in a public card

def test_card_optional_parts(model_dir, report, tmp_path):
    "Keys added by newer evaluations (verdict, perturb, unsure) are shown when present; missing parts say they are missing."
    res = json.loads((report/'metrics.json').read_text())
    res.update(verdict=dict(verdict='shortcut', reason='the AUC drops by 0.31 under jpeg_q75',
                            evidence=[dict(perturbation='jpeg_q75', kind='both classes re-encoded alike', auc_clean=0.95, auc=0.64, auc_drop=0.31)]),
               perturb=[dict(perturbation='jpeg_q75', source='all', n=20, balanced_accuracy=0.8, auc=0.9, d_auc=-0.05),
                        dict(perturbation='jpeg_q75', source='sdv5', n=10, balanced_accuracy=0.1, auc=0.2, d_auc=-0.7)],
               unsure=dict(lo=0.4, hi=0.6, coverage=0.9))
    facts = model_facts(model_dir)                             # the card takes values: no metrics.json to write
    body = _split_card(model_card(res, facts))[1]
    assert 'Audit verdict: **shortcut**: the AUC drops by 0.31 under jpeg_q75.' in body
    assert '| jpeg_q75 | both classes re-encoded alike | 0.950 | 0.640 | 0.310 |' in body
    assert '| jpeg_q75 | 20 | 0.800 | 0.900 | -0.050 |' in body and '| 0.100 |' not in body    # per-source rows stay in the report
    assert 'coverage: 0.900' in body
    res.update(verdict={'note': 'an older shape'}, perturb={'jpeg': 0.8})     # shapes other than evaluate's: shown generically
    body = _split_card(model_card(res, facts))[1]
    assert 'Audit verdict:\n\n- note: an older shape' in body and 'Robustness to perturbations:\n\n- jpeg: 0.800' in body
    res.pop('audit'); res['calibration'] = None
    for k in ('verdict', 'perturb', 'unsure'): res.pop(k)
    head, body = _split_card(model_card(res, facts))
    assert 'Shortcut audit: not run' in body and 'Calibration: not fitted' in body and 'Training data\n\nNot documented' in body
    assert 'license' not in head
    head, body = _split_card(card_from_folders(model_dir))
    assert 'model-index' not in head and 'No evaluation report was given' in body
    with pytest.raises(RealfakeError, match='no evaluation report'): card_from_folders(model_dir, tmp_path/'nothing')

def test_evaluate_card_is_the_folder_card(model_dir, report):
    "evaluate makes its card from the result in memory, before metrics.json exists; push makes it from metrics.json: the same text."
    m = json.loads((report/'metrics.json').read_text())
    assert (report/'model_card.md').read_text() == card_from_folders(model_dir, report) == model_card(m, model_facts(model_dir))
    assert 'model_card.md' in m['files']

def test_write_model_card_for_review(model_dir, report, tmp_path):
    "realfake_evaluate's hook: the card lands beside the report, atomically, and is what --card then uploads."
    p = write_model_card(model_dir, report)
    assert p == report/'model_card.md' and p.read_text().startswith('---\n')
    assert not list(report.glob('.model_card.md.*'))                  # no temp file left
    plan = push_model(model_dir, 'org/tiny', card=p, dry_run=True)
    assert plan['card'] == p.read_text() and plan['files'] == ['config.json', 'model.safetensors', 'README.md']


# ------------------------------------------------------------------------------------------------ loading by name
def _fill_cache(cache:Path, repo:str, model_dir:Path, ref='main', commit='c' * 40) -> Path:
    "A Hugging Face cache entry laid out as huggingface_hub lays it out: refs/<ref> -> commit, snapshots/<commit>/files."
    root = cache/f"models--{repo.replace('/', '--')}"
    snap = root/'snapshots'/commit
    write_model_dir(snap, load_tensors(model_dir/'model.safetensors'), read_config(model_dir))
    (root/'refs').mkdir(parents=True, exist_ok=True); (root/'refs'/ref).write_text(commit)
    return snap

@pytest.mark.slow
def test_from_pretrained_prefilled_cache_offline(model_dir, tmp_path, monkeypatch):
    "HF_HUB_OFFLINE: a cached snapshot loads (by branch and by tag); the scores are the local folder's."
    monkeypatch.setattr(hf.constants, 'HF_HUB_OFFLINE', True)
    _fill_cache(tmp_path, 'org/tiny', model_dir)
    _fill_cache(tmp_path, 'org/tiny', model_dir, ref='v1', commit='d' * 40)
    clf = Classifier.from_pretrained('org/tiny', cache_dir=tmp_path, device='cpu')
    local = Classifier.from_dir(model_dir, device='cpu')
    imgs = [_img(i) for i in range(3)]
    np.testing.assert_allclose(clf.prob_fake(imgs), local.prob_fake(imgs), atol=1e-6)
    assert clf.name == 'org/tiny' and clf.path.name == 'c' * 40
    assert resolve_model_dir('org/tiny@v1', cache_dir=tmp_path).name == 'd' * 40
    assert Classifier.from_pretrained('org/tiny', revision='v1', cache_dir=tmp_path).name == 'org/tiny@v1'
    with pytest.raises(RealfakeError, match=r"org/tiny revision 'v2': not a local model directory, and not in the Hugging Face cache .*hf download org/tiny --revision v2"):
        resolve_model_dir('org/tiny@v2', cache_dir=tmp_path)
    assert Classifier.from_pretrained(model_dir).name == str(model_dir)      # a folder stays a folder

@pytest.mark.slow
def test_missing_repo_offline_fails_at_once(model_dir, tmp_path, fake_hub, run_cli):
    "Offline, a name that is not cached: exit 2, one line that says how to get it, and not one request to the endpoint."
    (tmp_path/'img.png').parent.mkdir(exist_ok=True); _img(0).save(tmp_path/'img.png')
    r = run_cli('realfake_predict', tmp_path/'img.png', '--model', 'org/absent', '--out', tmp_path/'p.csv', '--no_progress',
                env=hub_env(tmp_path, fake_hub, offline=True), timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr[-800:])
    err = r.stderr.strip().splitlines()[-1]
    assert 'Traceback' not in r.stderr and err.startswith('realfake_predict: error: org/absent')
    assert 'HF_HUB_OFFLINE=1' in err and 'hf download org/absent' in err
    assert fake_hub.requests == [] and not (tmp_path/'p.csv').exists()

@pytest.mark.slow
def test_push_then_load_by_name(model_dir, report, train_metadata, tmp_path, fake_hub, run_cli):
    "realfake_push to a Hub endpoint, then realfake_predict --model org/name online, then offline from the cache it filled."
    r = run_cli('realfake_push', '--model', model_dir, '--repo', 'org/tiny', '--report', report, '--metadata', train_metadata,
                '--license', 'cc-by-nc-4.0', env=hub_env(tmp_path, fake_hub), timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    assert 'uploaded config.json, model.safetensors, README.md to org/tiny@main' in r.stdout
    repo = fake_hub.repos['org/tiny']
    files = repo['commits'][repo['branches']['main']]
    for f in ('config.json', 'model.safetensors'): assert files[f] == (model_dir/f).read_bytes(), f
    assert hashlib.sha256(files['model.safetensors']).hexdigest() in fake_hub.lfs          # went through Git LFS
    head, body = _split_card(files['README.md'].decode())
    assert head['license'] == 'cc-by-nc-4.0' and head['library_name'] == 'realfake' and 'Per source' in body
    assert fake_hub.validated == [files['README.md'].decode()]                            # its header was validated
    assert not any(p.endswith(('.json', '.md')) and 'lfs-put' in p for _, p in fake_hub.requests)
    # load it back by name, through the endpoint
    _img(3).save(tmp_path/'a.png'); _img(4).save(tmp_path/'b.png')
    args = ['realfake_predict', tmp_path/'a.png', tmp_path/'b.png', '--model', 'org/tiny', '--no_progress', '--device', 'cpu']
    r = run_cli(*args, '--out', tmp_path/'hub.csv', env=hub_env(tmp_path, fake_hub))
    assert r.returncode == 0, r.stderr[-1500:]
    local = Classifier.from_dir(model_dir, device='cpu').predict([tmp_path/'a.png', tmp_path/'b.png'])
    got = pd.read_csv(tmp_path/'hub.csv').set_index('path').loc[local.path]
    np.testing.assert_allclose(got.prob_fake, local.prob_fake, atol=1e-5)
    assert json.loads((tmp_path/'hub.csv.json').read_text())['scored_with']['model'] == 'org/tiny'
    # offline, from the cache the download filled: no request at all
    n = len(fake_hub.requests)
    r = run_cli(*args, '--out', tmp_path/'offline.csv', env=hub_env(tmp_path, fake_hub, offline=True))
    assert r.returncode == 0, r.stderr[-1500:]
    assert len(fake_hub.requests) == n
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path/'offline.csv'), pd.read_csv(tmp_path/'hub.csv'))
    # a repo that does not exist, online: a clear message, no retry loop
    r = run_cli(*args, '--out', tmp_path/'x.csv', '--model', 'org/nothing', env=hub_env(tmp_path, fake_hub))
    assert r.returncode == 2 and 'no such model repo on the Hub' in r.stderr, r.stderr[-800:]
    assert sum('org/nothing' in p for _, p in fake_hub.requests) <= 2

@pytest.mark.slow
def test_push_to_branch_with_reviewed_card(model_dir, report, tmp_path, fake_hub):
    "--card uploads the reviewed file as it is; --revision commits to a branch, main is left alone."
    card = write_model_card(model_dir, report, dest=tmp_path/'card.md')
    card.write_text(card.read_text() + '\nReviewed by a human.\n')
    env = hub_env(tmp_path, fake_hub)
    code = ('import sys; from realfake.hub import push_model; '
            f'print(push_model({str(model_dir)!r}, "org/tiny2", card={str(card)!r}, revision="v2")["commit"])')
    r = forks.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    repo = fake_hub.repos['org/tiny2']
    assert repo['branches']['v2'] == r.stdout.strip() and 'README.md' not in repo['commits'][repo['branches']['main']]
    assert repo['commits'][repo['branches']['v2']]['README.md'].decode().endswith('Reviewed by a human.\n')

@pytest.mark.slow
def test_push_refuses_broken_model_before_uploading(tmp_path, fake_hub, model_dir, run_cli):
    (tmp_path/'m').mkdir(); (tmp_path/'m'/'config.json').write_bytes((model_dir/'config.json').read_bytes())
    (tmp_path/'m'/'model.safetensors').write_bytes((model_dir/'model.safetensors').read_bytes()[:1000])
    r = run_cli('realfake_push', '--model', tmp_path/'m', '--repo', 'org/broken', env=hub_env(tmp_path, fake_hub))
    assert r.returncode == 2 and 'not a valid safetensors file' in r.stderr, r.stderr[-800:]
    assert fake_hub.requests == []
    r = run_cli('realfake_push', '--model', model_dir, '--repo', 'org/dry', '--dry_run', env=hub_env(tmp_path))
    assert r.returncode == 0 and 'dry run: would upload config.json, model.safetensors, README.md' in r.stdout, r.stderr[-800:]
    assert r.stdout.startswith('---\n') and fake_hub.requests == []
