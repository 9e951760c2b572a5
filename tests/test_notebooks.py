"The notebooks read like fastai's: no exported cell longer than 60 lines, and every exported function or class has a `show_doc`."
import ast, json, re
from pathlib import Path
import pytest

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
