"""The client of `tests/zygote.py`: `popen` and `run`, drop-in for `subprocess.Popen` and `subprocess.run` on the command
lines the tests use (`python -c CODE ...`, `python SCRIPT ...`, `python -m MODULE ...`, a `realfake_*` console script),
forked from a server that has imported torch, fastai and realfake once. Anything else, or anything the server refuses
(see the zygote's docstring), runs in a fresh Python through `subprocess`. `REALFAKE_TEST_FRESH=1` turns the server
off: every command then runs fresh, which CI can use to check that both ways agree."""
from __future__ import annotations
import atexit, io, json, os, select, signal, socket, subprocess, sys, tempfile, threading, time
from pathlib import Path

__all__ = ['popen', 'run', 'family', 'server_env', 'stats']

CLI_NAMES = ('realfake_prepare', 'realfake_demo', 'realfake_train', 'realfake_evaluate', 'realfake_predict',
             'realfake_export', 'realfake_app', 'realfake_generate', 'realfake_reconstruct', 'realfake_push', 'realfake_merge')
stats = {'forked': 0, 'fresh': 0, 'why': {}, 'child_cpu': 0.0}     # child_cpu: CPU seconds of forked children
_server = None
_lock = threading.Lock()

def server_env(**extra) -> dict:
    "The server's environment (plus `extra`), which a request must match but for run-time variables to be forked."
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', MPLBACKEND='Agg', TQDM_DISABLE='1')
    return {**env, **{k: str(v) for k, v in extra.items()}}

class _Attached:
    "A server another process started (pytest's xdist controller, or the server this process was forked from)."
    def __init__(self, path): self.path, self.dir, self.ok = path, os.path.dirname(path), None

    def alive(self) -> bool: return os.path.isdir(self.dir)

    def ready(self) -> bool:
        "Wait until the server listens (its socket appears once it has imported everything)."
        end = time.monotonic() + 300
        while self.ok is None:
            if os.path.exists(self.path): self.ok = True
            elif time.monotonic() > end or not self.alive(): self.ok = False
            else: time.sleep(0.05)
        return self.ok

class _Server(_Attached):
    "The server this process started and owns: it ends when this process closes its stdin (or exits)."
    def __init__(self):
        super().__init__(os.path.join(tempfile.mkdtemp(prefix='rf_zygote_'), 'sock'))
        self.log = open(os.path.join(self.dir, 'log'), 'w+')
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name('zygote.py')), self.path],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.log,
                                     env=server_env(), cwd=self.dir)
        atexit.register(self.close)

    def alive(self) -> bool: return self.proc.poll() is None

    def ready(self) -> bool:
        if not super().ready() and self.ok is False:
            self.log.seek(0); print('fork server did not start:\n' + self.log.read()[-2000:], file=sys.stderr)
        return self.ok

    def close(self):
        try: self.proc.stdin.close(); self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired): self.proc.kill()
        self.log.close()

def attach(path: str):
    "In a forked child: use the server at `path` rather than starting one."
    global _server
    _server = _Attached(path)

def start():
    "Start the server now (in the background: its imports overlap the first tests)."
    global _server
    with _lock:
        if _server is None and sys.platform == 'linux' and not os.environ.get('REALFAKE_TEST_FRESH'): _server = _Server()
    return _server

def _request(cmd: list[str]) -> dict | None:
    "The zygote request for command line `cmd`, or None when it is not a Python command the server can run."
    cmd = [os.fsdecode(c) if isinstance(c, bytes) else str(c) for c in cmd]    # undecodable bytes as a fresh Python's argv has them
    exe = Path(cmd[0])
    if exe.name in CLI_NAMES and exe.parent == Path(sys.executable).parent: return dict(kind='cli', target=exe.name, args=cmd[1:])
    if cmd[0] != sys.executable: return None
    if cmd[1:2] == ['-u']: cmd = cmd[:1] + cmd[2:]             # unbuffered, as the server's children are (torchrun asks for it)
    if len(cmd) < 2 or (cmd[1].startswith('-') and cmd[1] not in ('-c', '-m')): return None
    if cmd[1] in ('-c', '-m'):
        if len(cmd) < 3: return None
        return dict(kind='code' if cmd[1] == '-c' else 'module', target=cmd[2], args=cmd[3:])
    return dict(kind='script', target=cmd[1], args=cmd[2:])

def _fd(spec, mode, keep: list):
    "A file descriptor for a Popen-style stdio argument, and the parent's end of a pipe when `spec` is PIPE."
    if spec is None: return {'r': 0, 'o': 1, 'e': 2}[mode], None          # inherited, as subprocess does
    if spec == subprocess.DEVNULL: f = open(os.devnull, 'r+b'); keep.append(f); return f.fileno(), None
    if spec == subprocess.PIPE:
        r, w = os.pipe()
        return (r, w) if mode == 'r' else (w, r)
    return (spec if isinstance(spec, int) else spec.fileno()), None

