"The README's floor plan is the code's: each module imports realfake modules on lower floors only, and every module has a floor."
import ast, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def table_modules(cell:str) -> list:
    "The modules a floor's cell names: backticked names outside the parentheses (which list what they import)."
    return re.findall(r'`(\w+)`', re.sub(r'\([^)]*\)', '', cell))

def floors() -> dict:
    text = ROOT.joinpath('README.md').read_text(encoding='utf-8').split('## How the code is organised', 1)[1].split('\n## ', 1)[0]
    out = {}
    for m in re.finditer(r'^\| (\d+) \| (.+?) \| [^|]+ \|$', text, re.M):
        for name in table_modules(m.group(2)):
            assert name not in out, f"{name} is on two floors"
            out[name] = int(m.group(1))
    return out

def imports_of(path:Path) -> set:
    "The realfake modules `path` imports, anywhere in the file."
    got = set()
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: got.add(mod.split('.')[0])
            elif mod.startswith('realfake.'): got.add(mod.split('.')[1])
        elif isinstance(node, ast.Import):
            got |= {a.name.split('.')[1] for a in node.names if a.name.startswith('realfake.')}
    return got - {''}

def test_every_module_has_a_floor():
    mods = {p.stem for p in ROOT.joinpath('realfake').glob('*.py') if not p.stem.startswith('_')}
    assert set(floors()) == mods

def test_imports_go_down():
    fl = floors()
    bad = [f"{p.stem} (floor {fl[p.stem]}) imports {m} (floor {fl[m]})"
           for p in sorted(ROOT.joinpath('realfake').glob('*.py')) if not p.stem.startswith('_')
           for m in sorted(imports_of(p)) if fl[m] >= fl[p.stem]]
    assert not bad, '; '.join(bad)

def test_the_check_can_fail(tmp_path):
    "A module importing one on its own floor is caught."
    f = tmp_path/'explain.py'; f.write_text('from .modeldir import ModelConfig\nimport realfake.predict\n')
    assert imports_of(f) == {'modeldir', 'predict'}
    fl = floors()
    assert [m for m in imports_of(f) if fl[m] >= fl['explain']] != []

def test_evaluation_rooms():
    "evaluate's jobs live in their own rooms: the report and the card need only core, so the Hub's push can build the card without evaluate."
    fl, mod = floors(), lambda m: ROOT/'realfake'/f'{m}.py'
    assert imports_of(mod('report')) == {'core'}
    assert {'calibrate', 'figures', 'report'} <= imports_of(mod('evaluate'))
    assert 'report' in imports_of(mod('hub')) and 'evaluate' not in imports_of(mod('hub'))
    assert fl['report'] < fl['calibrate'] < fl['figures'] < fl['evaluate'] and fl['hub'] < fl['evaluate']
