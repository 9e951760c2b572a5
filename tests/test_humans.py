"Tests of realfake.humans: the vote store (concurrency, tokens, refusals), the label pool (splits, unreadable images, the next image) and the human-vs-model comparison. No web stack needed."
import io, json, multiprocessing as mp, os, sqlite3, sys, threading
from pathlib import Path

import numpy as np, pandas as pd, pytest
from PIL import Image

from realfake.core import LABELS, RealfakeError, escape_path
from realfake.humans import (LabelPool, VoteStore, compare_humans_model, image_key, label_rows, metadata_root,
                             split_warning)
from realfake.metadata import read_metadata, write_metadata

def _img(seed, w=48, h=40, fmt='PNG'):
    b = io.BytesIO(); Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(b, fmt)
    return b.getvalue()

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "12 small images (half real JPEG 'natural', half fake PNG 'sdv14'); 10 in the test split."
    root, recs = tmp_path_factory.mktemp('data'), []
    for i in range(12):
        lab = LABELS[i % 2]
        rel = f"{'fake/sdv14' if lab == 'fake' else 'real/natural'}/{i:03d}.{'png' if lab == 'fake' else 'jpg'}"
        (root/rel).parent.mkdir(parents=True, exist_ok=True)
        (root/rel).write_bytes(_img(i, fmt='PNG' if lab == 'fake' else 'JPEG'))
        recs.append(dict(path=rel, label=lab, split='test' if i < 10 else 'train', source='sdv14' if lab == 'fake' else 'natural'))
    return write_metadata(recs, root/'metadata.jsonl', relative_to=root)

def test_humans_does_not_import_the_app_or_the_model():
    import subprocess
    code = ('import sys, realfake.humans; bad = [m for m in ("realfake.app", "realfake.predict", "torch", "fasthtml") '
            'if m in sys.modules]; print(bad); sys.exit(bool(bad))')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr

# ---------------------------------------------------------------- the store
def test_store_refuses_what_is_not_a_votes_database(tmp_path, data):
    txt = tmp_path/'notes.txt'; txt.write_text('hello\n' * 50)
    with pytest.raises(RealfakeError, match=r'notes.txt: not an SQLite database; give --db'): VoteStore(txt)
    with pytest.raises(RealfakeError, match='not an SQLite database'): VoteStore(data)        # the metadata by mistake
    assert txt.read_text() == 'hello\n' * 50
    with pytest.raises(RealfakeError, match='is a folder'): VoteStore(tmp_path)
    with sqlite3.connect(tmp_path/'other.db') as con: con.execute('CREATE TABLE users (name)')
    with pytest.raises(RealfakeError, match='database of something else'): VoteStore(tmp_path/'other.db')
    with sqlite3.connect(tmp_path/'old.db') as con: con.execute('CREATE TABLE votes (id, who)')
    with pytest.raises(RealfakeError, match="lacks .*not a realfake votes file"): VoteStore(tmp_path/'old.db')

def test_tokens_random_stable_and_unique(tmp_path):
    a, b = VoteStore(tmp_path/'a.sqlite'), VoteStore(tmp_path/'b.sqlite')
    keys = [f'fake/{i}.png' for i in range(200)]
    ta = a.tokens(keys)
    assert len(set(ta.values())) == 200 and all(len(t) == 24 for t in ta.values())
    assert a.tokens(keys[:3]) == {k: ta[k] for k in keys[:3]}                 # stored: the same after a restart
    assert VoteStore(tmp_path/'a.sqlite').tokens(keys) == ta
    tb = b.tokens(keys)
    assert not set(ta.values()) & set(tb.values())                            # another database: other tokens

def _proc_vote(db, who, n, barrier):
    store = VoteStore(db)
    barrier.wait()
    for i in range(n):
        assert store.add_vote(who, f'img{i:03d}.png', LABELS[i % 2], confidence=1 + i % 3)
        store.add_vote(who, f'img{i:03d}.png', 'real')   # a duplicate: must be ignored, not counted

@pytest.mark.slow
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

# ---------------------------------------------------------------- the pool
def test_pool_is_the_test_split_and_never_falls_back_to_training_images(data, tmp_path):
    meta = read_metadata(data)
    store = VoteStore(tmp_path/'v.sqlite')
    pool = LabelPool(meta, store)
    assert len(pool) == 10 and {r['split'] for r in pool.rows.values()} == {'test'} and pool.warning is None
    no_test = meta[meta.split != 'test'].copy(); no_test.attrs = meta.attrs
    with pytest.raises(RealfakeError, match=r"metadata.jsonl: no 'test' rows to label.*--test_pct.*--split all"):
        LabelPool(no_test, store)
    everything = LabelPool(meta, store, split='all')
    assert len(everything) == 12 and everything.warning.startswith('2 of the 12 images to label are training images')
    with pytest.raises(RealfakeError, match="no 'valid' rows"): label_rows(meta, 'valid')
    assert split_warning(meta[meta.split == 'test']) is None