class Forked:
    "A forked child with the part of `subprocess.Popen`'s interface the tests use."
    def __init__(self, args, conn, pid, stdin, stdout, stderr, text):
        self.args, self._conn, self.pid, self.returncode, self._buf = args, conn, pid, None, b''
        wrap = (lambda fd, m: io.TextIOWrapper(open(fd, m + 'b'), errors='replace') if text else open(fd, m + 'b'))
        self.stdin = wrap(stdin, 'w') if stdin is not None else None
        self.stdout = wrap(stdout, 'r') if stdout is not None else None
        self.stderr = wrap(stderr, 'r') if stderr is not None else None

    def poll(self):
        if self.returncode is None and select.select([self._conn], [], [], 0)[0]: self._read_status()
        return self.returncode

    def _read_status(self):
        while b'\n' not in self._buf:
            chunk = self._conn.recv(4096)
            if not chunk: raise RuntimeError('fork server lost a child')
            self._buf += chunk
        msg = json.loads(self._buf.split(b'\n')[0])
        st, stats['child_cpu'] = msg['status'], stats['child_cpu'] + msg.get('cpu', 0)
        self.returncode = -os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st)
        self._conn.close()

    def wait(self, timeout=None):
        if self.returncode is None:
            if not select.select([self._conn], [], [], timeout)[0]: raise subprocess.TimeoutExpired(self.args, timeout)
            self._read_status()
        return self.returncode

    def send_signal(self, sig):
        if self.returncode is None:
            try: os.kill(self.pid, sig)
            except ProcessLookupError: pass
    def kill(self): self.send_signal(signal.SIGKILL)
    def terminate(self): self.send_signal(signal.SIGTERM)

    def communicate(self, input=None, timeout=None):
        "Read stdout and stderr to their ends (threads, as Popen does), then wait; TimeoutExpired keeps what was read."
        if self.stdin is not None:
            if input: self.stdin.write(input)
            self.stdin.close(); self.stdin = None
        out = {}
        def drain(name):
            f = getattr(self, name)
            out[name] = f.read() if f is not None else None
        ts = [threading.Thread(target=drain, args=(n,), daemon=True) for n in ('stdout', 'stderr')]
        for t in ts: t.start()
        end = None if timeout is None else time.monotonic() + timeout
        for t in ts:
            t.join(None if end is None else max(0, end - time.monotonic()))
            if t.is_alive(): raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if end is None else max(0.1, end - time.monotonic()))
        return out.get('stdout'), out.get('stderr')

    def __enter__(self): return self
    def __exit__(self, *a):
        for f in (self.stdin, self.stdout, self.stderr):
            if f is not None: f.close()
        self.wait()

def family(pid: int) -> list[int]:
    """`pid` and every live process below it: its children, and the processes this server forked on their behalf (torchrun's
    ranks are children of the server, not of torchrun), recursively."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir('/proc'):
        try: ppid = int(open(f'/proc/{d}/stat').read().rsplit(')', 1)[1].split()[1]) if d.isdigit() else None
        except (OSError, IndexError, ValueError): continue
        if ppid is not None: kids.setdefault(ppid, []).append(int(d))
    sdir = getattr(_server, 'dir', None)
    for name in os.listdir(sdir) if sdir else []:
        if name.startswith('parent-'):
            try: kids.setdefault(int(open(os.path.join(sdir, name)).read()), []).append(int(name[7:]))
            except (OSError, ValueError): pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p not in out: out.append(p); todo += kids.get(p, [])
    return [p for p in out if os.path.exists(f'/proc/{p}')]

def popen(cmd, stdin=None, stdout=None, stderr=None, text=False, env=None, cwd=None, start_new_session=False, **kw):
    "`subprocess.Popen(cmd, ...)`, forked from the server when it can be."
    req = _request(cmd)
    srv = start() if req is not None and not kw else None
    if srv is not None and srv.ready():
        req.update(env=dict(env if env is not None else os.environ), cwd=str(cwd or os.getcwd()), setsid=start_new_session)
        child = _fork(req, cmd, stdin, stdout, stderr, text)
        if child is not None: stats['forked'] += 1; return child
    stats['fresh'] += 1
    return subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr, text=text, env=env, cwd=cwd,
                            start_new_session=start_new_session, **kw)

def _fork(req, cmd, stdin, stdout, stderr, text):
    keep = []
    fds = [_fd(stdin, 'r', keep), _fd(stdout, 'o', keep)]
    fds.append((fds[1][0], None) if stderr == subprocess.STDOUT else _fd(stderr, 'e', keep))
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); conn.connect(_server.path)
    try:
        socket.send_fds(conn, [json.dumps(req).encode()], [f for f, _ in fds])
    finally:
        for f, mine in fds:
            if mine is not None: os.close(f)                  # the child's end of our pipe
        for f in keep: f.close()
    buf = b''
    while b'\n' not in buf:
        chunk = conn.recv(4096)
        if not chunk: raise RuntimeError('fork server died; see its log in ' + _server.dir)
        buf += chunk
    line, rest = buf.split(b'\n', 1)
    msg = json.loads(line)
    if 'fallback' in msg:
        for _, mine in fds:
            if mine is not None: os.close(mine)
        stats['why'][msg['fallback']] = stats['why'].get(msg['fallback'], 0) + 1
        conn.close(); return None
    child = Forked(cmd, conn, msg['pid'], fds[0][1], fds[1][1], fds[2][1] if stderr != subprocess.STDOUT else None, text)
    child._buf = rest
    return child

def run(cmd, input=None, capture_output=False, timeout=None, check=False, stdout=None, stderr=None, **kw):
    "`subprocess.run(cmd, ...)`, forked from the server when it can be."
    if capture_output: stdout = stderr = subprocess.PIPE
    stdin = subprocess.PIPE if input is not None else kw.pop('stdin', None)
    with popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr, **kw) as p:
        try: out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            p.kill(); p.wait()
            raise subprocess.TimeoutExpired(cmd, timeout, output=getattr(e, 'output', None), stderr=getattr(e, 'stderr', None)) from None
        rc = p.poll() if isinstance(p, subprocess.Popen) else p.returncode
    r = subprocess.CompletedProcess(cmd, rc, out, err)
    if check: r.check_returncode()
    return r
