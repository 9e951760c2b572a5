"""The README is tested: its tour (the code blocks marked `<!-- tested -->`) runs as written, in a clean folder, on the
demo data: make data -> prepare with a test split -> train -> evaluate the test split -> predict -> export -> the web
app answering a request, and the Python snippet. A README command that fails fails this test (and CI)."""
import configparser, os, re, shlex, signal, socket, subprocess, sys, time
from pathlib import Path
import pytest
import forks
from helpers import CLI_MODULES, cli_cmd, cli_env

ROOT = Path(__file__).resolve().parents[1]
README = ROOT/'README.md'
TOUR_EXTRAS = {'realfake_demo': 'demo', 'realfake_export': 'onnx', 'realfake_app': 'app'}   # the extra each tour command needs

def readme_blocks() -> list[tuple[str, str]]:
    "(language, code) of every fenced block right after a `<!-- tested -->` marker, in order."
    text = README.read_text(encoding='utf-8')
    return [(m.group(1), m.group(2)) for m in re.finditer(r'<!-- tested -->\s*```(\w+)\n(.*?)```', text, re.S)]

def _commands(code:str) -> list[str]:
    "Shell commands of a block: one per line (backslash continuations joined), comments dropped."
    code = re.sub(r'\\\n\s*', ' ', code)
    return [l.split(' #')[0].strip() for l in code.splitlines() if l.strip() and not l.strip().startswith('#')]

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _env():
    bin_dir = str(Path(sys.executable).parent)
    return cli_env(PATH=bin_dir + os.pathsep + os.environ.get('PATH', ''))

def _argv(cmd:str) -> list | None:
    "The argv of a README line that is one `realfake_*` command (no shell syntax), its script as the venv has it; else None."
    if re.search(r'[|&;<>$`*?(){}]', cmd): return None
    argv = shlex.split(cmd)
    return cli_cmd(argv[0]) + argv[1:] if argv and argv[0] in CLI_MODULES else None

def _run(cmd:str, cwd:Path, timeout:int=600, argv=None):
    "Run a README line: one `realfake_*` command as its own process (forked by `forks`), anything else through the shell."
    argv = argv or _argv(cmd)
    how = dict(cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    r = forks.run(argv, **how) if argv else subprocess.run(cmd, shell=True, **how)
    assert r.returncode == 0, f"README command failed (exit {r.returncode}): {cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r

def _app_smoke(cmd:str, cwd:Path):
    "Start the README's `realfake_app` command on a free port, upload an image, open the Label page, stop it."
    import httpx
    port = _free_port()
    p = forks.popen(_argv(cmd) + ['--port', str(port)], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url, t0 = f'http://127.0.0.1:{port}', time.time()
        while True:
            try: httpx.get(url + '/', timeout=2); break
            except httpx.TransportError:
                assert p.poll() is None, f"realfake_app exited: {p.stdout.read()[-2000:]}"
                assert time.time() - t0 < 120, 'realfake_app did not answer within 120 s'
                time.sleep(0.5)
        img = next((cwd/'demo_data'/'fake').iterdir())
        r = httpx.post(url + '/detect', files={'images': (img.name, img.read_bytes(), 'image/png')},
                       headers={'accept': 'application/json'}, timeout=60)
        assert r.status_code == 200 and 0 <= r.json()['results'][0]['prob_fake'] <= 1, r.text[:500]
        assert httpx.get(url + '/label', timeout=30).status_code == 200
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try: p.wait(20)
        except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL)

def test_readme_has_a_tested_tour():
    kinds = [k for k, _ in readme_blocks()]
    assert 'sh' in kinds and 'python' in kinds, kinds

def install_extras() -> set:
    "The extras of the README's install line (`pip install -e \".[a,b]\"` in the Install section)."
    sec = README.read_text(encoding='utf-8').split('## Install and run the demo', 1)[1].split('\n## ', 1)[0]
    m = re.search(r'pip install -e "\.\[([\w,]+)\]"', sec)
    assert m, 'no `pip install -e ".[...]"` line in the Install section'
    return set(m.group(1).split(','))

def test_install_line_gives_what_the_tour_runs():
    "Every tour command's extra is on the install line and defined in settings.ini (a missing `onnx` broke export)."
    tour = [c.split()[0] for lang, code in readme_blocks() if lang == 'sh' for c in _commands(code)]
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'settings.ini')
    missing = {TOUR_EXTRAS[c] for c in tour if c in TOUR_EXTRAS} - install_extras()
    assert not missing, f"the README's install line lacks the extras {sorted(missing)} that its tour needs"
    assert all(cfg.has_option('DEFAULT', f'extra_{e}') for e in install_extras()), install_extras()
    assert set(TOUR_EXTRAS) <= set(tour), 'a tour command left: update TOUR_EXTRAS'

def _ignored(names) -> list:
    "Those of `names` (paths relative to the checkout, folders ending in /) that the checkout's .gitignore does not cover."
    r = subprocess.run(['git', 'check-ignore', '--no-index', '--stdin'], cwd=ROOT, input='\n'.join(names), text=True, capture_output=True)
    if r.returncode not in (0, 1) or not (ROOT/'.git').exists(): pytest.skip(f'not a git checkout: {r.stderr.strip()}')
    return sorted(set(names) - set(r.stdout.split()))

@pytest.mark.slow
def test_readme_tour_runs_as_written(tmp_path):
    "Every command of the tested blocks, in order, in an empty folder (the app command is started and queried)."
    for lang, code in readme_blocks():
        if lang == 'python':
            out = _run(f'python -c {shlex.quote(code)}', tmp_path, argv=[sys.executable, '-c', code]).stdout
            lines = out.splitlines()
            assert 'prob_fake' in lines[0] and 'label' in lines[0] and len(lines) == 3, out   # a header, two images
            assert max(map(len, lines)) <= 80, f"the snippet's output is wider than an 80-column terminal:\n{out}"
            continue
        for cmd in _commands(code):
            if cmd.startswith('realfake_app'): _app_smoke(cmd, tmp_path)
            else: _run(cmd, tmp_path)
    assert (tmp_path/'report'/'report.html').exists() and (tmp_path/'runs'/'mine'/'model'/'model.onnx').exists()
    left = _ignored([p.name + '/' * p.is_dir() for p in tmp_path.iterdir()])
    assert not left, f"the tour, run in the clone, leaves {left} untracked: add them to .gitignore"
