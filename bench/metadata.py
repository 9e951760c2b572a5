"""Bench 5, metadata at scale: read + validate a 2M-record JSONL (`realfake.metadata.read_metadata`) against pandas'
`read_json(lines=True)` (which validates nothing), and draw a balanced 2M-record sample from 4 sources of 1M records
each (`realfake.sampling.sample_balanced`, with its valid split) against a naive pandas `groupby('label').sample` +
random split. Goal: each realfake step <= 15 s on this machine; peak memory reported.

Every measurement runs in a fresh child process, so its peak resident memory (VmHWM) is its own; "extra" is
that peak minus the child's memory right before the timed call (imports and the input DataFrame excluded).

    .venv/bin/python bench/metadata.py            # ~2.5 min on 2 cores (writes a ~0.35 GB temp file)
    .venv/bin/python bench/metadata.py --quick    # 100k records
"""
from __future__ import annotations
import os, sys, json, time, tempfile, subprocess, resource
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C

SOURCES = [('imagenet', 'real'), ('laion', 'real'), ('sd14', 'fake'), ('diffusiondb', 'fake')]

def write_jsonl(path, n:int, seed:int=0):
    "`n` synthetic records of the 4 sources (realistic fields: relative path, size, format, group / prompt)."
    import numpy as np, orjson
    r = np.random.default_rng(seed)
    src = r.integers(0, 4, n)
    split = r.choice(['train', 'valid', 'test'], n, p=[.8, .1, .1])
    w, h = r.integers(256, 3000, n), r.integers(256, 2000, n)
    cls = r.integers(0, 1000, n)
    words = np.array('a photo of the cat dog city street portrait landscape oil painting cinematic lighting highly '
                     'detailed 4k trending on artstation by greg rutkowski sunset forest castle robot'.split())
    with open(path, 'wb') as f:
        buf = []
        for i in range(n):
            s, lab = SOURCES[src[i]]
            rec = {'path': f'{s}/{i // 1000:04d}/{i:08d}.{"png" if lab == "fake" else "jpg"}', 'label': lab,
                   'split': split[i], 'source': s, 'width': int(w[i]), 'height': int(h[i]),
                   'format': 'PNG' if lab == 'fake' else 'JPEG'}
            if s == 'imagenet': rec['group'] = f'n{cls[i]:08d}'
            if lab == 'fake': rec['prompt'] = ' '.join(words[(i * 7 + np.arange(12) * 5) % len(words)])
            buf.append(orjson.dumps(rec))
            if len(buf) == 50_000: f.write(b'\n'.join(buf) + b'\n'); buf = []
        if buf: f.write(b'\n'.join(buf) + b'\n')

def big_frame(n_per:int, seed:int=0):
    "4 sources x `n_per` records (imagenet with 1000 classes as groups), as `prepare` hands them to `sample_balanced`."
    import numpy as np, pandas as pd
    r = np.random.default_rng(seed)
    parts = []
    for s, lab in SOURCES:
        parts.append(pd.DataFrame({'path': [f'/data/{s}/{i:07d}.jpg' for i in range(n_per)], 'label': lab, 'source': s,
                                   'group': [f'n{c:04d}' for c in r.integers(0, 1000, n_per)] if s == 'imagenet' else None}))
    return pd.concat(parts, ignore_index=True)

