"""A fork server for the tests: one Python that has imported torch, fastai, timm and realfake once, forking a child for
each command a test runs (`python -c CODE`, `python SCRIPT`, `python -m MODULE` or a `realfake_*` console script).

Why: a test that runs a command in a fresh Python pays 4-7 s of imports on a 2-core machine, and the suite runs a few
hundred commands. A forked child is still a process of its own: its own pid, exit status, stdin/stdout/stderr, signals
(SIGKILL mid-write included), cwd, environment and argv; only the imports are shared. What a fork cannot give, it
refuses, and the caller (`tests/helpers.py`) runs a fresh Python instead:
- an environment that differs from the server's in a variable read at import time (anything but `RF_*`, `REALFAKE_*`,
  the rank/world variables and `PYTHONPATH` additions), since the imported modules have already read it; `HF_*` is the
  exception: huggingface_hub reads it into one module of constants, which the child reloads (`_reload_hub_constants`);
- a `PYTHONPATH` addition that holds a module the server has already imported (it would not shadow it).
What the server imported stays imported, side effects included (fastcore's and fastai's patches of pathlib and torch):
a command that would need them and not import them itself passes here and fails fresh. The tests that a module does
not import something the server has imported (torch, training code: `test_modeldir`, `test_cli`, `test_humans`,
`test_provenance`) and of the installed console script (`test_predict`) use a fresh Python (`subprocess`) for that
reason; a test that a module does not import what the server has not imported either (diffusers) can use a fork, which
still sees any import the preloaded modules made. `REALFAKE_TEST_FRESH=1` runs every command fresh.

pytest-xdist's workers are forked from it too (`conftest._fork_xdist_workers`), so they start with everything imported.
After its imports the server freezes its objects out of the garbage collector (`gc.freeze`): a child's collections
would otherwise walk, and so copy, the whole inherited heap.

Protocol (one Unix-socket connection per child): the client sends one JSON request and the child's fds 0, 1, 2
(SCM_RIGHTS); the server answers `{"pid": N}` or `{"fallback": "why"}`, then `{"status": S}` (the raw wait status)
when the child ends.
"""
import json, os, select, signal, socket, struct, sys

RUNTIME_ENV = ('RF_', 'REALFAKE_', 'LOCAL_RANK', 'RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT',
               'GROUP_RANK', 'ROLE_RANK', 'NODE_RANK', 'GROUP_WORLD_SIZE', 'ROLE_NAME', 'ROLE_WORLD_SIZE', 'TORCHELASTIC_',
               'TORCH_NCCL_ASYNC_ERROR_HANDLING', 'ACCELERATE_', 'PYTEST_', 'COLUMNS', 'LINES', 'PATH')
PRELOAD = ('numpy', 'pandas', 'PIL.Image', 'torch', 'torchvision', 'timm', 'fastai.vision.all', 'safetensors.torch',
           'accelerate', 'realfake.core', 'realfake.metadata', 'realfake.images', 'realfake.containers',
           'realfake.preprocess', 'realfake.modeldir', 'realfake.backends', 'realfake.jobs', 'realfake.data',
           'realfake.learner', 'realfake.predict', 'realfake.shards', 'realfake.train', 'realfake.evaluate',
           'realfake.prepare', 'realfake.synth', 'realfake.export', 'realfake.cli',
           'torch.distributed.elastic.multiprocessing.subprocess_handler.subprocess_handler', 'forks', 'nbdev.test',
           'sklearn.metrics', 'cv2')     # these two set variables at import (cv2: LD_LIBRARY_PATH, QT_*) as the tests' own imports do

_keep = []        # the server's own __main__ module, kept alive once a child's `-c` code becomes __main__

def _runtime(key: str) -> bool: return any(key == p or (p.endswith('_') and key.startswith(p)) for p in RUNTIME_ENV)

HERE, RUNPY = os.path.abspath(__file__), os.path.join(os.path.dirname(os.__file__), 'runpy.py')
START_ENV = dict(os.environ)      # before the imports: some of them set variables, as they would in a fresh Python

