"""Shared helpers of the benchmarks: timing (warm-up, repetitions, medians), tables, machine info, synthetic images.

Not a test module and not part of the package: the scripts in `bench/` import it as a sibling file.
"""
from __future__ import annotations
import os, sys, time, platform, statistics, datetime, argparse
from pathlib import Path

import warnings
warnings.filterwarnings('ignore', category=FutureWarning)   # torch.jit deprecation noise from fastai's imports
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))   # run from a checkout without `pip install -e`

def parser(doc:str, reps:int=5) -> argparse.ArgumentParser:
    "An argument parser with the options every bench shares."
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='smoke run: tiny inputs, 1 repetition (numbers meaningless)')
    p.add_argument('--reps', type=int, default=reps, help=f'timed repetitions per case (default {reps}); the median is reported')
    return p

def cpu_model() -> str:
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()

def machine() -> str:
    "One line describing where the numbers were taken."
    import torch
    if not _START_LOAD: _START_LOAD.append(os.getloadavg()[0])
    load = ' '.join(f'{x:.1f}' for x in os.getloadavg())
    return (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | {os.cpu_count()} cores (nproc) | "
            f"{cpu_model()} | torch {torch.__version__} ({torch.get_num_threads()} threads) | Python {platform.python_version()} | "
            f"load average at start {load}")

_START_LOAD: list = []

def load_note():
    """A warning line when other jobs were competing for the CPU: judged on the load average when the run started
    (`machine()` notes it), since at the end it counts the bench's own processes (workers, forks) too."""
    l1 = _START_LOAD[0] if _START_LOAD else os.getloadavg()[0]
    if l1 > (os.cpu_count() or 1) * 0.75:
        return (f"WARNING: load average {l1:.1f} on {os.cpu_count()} cores at the start: other jobs shared the CPU, "
                "wall-clock rates are pessimistic and noisy; ratios of interleaved runs and CPU-time rates hold better.")
    return ''


def timeit(fn, reps:int=5, warmup:int=1, setup=None) -> list[float]:
    "Wall-clock seconds of `reps` calls of `fn()` after `warmup` untimed calls (`setup()` untimed before each call)."
    for _ in range(warmup):
        if setup: setup()
        fn()
    ts = []
    for _ in range(reps):
        if setup: setup()
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return ts

def interleaved(fns:dict, reps:int=5, warmup:int=1, setup=None, cpu:dict|None=None) -> dict[str, list[float]]:
    """Like `timeit` for several candidates, alternating them in each repetition so drift in machine speed hits all alike.
    Returns wall-clock seconds; when a dict `cpu` is passed it receives the CPU seconds (user+sys, this process and its
    reaped children) per call: the better measure of the work done on a machine shared with other jobs."""
    for _ in range(warmup):
        for f in fns.values():
            if setup: setup()
            f()
    out = {k: [] for k in fns}
    if cpu is not None: cpu.update({k: [] for k in fns})
    for _ in range(reps):
        for k, f in fns.items():
            if setup: setup()
            c = cpu_seconds(); t = time.perf_counter(); f()
            out[k].append(time.perf_counter() - t)
            if cpu is not None: cpu[k].append(cpu_seconds() - c)
    return out

def cpu_seconds() -> float:
    "CPU seconds (user+sys) of this process plus its finished, reaped children (e.g. DataLoader workers after an epoch)."
    import resource
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime

def med(ts) -> float: return statistics.median(ts)

def spread(ts) -> str:
    "Relative spread (max-min)/median of repetitions, as a percent string."
    m = med(ts)
    return f"±{100 * (max(ts) - min(ts)) / 2 / m:.0f}%" if m > 0 and len(ts) > 1 else ''

def table(rows:list[list], header:list[str]) -> str:
    "A Markdown table (also readable in a terminal)."
    rows = [[str(c) for c in r] for r in rows]
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = lambda r: '| ' + ' | '.join(c.ljust(w[i]) for i, c in enumerate(r)) + ' |'
    return '\n'.join([fmt(header), '|' + '|'.join('-' * (x + 2) for x in w) + '|'] + [fmt(r) for r in rows])

def module_available(name:str) -> bool:
    "Whether `realfake.<name>` can be imported (modules land one by one); prints why not."
    import importlib
    try: importlib.import_module(f'realfake.{name}'); return True
    except Exception as e:
        print(f"realfake.{name} is not importable yet ({type(e).__name__}: {e})", file=sys.stderr)
        return False

def synth_image(w:int, h:int, seed:int=0):
    "A natural-looking RGB image: smooth colour field + gradients + shapes + fine sensor-like noise (uint8 HWC)."
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter
    rng = np.random.default_rng(seed)
    # low-frequency colour field, bicubically upsampled (sky/ground-like smooth regions)
    small = rng.integers(0, 256, (max(2, h // 150), max(2, w // 150), 3), dtype=np.uint8)
    base = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    # mid-frequency texture
    mid = rng.integers(0, 256, (max(2, h // 12), max(2, w // 12), 3), dtype=np.uint8)
    mid = np.asarray(Image.fromarray(mid).resize((w, h), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grad = (xx / w * 60 - yy / h * 40)[..., None]
    a = np.asarray(base, np.float32) * 0.75 + mid * 0.2 + grad
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(12):   # objects with edges
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(min(w, h) // 20, min(w, h) // 4))
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < .5 else d.rectangle)((x0 - r, y0 - r, x0 + r, y0 + r // 2), fill=col)
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    a = np.asarray(img, np.float32) + rng.normal(0, 4, (h, w, 3)).astype(np.float32)   # sensor noise
    return np.clip(a, 0, 255).astype(np.uint8)

def write_image(path, w:int, h:int, seed:int=0, quality:int=90) -> Path:
    "Write a synthetic image to `path` (format from the suffix: JPEG quality `quality`, or PNG)."
    from PIL import Image
    path = Path(path)
    im = Image.fromarray(synth_image(w, h, seed))
    if path.suffix.lower() in ('.jpg', '.jpeg'): im.save(path, quality=quality)
    else: im.save(path)
    return path

def make_image_set(dest, specs:list[tuple], seed:int=0) -> dict[str, list[Path]]:
    "Write `n` images for each spec `(name, w, h, ext, n)` into `dest`; returns the paths by name (deterministic)."
    import zlib
    dest = Path(dest); dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, w, h, ext, n in specs:
        out[name] = [write_image(dest / f'{name}_{i:04d}{ext}', w, h, seed=seed * 100003 + zlib.crc32(name.encode()) % 9973 + i) for i in range(n)]
    return out

def gflops_matmul(n:int=1024, reps:int=5) -> float:
    "This CPU's measured fp32 matmul rate (GFLOP/s) with torch's current thread count: the compute ceiling."
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2): a @ b
    ts = timeit(lambda: a @ b, reps=reps, warmup=1)
    return 2 * n ** 3 / med(ts) / 1e9

def model_gflops(model, x) -> float:
    "Forward-pass GFLOPs of `model` on input `x` (torch's FLOP counter: 2 per multiply-add)."
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as fc: model(x)
    return fc.get_total_flops() / 1e9

def header(title:str, args=None):
    print(f"## {title}\n")
    print(machine())
    cmd = ' '.join(['.venv/bin/python', os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    print(f"command: `{cmd}`\n")