def test_pool_drops_unreadable_images_with_a_log_line(tmp_path, caplog):
    root = tmp_path/'d'; root.mkdir()
    (root/'ok.png').write_bytes(_img(0)); (root/'cut.png').write_bytes(_img(1)[:20]); (root/'text.png').write_text('hi')
    meta = pd.DataFrame(dict(path=[str(root/n) for n in ('ok.png', 'cut.png', 'text.png', 'gone.png')], label='fake',
                             split='test', source='s'))
    meta.attrs['metadata_path'] = str(root/'metadata.jsonl')
    store = VoteStore(tmp_path/'v.sqlite')
    with caplog.at_level('WARNING', logger='realfake.humans'): pool = LabelPool(meta, store)
    assert pool.keys == ['ok.png'] and set(store.dropped()) == {'cut.png', 'text.png', 'gone.png'}
    assert store.dropped()['gone.png'] == 'file not found'
    assert sum('dropped' in r.message for r in caplog.records) == 3 and str(root) not in caplog.text   # keys, not server paths
    assert set(pool.token) == {'ok.png'} and set(pool.by_token.values()) == {'ok.png'}
    pool.drop('ok.png', 'corrupt image data')                                # found on first serve
    assert len(pool) == 0 and pool.by_token == {} and 'ok.png' in store.dropped()
    assert len(LabelPool(meta, store, check=False)) == 0                     # dropped for good in this database

def test_next_image_one_at_a_time_even_from_many_threads(data, tmp_path):
    store = VoteStore(tmp_path/'v.sqlite')
    pool = LabelPool(read_metadata(data), store, seed=0)
    got = []
    ths = [threading.Thread(target=lambda: got.append(pool.next_for('v'))) for _ in range(8)]
    for t in ths: t.start()
    for t in ths: t.join()
    assert len(set(got)) == 1 and store.shown('v') == {got[0]}
    seen = []
    while (k := pool.next_for('v')) is not None: seen.append(k); store.add_vote('v', k, 'real')
    assert sorted(seen) == sorted(pool.keys)
    # votes spread: the next volunteer's first image is one with the fewest votes
    store.add_vote('w0', pool.keys[0], 'real')
    assert pool.next_for('w') != pool.keys[0]

def test_image_key_and_metadata_root(data):
    meta = read_metadata(data)
    root = metadata_root(meta)
    assert root == Path(data).absolute().parent
    assert image_key(meta.path[0], root) == 'real/natural/000.jpg' and image_key('/x/y.png', root) == '/x/y.png'

# ---------------------------------------------------------------- the comparison
def test_compare_humans_model_with_predictions(data, tmp_path):
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
    assert 'By source' in cmp.text() and '(2 volunteers,' in cmp.text() and json.dumps(cmp.to_dict())
    rel = preds.assign(path=[Path(p).relative_to(root).as_posix() for p in preds.path])   # relative paths match too
    assert compare_humans_model(store, data, rel).overall.loc['all', 'model_acc'] == 1.0
    with pytest.raises(FileNotFoundError): compare_humans_model(tmp_path/'missing.sqlite', data, preds)
    # votes on an image found unreadable no longer count
    store.drop(keys[0], 'truncated file')
    cmp = compare_humans_model(store, data, preds)
    assert (cmp.overall.loc['all', 'images'], cmp.n_dropped, cmp.n_unknown) == (11, 1, 0)
    one = VoteStore(tmp_path/'one.sqlite'); one.add_vote('a', keys[1], 'fake')
    assert '(1 volunteer,' in compare_humans_model(one, data, preds).text()

def test_unsure_verdicts_are_not_counted_as_errors(data, tmp_path):
    meta = read_metadata(data)
    store = VoteStore(tmp_path/'v.sqlite')
    for p in meta.path[:4]: store.add_vote('a', image_key(p, metadata_root(meta)), 'real')
    assert list(meta.label[:4]) == ['real', 'fake', 'real', 'fake']
    preds = pd.DataFrame(dict(path=meta.path[:4], prob_fake=0.5, pred=['real', 'unsure', 'fake', 'unsure']))
    o = compare_humans_model(store, meta, preds).overall.loc['all']
    assert (o['model_images'], o['model_unsure'], o['model_acc']) == (2, 2, 0.5)   # one right, one wrong, two abstained