RELOADED = ('HF_', 'HUGGINGFACE_')    # read at import by huggingface_hub.constants: reloaded in a child whose values differ

def refusal(req: dict) -> str | None:
    "Why this server cannot run `req` as a fresh Python would, or None when it can."
    env, here = req['env'], START_ENV
    for k in sorted(set(env) | set(here)):
        if k == 'PYTHONPATH' or _runtime(k) or k.startswith(RELOADED) or env.get(k) == here.get(k): continue
        if k not in here and env.get(k) == os.environ.get(k): continue     # set by the same imports in the caller
        return f'environment variable {k} differs and may be read at import time'
    for d in _new_paths(env):
        try: names = os.listdir(d)
        except OSError: continue
        for n in names:
            mod, there = n[:-3] if n.endswith('.py') else n, os.path.realpath(os.path.join(d, n))
            have = os.path.realpath(getattr(sys.modules.get(mod), '__file__', None) or '.')
            if mod in sys.modules and not (have == there or have.startswith(there + os.sep)):
                return f'{os.path.join(d, n)} would shadow the already imported {mod}'
    return None

def _new_paths(env: dict) -> list[str]:
    old = [p for p in START_ENV.get('PYTHONPATH', '').split(os.pathsep) if p]
    return [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p and p not in old]

def _reply(conn, **msg):
    try: conn.sendall((json.dumps(msg) + '\n').encode())
    except OSError: pass

