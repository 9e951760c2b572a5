"""The console scripts parse before they import: `--help` and usage errors of every command answer without torch,
the light parser's help is the command's own, and a valid command line runs the real command."""
import importlib, json, logging, subprocess, sys
import pytest
from fastcore.script import anno_parser
from realfake.cli import COMMANDS, PARSERS, light_parser, main
from helpers import cli_env

HEAVY = ('torch', 'fastai', 'timm', 'torchvision', 'pandas')

@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_light_help_is_the_commands_own(name):
    f = getattr(importlib.import_module(f'realfake.{COMMANDS[name]}'), name)
    real = f.__globals__[PARSERS[name]]() if name in PARSERS else anno_parser(f.__wrapped__)
    assert light_parser(name).format_help() == real.format_help()

_PROBE = """import sys, json, contextlib, io
from realfake.cli import COMMANDS, main
out = {}
for name in COMMANDS:
    for args in (['--help'], ['--no_such_option']):
        sys.argv = [name] + args
        with contextlib.redirect_stdout(io.StringIO()) as o, contextlib.redirect_stderr(io.StringIO()) as e:
            try: main(name); code = None
            except SystemExit as x: code = x.code
        out[name + ' ' + args[0]] = [code, (o.getvalue() + e.getvalue())[:60]]
out['imported'] = [m for m in %r if m in sys.modules]
print(json.dumps(out))"""

def test_help_and_usage_errors_import_no_torch():
    "One fresh process answers `--help` (exit 0) and an unknown option (exit 2) for every command, then lists the heavy modules it imported."
    r = subprocess.run([sys.executable, '-c', _PROBE % (HEAVY,)], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.splitlines()[-1])
    assert got.pop('imported') == []
    for name in COMMANDS:
        assert got[f'{name} --help'][0] == 0 and got[f'{name} --help'][1].startswith(f'usage: {name}'), got[f'{name} --help']
        assert got[f'{name} --no_such_option'][0] == 2, got[f'{name} --no_such_option']

@pytest.fixture
def log_restored():
    "A command run in process adds its stderr handler to the 'realfake' logger: take it off again afterwards."
    log = logging.getLogger('realfake'); handlers, level = list(log.handlers), log.level
    yield
    log.handlers[:] = handlers; log.setLevel(level)

def test_main_runs_the_command(tmp_path, monkeypatch, log_restored):
    "A valid command line goes on to the real command (in process: the same call the console script makes)."
    monkeypatch.setattr(sys, 'argv', ['realfake_demo', '--out', str(tmp_path/'d'), '--per_class', '4', '--size', '32'])
    main('realfake_demo')
    assert len(list((tmp_path/'d'/'fake').iterdir())) == 4 and (tmp_path/'d'/'metadata.jsonl').exists()

def test_a_user_error_still_exits_2_with_one_line(tmp_path, monkeypatch, capsys, log_restored):
    "Past the light parser, the command's own error handling: a missing metadata file is one line and exit 2."
    monkeypatch.setattr(sys, 'argv', ['realfake_evaluate', str(tmp_path/'missing.jsonl'), '--model', str(tmp_path)])
    with pytest.raises(SystemExit) as e: main('realfake_evaluate')
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('realfake_evaluate: error:'), err
