"""The web app's memory under worst-case uploads: `realfake_app` in a subprocess, N concurrent requests of many highly
compressed large PNGs, the server's peak RSS (VmHWM) read from /proc.

Run as a script to print the figures for any checkout (e.g. before and after a change):

    PYTHONPATH=/path/to/checkout python tests/test_app_memory.py --requests 3 --files 16 --mpix 40
"""
from __future__ import annotations
import argparse, functools, io, json, socket, subprocess, sys, tempfile, threading, time, urllib.request, uuid
from pathlib import Path
import pytest


sys.path.insert(0, str(Path(__file__).parent))
from helpers import cli_cmd, cli_env, make_model_dir
import forks

MB = 1 << 20

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _status(pid) -> dict:
    "VmRSS and VmHWM (peak RSS) of process `pid`, in bytes."
    out = {}
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        k, _, v = line.partition(':')
        if k in ('VmRSS', 'VmHWM'): out[k] = int(v.split()[0]) * 1024
    return out

@functools.lru_cache(maxsize=32)
def bomb_png(w:int, h:int, seed:int=0, fmt:str='PNG', mode:str='RGB') -> bytes:
    "A `w` x `h` image of one colour: a PNG is about 1/1000 of its decoded size (a 40-megapixel one is ~120 kB). Made once."
    from PIL import Image
    b = io.BytesIO(); Image.new(mode, (w, h), (seed * 37 % 256, 90, 160, 200)[:len(mode)]).save(b, fmt, **({'compress_level': 9} if fmt == 'PNG' else {'lossless': True}))
    return b.getvalue()

def small_png(seed:int=0) -> bytes:
    import numpy as np
    from PIL import Image
    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(b, 'PNG')
    return b.getvalue()