@pytest.mark.slow
def test_compare_with_realfake_evaluate_predictions(data, tiny_model_dir, tmp_path):
    "What `realfake_evaluate --votes` does: reuse its predictions.csv (label = truth, pred = the model's verdict)."
    from realfake.evaluate import evaluate
    res = evaluate(str(tiny_model_dir), str(data), split='test', out=tmp_path/'report', num_workers=0, calibration=False)
    preds = pd.read_csv(tmp_path/'report'/'predictions.csv')
    meta = read_metadata(data)
    store, root = VoteStore(tmp_path/'v.sqlite'), Path(data).parent
    for p, split in zip(meta.path, meta.split):
        if split == 'test': store.add_vote('a', Path(p).relative_to(root).as_posix(), 'fake')
    cmp = compare_humans_model(store, data, preds, threshold=res['threshold'])
    o = cmp.overall.loc['all']
    assert (o['images'], o['model_images']) == (10, 10) and o['human_acc'] == 0.5
    assert o['model_acc'] == pytest.approx((preds.pred == preds.label).mean())

@pytest.mark.slow
def test_realfake_evaluate_votes_option(data, tiny_model_dir, tmp_path):
    "`realfake_evaluate --votes votes.sqlite` writes humans_vs_model.json next to the report."
    from realfake.evaluate import realfake_evaluate
    meta = read_metadata(data)
    store, root = VoteStore(tmp_path/'v.sqlite'), Path(data).parent
    tests = [(p, lab) for p, lab, s in zip(meta.path, meta.label, meta.split) if s == 'test']
    for p, lab in tests: store.add_vote('a', Path(p).relative_to(root).as_posix(), lab)   # a perfect volunteer
    res = realfake_evaluate(str(data), model=str(tiny_model_dir), split='test', out=str(tmp_path/'rep'), num_workers=0,
                            no_progress=True, votes=str(tmp_path/'v.sqlite'))
    j = json.loads((tmp_path/'rep'/'humans_vs_model.json').read_text())
    assert res['humans_vs_model'] == j
    assert 'overall' in j and len(tests) == 10
    assert j['overall'][0]['human_acc'] == 1.0 and j['n_dropped'] == 0

def test_undecodable_file_names_are_labelled_and_compared(tmp_path):
    "A Latin-1 name on a Linux disk (not valid UTF-8): in the pool, voted on under an escaped key, counted in the comparison."
    raw = os.fsdecode(b'caf\xe9.png')                                           # undecodable byte held as a surrogate
    (tmp_path/raw).write_bytes(_img(1)); (tmp_path/'f.png').write_bytes(_img(2))
    recs = [dict(path=raw, label='real', split='test', source='natural'), dict(path='f.png', label='fake', split='test', source='sd')]
    meta = read_metadata(write_metadata(recs, tmp_path/'metadata.jsonl', relative_to=tmp_path))
    store = VoteStore(tmp_path/'votes.sqlite')
    pool = LabelPool(meta, store, seed=0)
    assert sorted(pool.keys) == ['caf\\xe9.png', 'f.png']                       # printable, unambiguous (escape_path)
    for k in pool.keys: store.add_vote('v1', k, pool.rows[k]['label'])          # a perfect volunteer
    preds = pd.DataFrame(dict(path=[escape_path(tmp_path/raw), escape_path(tmp_path/'f.png')], prob_fake=[0.1, 0.9]))
    cmp = compare_humans_model(store, tmp_path/'metadata.jsonl', preds)
    assert len(cmp.per_image) == 2 and cmp.n_unknown == 0
    assert cmp.per_image.set_index('path').loc[escape_path(tmp_path/raw), 'model_correct'] == 1.0   # printable in reports
    json.dumps(cmp.to_dict(), ensure_ascii=False).encode('utf-8')          # the JSON realfake_evaluate --votes writes

