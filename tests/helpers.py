"""Helpers shared by the tests: a random-weight model directory, running a console script, a deadline.

`conftest.py` exposes the common ones as fixtures (`tiny_model_dir`, `run_cli`); tests that need them at module level
import them from here."""
from __future__ import annotations
import contextlib, io, logging, os, signal, subprocess, sys
from pathlib import Path
import forks

__all__ = ['CLI_MODULES', 'cli_cmd', 'cli_env', 'run_cli', 'run_cli_here', 'Hang', 'deadline', 'make_model_dir']

CLI_MODULES = {'realfake_prepare': 'prepare', 'realfake_demo': 'synth', 'realfake_train': 'train',
               'realfake_evaluate': 'evaluate', 'realfake_predict': 'predict', 'realfake_export': 'export',
               'realfake_app': 'app', 'realfake_generate': 'generate', 'realfake_reconstruct': 'reconstruct',
               'realfake_push': 'hub', 'realfake_merge': 'shards'}

def cli_cmd(name: str) -> list[str]:
    "The command line of console script `name`: the installed script beside this Python, else `python -c`."
    exe = Path(sys.executable).parent / name
    if exe.exists(): return [str(exe)]
    return [sys.executable, '-c', f'import sys; from realfake.cli import main; sys.argv[0] = {name!r}; sys.exit(main({name!r}))']   # as the console script

cli_env = forks.server_env     # the environment of a command under test: one thread, no progress bars, no plotting window

def run_cli(name: str, *args, timeout: float = 90, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run console script `name` with `args` in a process of its own (forked from `tests/forks.py`'s server when the
    environment allows); a run longer than `timeout` s is reported as a hang (rc None)."""
    cmd = cli_cmd(name) + [str(a) for a in args]
    try:
        return forks.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env or cli_env())
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(cmd, None, e.stdout or '', f'HANG: killed after {timeout}s\n{e.stderr or ""}')

def run_cli_here(name: str, *args, cwd=None) -> subprocess.CompletedProcess:
    """Run console script `name` in this process, as its entry point does (`realfake.cli.main`): the exit status, stdout
    and stderr (log lines included) come back like `run_cli`'s. For tests of a command's output and one-line errors;
    exit codes after a crash, tracebacks of a dying process, hangs and signals need `run_cli`'s subprocess."""
    from realfake.cli import main
    log = logging.getLogger('realfake'); handlers, level = list(log.handlers), log.level
    log.handlers[:] = [h for h in handlers if not getattr(h, '_realfake', False)]   # the command adds one on this stderr
    argv, here, out, err = sys.argv, os.getcwd(), io.StringIO(), io.StringIO()
    sys.argv = [name] + [str(a) for a in args]
    try:
        if cwd is not None: os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try: main(name); code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
                if isinstance(e.code, str): print(e.code, file=sys.stderr)
    finally:
        sys.argv = argv; os.chdir(here)
        log.handlers[:] = handlers; log.setLevel(level)
    return subprocess.CompletedProcess(sys.argv, code, out.getvalue(), err.getvalue())

class Hang(BaseException):
    "Raised by `deadline` (a BaseException, so neither `except OSError` nor `except Exception` in the code under test hides it)."

@contextlib.contextmanager
def deadline(seconds: int, what: str = 'call'):
    "Raise `Hang` in the main thread when the block runs longer than `seconds`."
    def _h(*_): raise Hang(f'{what} hung (> {seconds}s)')
    old = signal.signal(signal.SIGALRM, _h); signal.alarm(int(seconds))
    try: yield
    finally: signal.alarm(0); signal.signal(signal.SIGALRM, old)

def make_model_dir(dest, arch: str = 'convnext_atto', seed: int = 0, **spec) -> Path:
    "A random-weight model directory (config.json + model.safetensors) for CPU tests; `spec`: Preprocess fields."
    import torch
    from realfake.modeldir import build_network, ModelConfig, save_model_dir
    from realfake.preprocess import Preprocess
    torch.manual_seed(seed)
    spec = {'size': 32, **spec}
    spec.setdefault('resize', spec['size'])
    return save_model_dir(build_network(arch), ModelConfig(arch, preprocess=Preprocess(**spec)), dest)
