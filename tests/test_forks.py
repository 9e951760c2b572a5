"""The tests' fork server (`tests/forks.py`, `tests/zygote.py`) must give what a fresh Python gives: the same exit status,
stdout and stderr for each way a program ends, its own pid and signals, argv bytes, stdin, cwd and environment; and it
must refuse (run fresh) what it cannot give."""
import os, signal, subprocess, sys
import pytest
import forks

pytestmark = pytest.mark.skipif(sys.platform != 'linux' or bool(os.environ.get('REALFAKE_TEST_FRESH')), reason='the fork server runs on Linux only')

ENDINGS = {'ok': 'print("out"); import sys; print("err", file=sys.stderr)', 'exit 3': 'import sys; sys.exit(3)',
           'exit 300': 'import sys; sys.exit(300)', 'exit text': 'import sys; sys.exit("bad thing")',
           'exception': 'def f(): raise ValueError("x")\nf()', 'ctrl-c': 'raise KeyboardInterrupt',
           'atexit': 'import atexit; atexit.register(lambda: print("bye"))',
           'thread': 'import threading, time\nthreading.Thread(target=lambda: (time.sleep(0.2), print("late"))).start()',
           'argv': 'import sys; print(sys.argv)', 'main': 'print(__name__)'}

@pytest.mark.parametrize('ending', list(ENDINGS))
def test_a_fork_ends_as_a_fresh_python_ends(ending):
    cmd = [sys.executable, '-c', ENDINGS[ending], 'a', b'caf\xe9']
    before = forks.stats['forked']
    got = forks.run(cmd, capture_output=True, text=True, env=forks.server_env(), timeout=60)
    want = subprocess.run(cmd, capture_output=True, text=True, env=forks.server_env(), timeout=60)
    assert forks.stats['forked'] == before + 1, forks.stats
    assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout, want.stderr)

def test_pid_signals_stdin_cwd_and_environment(tmp_path):
    code = 'import os, sys, time; print(os.getpid(), os.getcwd(), os.environ["RF_X"], sys.stdin.read(), flush=True); time.sleep(60)'
    p = forks.popen([sys.executable, '-c', code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path,
                    env=forks.server_env(RF_X='y'))
    assert isinstance(p, forks.Forked)
    p.stdin.write('in'); p.stdin.close()
    pid, cwd, x, got = p.stdout.readline().split()
    assert (int(pid), cwd, x, got) == (p.pid, str(tmp_path), 'y', 'in') and p.pid != os.getpid()
    p.send_signal(signal.SIGKILL)
    assert p.wait(30) == -signal.SIGKILL

def test_a_timeout_kills_the_child():
    with pytest.raises(subprocess.TimeoutExpired):
        forks.run([sys.executable, '-c', 'import time; time.sleep(60)'], env=forks.server_env(), timeout=1)

@pytest.mark.parametrize('what', ['import-time variable', 'shadowing path'])
def test_what_a_fork_cannot_give_runs_fresh(tmp_path, what):
    "A variable that imported modules have read, or a PYTHONPATH module that would not shadow an imported one: fresh."
    (tmp_path/'torch.py').write_text('NOT_TORCH = 1\n')
    env = (forks.server_env(MPLBACKEND='pdf') if what == 'import-time variable' else
           forks.server_env(PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get('PYTHONPATH', '')))
    before = dict(forks.stats)
    code = 'import os, torch, matplotlib; print(matplotlib.get_backend(), hasattr(torch, "NOT_TORCH"))'
    r = forks.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120)
    assert forks.stats['fresh'] == before['fresh'] + 1 and forks.stats['forked'] == before['forked']
    assert r.stdout.split() == (['pdf', 'False'] if what == 'import-time variable' else ['Agg', 'True'])

def test_huggingface_hub_constants_as_a_fresh_python_reads_them(tmp_path):
    "HF_* variables differ: the fork reloads huggingface_hub's constants, and every module sees what a fresh import gives."
    env = forks.server_env(HF_ENDPOINT='http://127.0.0.1:9', HF_HUB_OFFLINE='1', HF_HOME=tmp_path/'home',
                           HF_HUB_CACHE=tmp_path/'cache', HF_HUB_DISABLE_PROGRESS_BARS='1')
    code = ('import huggingface_hub, sys, json\nfrom huggingface_hub import constants as c\n'
            'def s(v): return str(sorted(v)) if isinstance(v, (set, frozenset)) else str(v)\n'
            'mods = {n: {k: s(v) for k, v in vars(m).items() if k.isupper() and k in vars(c)} for n, m in list(sys.modules.items())'
            ' if n.startswith("huggingface_hub") and m is not None}\nprint(json.dumps(mods, sort_keys=True))')
    before = forks.stats['forked']
    got = forks.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120)
    want = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120)
    assert forks.stats['forked'] == before + 1
    import json
    g, w = json.loads(got.stdout), json.loads(want.stdout)
    assert 'http://127.0.0.1:9' in g['huggingface_hub.constants']['ENDPOINT'] and g['huggingface_hub.constants']['HF_HUB_OFFLINE'] == 'True'
    assert {n: g[n] for n in w} == w