def test_compare_takes_the_pool_itself(tmp_path):
    "The label pool's own keys (rows, root) drive the comparison: the same answer as from its metadata file, dropped images left out."
    recs = [dict(path=f'{lab}/{i}.png', label=lab, split='test', source=lab) for lab in LABELS for i in range(3)]
    for r in recs: (tmp_path/r['path']).parent.mkdir(exist_ok=True); (tmp_path/r['path']).write_bytes(_img(len(r['path']) + ord(r['path'][-5])))
    meta = read_metadata(write_metadata(recs, tmp_path/'metadata.jsonl', relative_to=tmp_path))
    store = VoteStore(tmp_path/'votes.sqlite')
    pool = LabelPool(meta, store, seed=0)
    assert pool.root == tmp_path.absolute() and sorted(pool.keys) == sorted(r['path'] for r in recs)
    for k in pool.keys: store.add_vote('v1', k, 'fake')
    preds = pd.DataFrame(dict(path=[pool.rows[k]['path'] for k in pool.keys], prob_fake=[0.9] * len(pool)))
    from_pool, from_file = compare_humans_model(store, pool, preds), compare_humans_model(store, tmp_path/'metadata.jsonl', preds)
    pd.testing.assert_frame_equal(from_pool.per_image, from_file.per_image)
    assert from_pool.overall.loc['all', 'model_acc'] == 0.5 and from_pool.overall.loc['all', 'images'] == 6
    pool.drop('real/0.png', 'unreadable')
    assert len(compare_humans_model(store, pool, preds).per_image) == 5
    assert len(compare_humans_model(store, pool, preds, split='valid').per_image) == 0

def test_realfake_evaluate_votes_with_an_undecodable_name(tiny_model_dir, tmp_path):
    "End to end: the predictions CSV holds the escaped name, the votes database the escaped key; the comparison joins them."
    from realfake.evaluate import realfake_evaluate
    raw = os.fsdecode(b'caf\xe9.png')
    recs = []
    for i in range(4):
        for lab in LABELS:
            name = raw if (i, lab) == (0, 'real') else f'{lab}{i}.png'
            (tmp_path/name).write_bytes(_img(10 * i + len(lab)))
            recs.append(dict(path=name, label=lab, split='test' if i < 2 else 'valid', source=lab))
    meta = write_metadata(recs, tmp_path/'metadata.jsonl', relative_to=tmp_path)
    store = VoteStore(tmp_path/'v.sqlite')
    pool = LabelPool(read_metadata(meta), store, seed=0)
    assert 'caf\\xe9.png' in pool.keys
    for k in pool.keys: store.add_vote('a', k, pool.rows[k]['label'])
    realfake_evaluate(str(meta), model=str(tiny_model_dir), split='test', out=str(tmp_path/'rep'), num_workers=0,
                      no_progress=True, votes=str(tmp_path/'v.sqlite'))
    j = json.loads((tmp_path/'rep'/'humans_vs_model.json').read_text())
    assert (j['overall'][0]['images'], j['overall'][0]['model_images'], j['n_unknown']) == (4, 4, 0)

@pytest.mark.parametrize('name', [os.fsdecode(b'caf\xe9.png'), 'two\\\\backslashes.png', 'r\\x41.png'])
def test_evaluate_votes_keys_by_the_paths_in_memory(name, tiny_model_dir, tmp_path):
    "`evaluate(votes=)` compares on the predictions it holds, by path, whatever the name: undecodable, two backslashes, an escape look-alike."
    from realfake.evaluate import evaluate
    recs = []
    for i in range(2):
        for lab in LABELS:
            n = name if (i, lab) == (0, 'real') else f'{lab}{i}.png'
            (tmp_path/n).write_bytes(_img(10 * i + len(lab)))
            recs.append(dict(path=n, label=lab, split='test', source=lab))
    meta = write_metadata(recs, tmp_path/'metadata.jsonl', relative_to=tmp_path)
    store = VoteStore(tmp_path/'v.sqlite')
    pool = LabelPool(read_metadata(meta), store, seed=0, split='all')
    for k in pool.keys: store.add_vote('a', k, pool.rows[k]['label'])
    res = evaluate(str(tiny_model_dir), str(meta), split='test', out=tmp_path/'rep', num_workers=0, calibration=False,
                   votes=tmp_path/'v.sqlite')
    assert res['humans_vs_model']['overall'][0]['model_images'] == 4 and res['humans_vs_model']['n_unknown'] == 0
    per = compare_humans_model(store, meta, pd.read_csv(tmp_path/'rep'/'predictions.csv'), paths_escaped=True).per_image
    assert per.prob_fake.notna().all() and escape_path(tmp_path/name) in set(per.path)          # the CSV: escaped, once
    m = json.loads((tmp_path/'rep'/'metrics.json').read_text())
    assert m['humans_vs_model'] == res['humans_vs_model'] and 'humans_vs_model.json' in m['files']   # metrics.json written once, complete
