"One vocabulary: every command's options, read from the parsers `--help` prints, use one name per idea with one meaning."
import argparse, importlib, inspect
import pytest
from fastcore.script import anno_parser
from helpers import CLI_MODULES
from realfake.core import VOCABULARY, SEED

# Second names for an idea the vocabulary names once: none may be a visible option of any command.
SYNONYMS = {'dest': 'out', 'out_dir': 'out', 'to': 'out', 'num_workers': 'workers', 'threads_io': 'workers', 'dtype': 'precision',
            'quiet': 'no_progress', 'progress': 'no_progress', 'n_per_class': 'n', 'metadata_in': 'metadata', 'dir': 'model'}
# The input each command works on is positional (its name in the parser); None: the command has no data input.
INPUTS = {'realfake_prepare': 'sources', 'realfake_demo': None, 'realfake_train': 'metadata', 'realfake_evaluate': 'data',
          'realfake_predict': 'paths', 'realfake_export': None, 'realfake_app': 'metadata', 'realfake_reconstruct': 'paths',
          'realfake_generate': 'prompts', 'realfake_push': None, 'realfake_merge': 'folder'}

def command(name):
    return getattr(importlib.import_module(f'realfake.{CLI_MODULES[name]}'), name)

def parser(name) -> argparse.ArgumentParser:
    if name == 'realfake_train':
        from realfake.train import train_parser
        return train_parser()
    return anno_parser(command(name).__wrapped__, prog=name)

def visible(p) -> dict:
    "{option name: action} of what `--help` shows (positionals under their own name)."
    out = {}
    for a in p._actions:
        if a.help == argparse.SUPPRESS or isinstance(a, argparse._HelpAction): continue
        name = a.option_strings[0].lstrip('-') if a.option_strings else a.dest
        out[name.replace('-', '_')] = a
    return out

@pytest.fixture(scope='module')
def options():
    return {name: visible(parser(name)) for name in CLI_MODULES}

def test_every_command_is_covered():
    assert set(INPUTS) == set(CLI_MODULES)

@pytest.mark.parametrize('name', sorted(CLI_MODULES))
def test_no_second_name_for_one_idea(options, name):
    second = {o: SYNONYMS[o] for o in options[name] if o in SYNONYMS}
    assert not second, f"{name} spells {', '.join(f'--{n} (say --{SYNONYMS[n]})' for n in second)}"

@pytest.mark.parametrize('name', sorted(CLI_MODULES))
def test_each_word_has_its_one_meaning(options, name):
    wrong = [o for o, a in options[name].items() if o in VOCABULARY and not (a.help or '').startswith(VOCABULARY[o])]
    assert not wrong, f"{name}: {wrong} do not start with the vocabulary's meaning"

@pytest.mark.parametrize('name', sorted(CLI_MODULES))
def test_out_says_file_or_folder(options, name):
    out = options[name].get('out')
    if out is None: pytest.skip(f'{name} makes nothing named by --out')
    assert 'file' in out.help or 'folder' in out.help, out.help

@pytest.mark.parametrize('name', sorted(CLI_MODULES))
def test_input_is_positional(options, name):
    want = INPUTS[name]
    positional = [o for o, a in options[name].items() if not a.option_strings]
    assert positional == ([want] if want else []), positional

@pytest.mark.parametrize('name', sorted(CLI_MODULES))
def test_one_seed_default(options, name):
    seed = options[name].get('seed')
    if seed is None: pytest.skip(f'{name} has no --seed')
    default = seed.default
    if name == 'realfake_train':
        from realfake.train import PRESETS
        default = {p.seed for p in PRESETS.values()}.pop()
    assert default == SEED

@pytest.mark.parametrize('name', sorted(n for n in CLI_MODULES if n != 'realfake_train'))
def test_old_spellings_are_accepted_and_hidden(name):
    f = command(name)
    sig = inspect.signature(f.__wrapped__.__wrapped__)
    for old, new in getattr(f.__wrapped__, 'renamed', {}).items():
        assert old in sig.parameters and new in sig.parameters, (old, new)
        assert old not in visible(parser(name))

def test_the_check_can_fail():
    p = argparse.ArgumentParser(); p.add_argument('--dest', help='folder'); p.add_argument('--seed', type=int, default=42, help='x')
    got = visible(p)
    assert 'dest' in SYNONYMS and 'dest' in got
    assert not got['seed'].help.startswith(VOCABULARY['seed'])