def serve(path: str) -> tuple[dict, list[int]]:
    "Accept requests on Unix socket `path` until stdin closes; in a forked child, return its request and fds."
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); lsock.bind(path + '.new'); lsock.listen(64)
    os.rename(path + '.new', path)                          # clients wait for `path`: it appears listening
    children: dict[int, socket.socket] = {}
    while True:
        r, _, _ = select.select([lsock, sys.stdin], [], [], 0.02)
        _reap(children)
        if sys.stdin in r and not os.read(sys.stdin.fileno(), 1): os._exit(0)        # the test process is gone
        if lsock not in r: continue
        conn, _ = lsock.accept()
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        req = json.loads(data)
        why = refusal(req)
        if why:
            _reply(conn, fallback=why); conn.close()
            for fd in fds: os.close(fd)
            continue
        pid = os.fork()
        if pid == 0:
            lsock.close(); conn.close()
            for c in children.values(): c.close()
            return req, fds
        for fd in fds: os.close(fd)
        children[pid] = conn
        asker = struct.unpack('3i', conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        with open(os.path.join(os.path.dirname(path), f'parent-{pid}'), 'w') as f: f.write(str(asker))   # see forks.family
        _reply(conn, pid=pid)

def _reap(children: dict):
    while children:
        try: pid, status, use = os.wait4(-1, os.WNOHANG)
        except ChildProcessError: return
        if pid == 0: return
        conn = children.pop(pid, None)
        if conn is not None: _reply(conn, status=status, cpu=use.ru_utime + use.ru_stime); conn.close()

def become(req: dict, fds: list[int]):
    "In the child: take the request's stdio, cwd, environment, argv and sys.path, as a fresh interpreter would have them."
    if req.get('setsid'): os.setsid()
    for i, fd in enumerate(fds): os.dup2(fd, i)
    for fd in fds:
        if fd > 2: os.close(fd)
    for s in (signal.SIGCHLD, signal.SIGTERM): signal.signal(s, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(req['cwd'])
    new = _new_paths(req['env'])
    added = {k: v for k, v in os.environ.items() if k not in START_ENV}   # set by the imports, as a fresh Python would
    os.environ.clear(); os.environ.update({**added, **req['env']})
    import io
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(open(0, 'rb', closefd=False))
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(open(1, 'wb', closefd=False), write_through=True, line_buffering=True)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(open(2, 'wb', closefd=False), write_through=True,
                                                   errors='backslashreplace')
    kind, target, args = req['kind'], req['target'], req['args']
    sys.argv = {'code': ['-c'], 'module': [target]}.get(kind, [target]) + args
    first = {'code': '', 'script': os.path.dirname(os.path.abspath(target))}.get(kind, os.getcwd())
    sys.path[:] = [first] + new + [p for p in sys.path[1:] if p not in new]
    if any(os.environ.get(k) != START_ENV.get(k) for k in set(os.environ) | set(START_ENV) if k.startswith(RELOADED)):
        _reload_hub_constants()
    _nest(req)
    import random; random.seed()
    if 'numpy' in sys.modules: sys.modules['numpy'].random.seed()
    if 'torch' in sys.modules: sys.modules['torch'].seed()

def _reload_hub_constants():
    """Re-read huggingface_hub's constants (endpoint, cache folders, offline mode...) from this child's environment, and
    update the modules that imported a constant by name (`from .constants import X`): what a fresh import would give."""
    c = sys.modules.get('huggingface_hub.constants')
    if c is None: return
    import importlib
    old = dict(vars(c)); importlib.reload(c); new = vars(c)
    for name, mod in list(sys.modules.items()):
        if mod is None or mod is c or not name.startswith('huggingface_hub'): continue
        d = vars(mod)
        for k in [k for k in d if k in old and k in new and not k.startswith('__') and d[k] is old[k]]: d[k] = new[k]

def _nest(req: dict):
    "torchrun and `accelerate launch` in a child start their ranks through this server too (a fresh Python where refused)."
    elastic = sys.modules.get('torch.distributed.elastic.multiprocessing.subprocess_handler.subprocess_handler')
    if elastic is None: return
    import forks
    forks.attach(req['server'])
    elastic.Popen = lambda args, **kw: forks.popen(args, **kw)

def run(req: dict):
    "Run the request as `__main__`; exceptions and SystemExit end the process as they would a fresh interpreter."
    import runpy, types
    kind, target = req['kind'], req['target']
    if kind == 'script': runpy.run_path(target, run_name='__main__'); return
    if kind == 'module': runpy.run_module(target, run_name='__main__', alter_sys=True); return
    main = types.ModuleType('__main__'); main.__builtins__ = __builtins__
    _keep.append(sys.modules['__main__']); sys.modules['__main__'] = main
    code = target if kind == 'code' else f'import sys; from realfake.cli import main; sys.exit(main({target!r}))'
    exec(compile(code, '<string>', 'exec'), main.__dict__)

def _code(e: SystemExit) -> int:
    if e.code is None: return 0
    if isinstance(e.code, int): return e.code & 0xff
    print(e.code, file=sys.stderr); return 1

def finish(req: dict):
    """Run the request and end the child as the interpreter ends: the exit status of SystemExit, a traceback and 1 for an
    exception, death by SIGINT for KeyboardInterrupt; non-daemon threads joined, atexit handlers run, streams flushed.
    Then `os._exit`: tearing down the inherited modules' objects would only touch (and copy) the whole shared heap."""
    import atexit, threading
    code, sigint = 0, False
    try: run(req)
    except SystemExit as e: code = _code(e)
    except BaseException as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename in (HERE, RUNPY):
            tb = tb.tb_next                                       # the traceback a fresh Python would print
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        sigint, code = isinstance(e, KeyboardInterrupt), 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    except SystemExit as e: code = _code(e)
    for f in (sys.stdout, sys.stderr):
        try: f.flush()
        except (OSError, ValueError): pass
    if sigint: signal.signal(signal.SIGINT, signal.SIG_DFL); os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)

if __name__ == '__main__':
    import importlib, warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for m in PRELOAD:
            try: importlib.import_module(m)
            except ImportError: pass
    import gc
    gc.freeze()
    request, child_fds = serve(sys.argv[1])
    request['server'] = sys.argv[1]
    become(request, child_fds)
    del request['env']
    finish(request)
