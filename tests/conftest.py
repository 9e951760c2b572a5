"Shared pytest fixtures: real sample images when ../shared has them, a tiny model directory, a command runner."
import os, logging
from pathlib import Path
import pytest
from helpers import make_model_dir, run_cli as _run_cli

os.environ.setdefault('MPLBACKEND', 'Agg')

GENIMAGE = Path(__file__).resolve().parents[2]/'shared'/'data'/'genimage-sample'

@pytest.fixture(scope='session')
def genimage_dir():
    "The GenImage sample beside the checkout (../shared/data/genimage-sample); skips when absent."
    if not (GENIMAGE/'natural').is_dir(): pytest.skip(f'GenImage sample not found at {GENIMAGE}')
    return GENIMAGE

@pytest.fixture(scope='session')
def tiny_model_dir(tmp_path_factory):
    "A random-weight convnext_atto model directory: 32-pixel centre crops of images resized to 36, mean/std 0.5/0.25."
    return make_model_dir(tmp_path_factory.mktemp('tiny_model')/'model', resize=36, mean=(0.5,) * 3, std=(0.25,) * 3)

@pytest.fixture(scope='session')
def trained_demo(tmp_path_factory):
    """A convnext_atto trained once per test run on the simulated demo, both classes PNG (so only the simulated decoder
    trace tells them apart), 32-pixel native crops: `model_dir`, `values`, `log`, `checkpoints`, `seconds`, `metadata`,
    and `batch` (a validation batch and the learner's logits for it, to check the saved model against). Tests that need a
    model that learned something share it instead of training their own; with xdist the first worker to ask trains it
    (under a file lock) and the others read what it wrote."""
    import fcntl, json
    from safetensors.torch import load_file
    root = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'): root = root.parent            # shared by the workers of this run
    d = root/'trained_demo'
    with open(root/'trained_demo.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (d/'result.json').exists(): _train_demo(d)
    res = json.loads((d/'result.json').read_text())
    return {**res, 'batch': load_file(d/'batch.safetensors')}

def _train_demo(d):
    import json, torch
    from safetensors.torch import save_file
    from realfake.synth import make_demo
    from realfake.train import train, PRESETS
    meta = make_demo(d/'demo', n=200, size=32, seed=0, same_format='PNG')
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try: res = train(str(meta), PRESETS['demo'].override(size=32, bs=16, epochs=5, lr=3e-3, max_crops=4), out=d/'run',
                     workers=0, cpu=True, quiet=True, threads=1)
    finally: torch.set_num_threads(n)
    learn = res['learn']
    xb = learn.dls.valid.one_batch()[0]
    learn.model.eval()
    with torch.no_grad(): logits = learn.model(xb)
    save_file({'xb': xb.contiguous(), 'logits': logits.contiguous()}, d/'batch.safetensors')
    keep = {k: str(res[k]) for k in ('model_dir', 'log', 'checkpoints')}
    rec = dict(keep, values=res['values'], seconds=res['seconds'], metadata=str(meta))
    (d/'result.json.tmp').write_text(json.dumps(rec)); (d/'result.json.tmp').rename(d/'result.json')

@pytest.fixture(scope='session')
def run_cli():
    "Run a console script in a subprocess: `run_cli('realfake_predict', *args, timeout=90, cwd=None, env=None)`."
    return _run_cli

@pytest.fixture
def one_torch_thread():
    "One torch thread: on a small shared CI box, 2 OpenMP threads competing with other jobs run ~10x slower."
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture(autouse=True)
def _realfake_warnings_stay_on():
    "A test that quiets realfake's logger must undo it: later tests in the same process check its warnings."
    log = logging.getLogger('realfake'); level, disabled = log.level, log.disabled
    yield
    quieted = log.getEffectiveLevel() > logging.WARNING or log.disabled
    log.setLevel(level); log.disabled = disabled
    assert not quieted, "this test left the 'realfake' logger quieter than WARNING"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    """Start the tests' fork server once, in the process that starts the others (before xdist starts its workers, which
    find it through REALFAKE_TEST_FORK_SERVER): its imports overlap the workers' collection."""
    import forks
    where = os.environ.get('REALFAKE_TEST_FORK_SERVER')
    if where and os.environ.get('PYTEST_XDIST_WORKER'): forks.attach(where); return
    server = forks.start()
    if server is None: return
    os.environ['REALFAKE_TEST_FORK_SERVER'] = server.path
    _fork_xdist_workers()

def _fork_xdist_workers():
    """xdist's workers are forked from the server too (execnet starts each as `python -u -c BOOTSTRAP`): they begin with
    torch, fastai and realfake imported instead of importing them again each. Their environment is the server's
    (`forks.server_env`: one OpenMP thread per worker, no progress bars, the Agg backend)."""
    try: import execnet.gateway_io as gio
    except ImportError: return
    import forks, subprocess
    def start(self, args, execmodel):
        self.popen = forks.popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=forks.server_env())
        super(gio.Popen2IOMaster, self).__init__(self.popen.stdin, self.popen.stdout, execmodel=execmodel)
    gio.Popen2IOMaster.__init__ = start

def pytest_sessionfinish(session):
    "With REALFAKE_TEST_FORK_STATS=FOLDER, each test process writes how many commands were forked or run fresh, and why."
    import forks, json
    d = os.environ.get('REALFAKE_TEST_FORK_STATS')
    if d: Path(d, f"forks-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.json").write_text(json.dumps(forks.stats))

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item):
    "With REALFAKE_TEST_CPU=FILE, each test's CPU seconds (its process, its children, forked commands) go to FILE."
    path = os.environ.get('REALFAKE_TEST_CPU')
    if not path: yield; return
    import forks, resource
    def cpu():
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime + forks.stats['child_cpu']
    import time
    t, w = cpu(), time.time()
    yield
    with open(path, 'a') as f: f.write(f'{cpu() - t:.2f}\t{item.nodeid}\t{w:.2f}\t{time.time():.2f}\t{os.environ.get("PYTEST_XDIST_WORKER")}\n')

def pytest_terminal_summary(terminalreporter):
    import forks
    if forks.stats['forked'] or forks.stats['fresh']:
        terminalreporter.write_line(f"commands: {forks.stats['forked']} forked, {forks.stats['fresh']} fresh {forks.stats['why']}")

def pytest_collection_modifyitems(items):
    """Modules with a `slow` test first (each module kept together, for its fixtures), so that with `-n 2` no long test
    starts last and runs alone at the end."""
    slow = {it.module for it in items if it.get_closest_marker('slow')}
    first = ('test_readme.py', 'test_containers.py', 'test_interrupt.py')      # the longest single tests of a full run
    items.sort(key=lambda it: (it.module not in slow, it.path.name not in first))