def naive_sample(df, n:int, valid_pct:float=0.1, seed:int=0):
    "The obvious pandas way: n/2 per label at random, then a random valid split (no group handling)."
    import numpy as np
    out = df.groupby('label', group_keys=False).sample(n=n // 2, random_state=seed).reset_index(drop=True)
    out['split'] = np.where(np.random.default_rng(seed).random(len(out)) < valid_pct, 'valid', 'train')
    return out

def _status_mb(key:str='VmRSS') -> float:
    "Resident memory of this process (VmRSS) or its peak (VmHWM), MB. (ru_maxrss would include the parent's before exec.)"
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'): return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def child(task:str, arg:str, n:int):
    "Run one measurement in this (fresh) process and print it as JSON."
    import pandas as pd
    if task == 'read_realfake':
        from realfake.metadata import read_metadata
        fn = lambda: read_metadata(arg)
    elif task == 'read_pandas':
        fn = lambda: pd.read_json(arg, lines=True)
    else:
        df = big_frame(n // 2)   # 4 sources x n/2 records -> sample n
        if task == 'sample_realfake':
            from realfake.sampling import sample_balanced
            fn = lambda: sample_balanced(df, n=n, valid_pct=0.1, seed=0)
        elif task == 'sample_naive':
            fn = lambda: naive_sample(df, n, 0.1, 0)
        elif task == 'write_realfake':
            from realfake.sampling import sample_balanced
            from realfake.metadata import write_metadata
            sb = sample_balanced(df, n=n, valid_pct=0.1, seed=0); del df
            fn = lambda: write_metadata(sb, arg, overwrite=True)
        else: raise ValueError(task)
    rss0 = _status_mb('VmRSS')
    c = time.process_time(); t = time.perf_counter(); out = fn(); dt = time.perf_counter() - t; dc = time.process_time() - c
    peak = _status_mb('VmHWM')
    info = {'t': dt, 'cpu': dc, 'rss0': rss0, 'peak': peak}
    if hasattr(out, '__len__'): info['rows'] = len(out)
    if task == 'sample_realfake':
        info['labels'] = out['label'].value_counts().to_dict(); info['splits'] = out['split'].value_counts().to_dict()
        # no group (imagenet class) may straddle train and valid
        g = out[out['group'].notna()].groupby('group')['split'].nunique()
        info['groups_straddling'] = int((g > 1).sum())
    print(json.dumps(info))

def run_child(task, arg, n) -> dict:
    r = subprocess.run([sys.executable, __file__, '--child', task, '--arg', str(arg), '--n', str(n)],
                       capture_output=True, text=True)
    if r.returncode != 0: raise RuntimeError(f"{task} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])

def main():
    p = C.parser(__doc__.split('\n')[0], reps=3)
    p.add_argument('--n', type=int, default=2_000_000, help='records (default 2M)')
    p.add_argument('--child', default=None, help='(internal) run one measurement')
    p.add_argument('--arg', default=None, help='(internal)')
    args = p.parse_args()
    if args.child: return child(args.child, args.arg, args.n)
    n = 100_000 if args.quick else args.n
    reps = 1 if args.quick else args.reps
    C.header(f'metadata: read+validate and balanced sampling of {n:,} records (each measurement in a fresh process)')
    have_p = C.module_available('prepare')
    rows = []
    with tempfile.TemporaryDirectory(prefix='rf_bench_meta_') as d:
        f = os.path.join(d, 'metadata.jsonl')
        t = time.perf_counter(); write_jsonl(f, n)
        print(f"wrote {n:,} records ({os.path.getsize(f) / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s\n")
        cases = [('read + validate JSONL', 'read_realfake', 'read_pandas', f, 'pandas read_json(lines=True), no validation')]
        if have_p:
            cases.append((f'balanced sample {n:,} of {2 * n:,}', 'sample_realfake', 'sample_naive', None,
                          "pandas groupby('label').sample + random split"))
        for name, mine, base, arg, base_name in cases:
            res = {mine: [], base: []}
            for _ in range(reps):       # alternate the two sides
                for k in (mine, base): res[k].append(run_child(k, arg, n))
            tm, tb = C.med([r['t'] for r in res[mine]]), C.med([r['t'] for r in res[base]])
            cm, cb = C.med([r['cpu'] for r in res[mine]]), C.med([r['cpu'] for r in res[base]])
            pm, pb = max(r['peak'] for r in res[mine]), max(r['peak'] for r in res[base])
            xm = max(r['peak'] - r['rss0'] for r in res[mine]); xb = max(r['peak'] - r['rss0'] for r in res[base])
            assert all(r.get('rows') == n for r in res[mine]), f"{mine}: expected {n} rows, got {[r.get('rows') for r in res[mine]]}"
            if mine == 'sample_realfake':
                r0 = res[mine][0]
                assert r0['labels'] == {'real': n // 2, 'fake': n // 2}, r0['labels']
                assert r0['groups_straddling'] == 0, r0
            rows.append([name, f"{tm:.2f} s {C.spread([r['t'] for r in res[mine]])}", f"{cm:.2f} s", f"{n / tm / 1e3:.0f}k",
                         f"{pm:.0f} MB (+{xm:.0f})", f"**{'met' if tm <= 15 else 'NOT met'}** (<= 15 s)",
                         base_name, f"{tb:.2f} s", f"{cb:.2f} s", f"{pb:.0f} MB (+{xb:.0f})", f"{tb / tm:.2f}x"])
            print(f"  {name}: realfake {tm:.2f} s (CPU {cm:.2f} s), baseline {tb:.2f} s (CPU {cb:.2f} s)", file=sys.stderr)
        if have_p:
            w = [run_child('write_realfake', os.path.join(d, 'out.jsonl'), n) for _ in range(max(1, reps - 2))]
            tw, cw = C.med([r['t'] for r in w]), C.med([r['cpu'] for r in w])
            rows.append([f'write_metadata of the {n:,}-record sample (info)', f"{tw:.2f} s", f"{cw:.2f} s", f"{n / tw / 1e3:.0f}k",
                         f"{max(r['peak'] for r in w):.0f} MB (+{max(r['peak'] - r['rss0'] for r in w):.0f})", '-', '-', '-', '-', '-', '-'])
    print(C.table(rows, ['step', 'realfake (median)', 'realfake CPU s', 'records/s', 'peak RSS (+ during call)', 'goal (wall)',
                         'baseline', 'baseline (median)', 'baseline CPU s', 'baseline peak RSS', 'speed-up']))
    print(f"\n{reps} repetitions, each in a fresh process; peak RSS = VmHWM of that process (max over repetitions);"
          "\n+ = peak minus the process's RSS just before the timed call (the call's own working memory).")
    if C.load_note(): print(C.load_note())

if __name__ == '__main__': main()
