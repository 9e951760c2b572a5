"""The notebooks: they read like fastai's (no exported cell longer than 60 lines, every exported function or class has a
`show_doc`), and their own tests pass. Each notebook runs as one pytest test through nbdev's `test_nb`, with the files,
skip flags (`tst_flags`) and working folder that `nbdev_test` uses, in a process of its own forked from the tests' server
(`tests/forks.py`): the notebooks share the suite's workers instead of a separate `nbdev_test` pass that imports torch
and fastai again. A failing notebook fails its test with the cell's traceback."""
import ast, json, re, sys
from pathlib import Path
import pytest
import forks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob('nbs/*.ipynb'))
MAX_LINES = 60

def _source(cell:dict) -> str:
    s = cell.get('source', '')
    return ''.join(s) if isinstance(s, list) else s

def _code(nb:dict) -> list:
    return [_source(c) for c in nb.get('cells', []) if c.get('cell_type') == 'code']

def long_export_cells(nb:dict, limit:int=MAX_LINES) -> list:
    "`(cell index, line count, first code line)` of each `#| export` cell of `nb` longer than `limit` lines."
    out = []
    for i, c in enumerate(nb.get('cells', [])):
        if c.get('cell_type') != 'code': continue
        lines = _source(c).splitlines()
        if lines and lines[0].strip() == '#| export' and len(lines) > limit:
            out.append((i, len(lines), (lines[1:] or [''])[0][:60]))
    return out

def default_exp(nb:dict):
    "The module a notebook exports to (`#| default_exp NAME`), or None."
    for s in _code(nb):
        m = re.search(r'^#\|\s*default_exp\s+(\S+)', s, re.M)
        if m: return m.group(1)
    return None

def public_defs(module_src:str) -> list:
    "The names in a module's `__all__` that it defines as a function or class (constants need no `show_doc`)."
    tree = ast.parse(module_src)
    defs, names = set(), []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): defs.add(node.name)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == '__all__' for t in node.targets):
            names = list(ast.literal_eval(node.value))
    return [n for n in names if n in defs]

def missing_show_doc(nb:dict, names:list) -> list:
    "The `names` that no code cell of `nb` passes to `show_doc`."
    text = '\n'.join(_code(nb))
    return [n for n in names if not re.search(rf'show_doc\(\s*{re.escape(n)}\b', text)]

def problems(nb:dict, module_src=None) -> list:
    "Every breach of the two rules in one notebook, as readable lines."
    out = [f"cell {i}: {n} lines in an export cell (max {MAX_LINES}), starting {first!r}" for i, n, first in long_export_cells(nb)]
    if module_src is not None: out += [f"no show_doc({n})" for n in missing_show_doc(nb, public_defs(module_src))]
    return out

def _check(path:Path) -> list:
    nb = json.loads(path.read_text(encoding='utf-8'))
    mod = default_exp(nb)
    src = ROOT.joinpath('realfake', *mod.split('.')).with_suffix('.py').read_text(encoding='utf-8') if mod else None
    return problems(nb, src)

def test_there_are_notebooks(): assert len(NOTEBOOKS) > 10

@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_style(path):
    assert _check(path) == [], f"{path.name}:\n" + '\n'.join(_check(path))

def _nb(*cells): return {'cells': [{'cell_type': t, 'source': s} for t, s in cells]}

def test_the_check_can_fail():
    long = '#| export\n' + '\n'.join(f'x{i} = {i}' for i in range(60))   # 61 lines
    assert len(long.splitlines()) == 61
    src = "__all__ = ['f', 'C', 'K']\nK = 1\ndef f(): pass\nclass C: pass\n"
    got = problems(_nb(('code', long), ('code', 'show_doc(f)')), src)
    assert got == ["cell 0: 61 lines in an export cell (max 60), starting 'x0 = 0'", "no show_doc(C)"]
    ok = '#| export\n' + '\n'.join(f'x{i} = {i}' for i in range(59))    # 60 lines is allowed
    assert problems(_nb(('code', ok), ('markdown', long), ('code', 'show_doc(f)\nshow_doc( C)')), src) == []
    assert missing_show_doc(_nb(('code', 'show_doc(ff)')), ['f']) == ['f']   # a longer name is not the name
    assert missing_show_doc(_nb(('markdown', 'show_doc(f)')), ['f']) == ['f'] # only code cells count

# ---------------------------------------------------------------- the notebooks' own tests
def notebooks() -> list[Path]:
    "The notebooks `nbdev_test` would run: nbdev's own glob (settings.ini's nbs_path, recursive), minus `.notest` folders."
    from nbdev.config import get_config
    from nbdev.doclinks import nbglob
    nbs = Path(get_config(path=ROOT).nbs_path)
    found = [p.absolute() for p in nbglob(nbs, as_path=True) if not (p.parent/'.notest').exists()]
    return sorted(found, key=lambda p: -p.stat().st_size)         # the largest (slowest) first, so none runs alone at the end

RUN = """import sys
from pathlib import Path
from nbdev.config import get_config
from nbdev.test import test_nb
cfg = get_config()
ok, _ = test_nb(Path(sys.argv[1]), skip_flags=cfg.tst_flags.split(), basepath=cfg.config_path, showerr=True)
sys.exit(0 if ok else 1)
"""

def run_notebook(nb: Path):
    "Run notebook `nb` as `nbdev_test` would, in a process of its own (forked when the server can): the finished process."
    return forks.run([sys.executable, '-c', RUN, str(nb)], cwd=ROOT/'nbs', env=forks.server_env(), capture_output=True,
                     text=True, timeout=600)

def test_every_notebook_is_collected():
    "The glob finds the source notebooks (a wrong nbs_path or a stray .notest would silently test nothing)."
    names = {p.name for p in notebooks()}
    assert len(names) >= 40 and {'index.ipynb', '13_predict.ipynb', '90_walkthrough.ipynb'} <= names, sorted(names)

@pytest.mark.slow
@pytest.mark.parametrize('nb', notebooks(), ids=lambda p: p.name)
def test_notebook(nb):
    "Every code cell runs without error, but those flagged `notest` or `slow` (settings.ini's tst_flags), as nbdev_test does."
    r = run_notebook(nb)
    assert r.returncode == 0, f'{nb.name} failed:\n{r.stderr[-6000:]}'

def test_a_failing_cell_fails_its_notebook(tmp_path):
    "The runner is not a formality: an error in a cell fails the notebook, with the traceback; a `notest` cell is skipped."
    cell = lambda src: {'cell_type': 'code', 'execution_count': None, 'id': str(abs(hash(src)))[:8], 'metadata': {},
                        'outputs': [], 'source': src}
    nb = {'cells': [], 'metadata': {'kernelspec': {'language': 'python', 'name': 'python3', 'display_name': 'Python 3'}},
          'nbformat': 4, 'nbformat_minor': 5}
    def run(*srcs):
        nb['cells'] = [cell(s) for s in srcs]
        (tmp_path/'t.ipynb').write_text(json.dumps(nb))
        return run_notebook(tmp_path/'t.ipynb')
    r = run('x = 1', "assert x == 2, 'the cell fails'")
    assert r.returncode == 1 and 'the cell fails' in r.stderr, r.stderr[-2000:]
    r = run('x = 1', "#| notest\nraise RuntimeError('not run')", 'assert x == 1')
    assert r.returncode == 0, r.stderr[-2000:]