def multipart(files, fields=()) -> tuple[bytes, str]:
    "A multipart/form-data body with `files` [(name, bytes)] under the field 'images'."
    bnd = uuid.uuid4().hex
    parts = []
    for k, v in fields:
        parts.append(f'--{bnd}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for name, data in files:
        parts.append(f'--{bnd}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
                     f'Content-Type: image/png\r\n\r\n'.encode() + data + b'\r\n')
    parts.append(f'--{bnd}--\r\n'.encode())
    return b''.join(parts), f'multipart/form-data; boundary={bnd}'

def post(url, body, ctype, timeout=300):
    req = urllib.request.Request(url, data=body, headers={'Content-Type': ctype, 'Accept': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e: return e.code, e.read().decode('utf-8', 'replace')

class Server:
    "`realfake_app` in a process of its own (forked by `forks`: RSS growth is measured from its own warm start) on a free port."
    def __init__(self, model, args=(), env=None):
        self.port = _free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.log = tempfile.TemporaryFile()
        self.proc = forks.popen(cli_cmd('realfake_app') + ['--model', str(model), '--port', str(self.port), *map(str, args)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env or cli_env())
        for _ in range(600):
            if self.proc.poll() is not None: break
            try:
                with urllib.request.urlopen(self.url + '/detect', timeout=2) as r:
                    if r.status == 200: return
            except OSError: time.sleep(0.1)
        raise RuntimeError(f'the app did not start:\n{self.output()}')

    def output(self) -> str:
        self.log.seek(0); return self.log.read().decode('utf-8', 'replace')

    def close(self):
        self.proc.terminate()
        try: self.proc.wait(20)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()

def measure(model, n_requests=3, n_files=16, mpix=40, args=(), env=None, fmt='PNG', mode='RGB', crops=False, heatmap=False) -> dict:
    "Peak growth of the server's RSS while `n_requests` requests of `n_files` one-colour PNGs of `mpix` MP run at once."
    w = int((mpix * 1e6 * 1.6) ** 0.5); h = int(mpix * 1e6 // w)
    srv = Server(model, args, env)
    try:
        body, ctype = multipart([('warm.png', small_png())])
        code, _ = post(srv.url + '/detect', body, ctype)
        assert code == 200, f'warm-up request failed: {code}'
        base = _status(srv.proc.pid)
        bombs = [(f'b{i}.{fmt.lower()}', bomb_png(w, h, i, fmt, mode)) for i in range(n_files)]
        body, ctype = multipart(bombs, [('crops', '1')] * crops + [('heatmap', '1')] * heatmap)
        answers, t0 = [None] * n_requests, time.monotonic()
        def one(i): answers[i] = post(srv.url + '/detect', body, ctype)
        ths = [threading.Thread(target=one, args=(i,)) for i in range(n_requests)]
        for t in ths: t.start()
        for t in ths: t.join()
        seconds = time.monotonic() - t0
        time.sleep(0.5)
        after = _status(srv.proc.pid)
        code, j = post(srv.url + '/detect', *multipart([('after.png', small_png(1))]))
        return dict(width=w, height=h, request_mb=len(body) / 1e6, n_requests=n_requests, n_files=n_files,
                    base_rss_mb=base['VmRSS'] / MB, peak_growth_mb=(after['VmHWM'] - base['VmRSS']) / MB,
                    held_after_mb=(after['VmRSS'] - base['VmRSS']) / MB, seconds=round(seconds, 1),
                    codes=[a[0] for a in answers], answers=answers, after_code=code, after=j,
                    server_log=srv.output()[-3000:])
    finally: srv.close()

@pytest.mark.slow
@pytest.mark.parametrize('boxes', [(), ('crops', 'heatmap')], ids=['scores', 'crops+heatmaps'])
def test_memory_stays_bounded_under_concurrent_worst_case_uploads(tiny_model_dir, boxes):
    """3 requests at once, each of 8 one-colour PNGs of 10 megapixels (~30 kB each), as they come and with the boxes
    'full-resolution crops' and 'show heatmap' ticked (maps at full resolution took a 40 MP upload from 0.4 to 5.7 GB):
    peak RSS <= model + Limits.memory_bound()."""
    from realfake.budget import Limits
    mpix = 10
    limits = Limits(max_pixels=mpix * 1_000_000)
    r = measure(tiny_model_dir, n_requests=3, n_files=8, mpix=mpix, args=['--max_mpix', mpix], crops='crops' in boxes, heatmap='heatmap' in boxes)
    assert r['codes'] == [200] * 3, r['server_log']
    assert all(x['error'] is None and 0 <= x['prob_fake'] <= 1 for a in r['answers'] for x in a[1]['results'])
    assert all('heatmap' not in x['details'] for a in r['answers'] for x in a[1]['results'])     # no "heatmap failed" either
    bound = limits.memory_bound() / MB
    assert r['peak_growth_mb'] <= bound, f"peak growth {r['peak_growth_mb']:.0f} MB > bound {bound:.0f} MB"
    # the server still answers, and scores, a normal request afterwards
    assert r['after_code'] == 200 and r['after']['results'][0]['error'] is None

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--requests', type=int, default=3); ap.add_argument('--files', type=int, default=16)
    ap.add_argument('--mpix', type=float, default=40); ap.add_argument('--app_args', default='')
    ap.add_argument('--fmt', default='PNG'); ap.add_argument('--mode', default='RGB'); ap.add_argument('--crops', action='store_true'); ap.add_argument('--heatmap', action='store_true')
    o = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        model = make_model_dir(Path(d)/'model', resize=36, mean=(0.5,) * 3, std=(0.25,) * 3)
        r = measure(model, o.requests, o.files, o.mpix, o.app_args.split(), fmt=o.fmt, mode=o.mode, crops=o.crops, heatmap=o.heatmap)
    scored = [sum(x.get('error') is None for x in a[1]['results']) if isinstance(a[1], dict) else a[1][:200] for a in r['answers']]
    print(json.dumps({k: v for k, v in r.items() if k not in ('answers', 'after', 'server_log')}, indent=1))
    print('scored per request:', scored)
    if isinstance(r['answers'][0][1], dict):
        print('errors:', sorted({x['error'] for a in r['answers'] for x in a[1]['results'] if x.get('error')})[:5])
