"realfake_generate (realfake.generate) with a tiny random Stable Diffusion pipeline saved to a folder: offline, no weights downloaded."
import json, os, signal, subprocess, sys, time
import forks
import numpy as np
import pytest
import torch
from PIL import Image
from helpers import make_model_dir, cli_cmd, cli_env
from realfake.core import RealfakeError
from realfake.jobs import JobEnv, ledger_path
from realfake.metadata import read_metadata
from realfake.guidance import GuidanceError
from realfake.generate import generate, plan, image_seed, prompt_group, load_pipeline, read_prompts, KINDS

PROMPTS = ['a photo of a cat on a sofa', 'a red car in the rain', 'a bowl of fruit']


def _need_extra():
    pytest.importorskip('diffusers'); pytest.importorskip('transformers')


@pytest.fixture(scope='module')
def pipe_dir(tmp_path_factory):
    "A tiny random SD pipeline written with save_pretrained: the CLI loads it like a downloaded one."
    _need_extra()
    from realfake.guidance import tiny_sd_pipeline
    d = tmp_path_factory.mktemp('pipes')/'tiny-sd'
    tiny_sd_pipeline().save_pretrained(d)
    return d


@pytest.fixture(scope='module')
def pipe(pipe_dir):
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield load_pipeline(pipe_dir, device='cpu')
    torch.set_num_threads(n)


def _pixels(p): return np.asarray(Image.open(p).convert('RGB'), np.int16)


def test_metadata_and_grouping(pipe, tmp_path):
    out = tmp_path/'gen'
    s = generate(pipe, PROMPTS, out, n=2, bs=4, steps=3)
    assert (s['planned'], s['made'], s['merged']) == (6, 6, True)
    md = read_metadata(out/'metadata.jsonl')                    # the default, strict reader: no unknown fields
    assert len(md) == 6 and set(md.label) == {'fake'} and set(md.split) == {'test'} and set(md.source) == {'tiny-sd'}
    assert set(md.format) == {'PNG'} and set(md.width) == {32} and set(md.height) == {32}
    assert md.groupby('prompt').group.nunique().eq(1).all() and md.group.nunique() == 3      # one group per prompt
    assert dict(zip(md.prompt, md.group)) == {p: prompt_group(p) for p in PROMPTS}
    assert all(Image.open(p).format == 'PNG' for p in md.path)
    gen = [json.loads(l) for l in (out/'generation.jsonl').read_text().splitlines()]
    assert [(g['prompt'], g['i']) for g in gen] == [(p, i) for p in PROMPTS for i in range(2)]
    assert all(g['seed'] == image_seed(0, g['prompt'], g['i']) and g['kind'] == 'images' and g['steps'] == 3 for g in gen)
    run = json.loads((out/'run.json').read_text())
    assert run['pipeline'] == 'tiny-sd' and run['steps'] == 3 and run['base_seed'] == 0


def test_an_image_depends_only_on_its_prompt_number_and_seed(pipe, tmp_path):
    "Batch size, the other prompts and the process that makes it do not change an image; the base seed does."
    a = generate(pipe, PROMPTS[:2], tmp_path/'a', n=3, bs=6, steps=3)
    b = generate(pipe, PROMPTS[1:2], tmp_path/'b', n=3, bs=1, steps=3, env=JobEnv(1, 2))   # items 1 of 0..2: only i=1 of this prompt
    assert b['mine'] == 1 and not b['merged']
    it = plan(PROMPTS[1:2], 3)[1]
    diff = np.abs(_pixels(tmp_path/'a'/it.rel()) - _pixels(tmp_path/'b'/it.rel())).max()
    assert diff <= 1, diff                  # batched and single-image convolutions may round differently, by one level at most
    c = generate(pipe, PROMPTS[:2], tmp_path/'c', n=3, bs=6, steps=3, seed=1)
    assert a['merged'] and c['merged']
    assert np.abs(_pixels(tmp_path/'a'/it.rel()) - _pixels(tmp_path/'c'/it.rel())).mean() > 5


def test_processes_share_the_plan_and_the_last_one_merges(pipe, tmp_path):
    "Process 1 of 2, then process 0 (as torchrun would name them, passed as a JobEnv): each its half; the last merges."
    out = tmp_path/'gen'
    r1 = generate(pipe, PROMPTS, out, n=2, bs=2, steps=3, env=JobEnv(1, 2))
    assert r1['made'] == 3 and not r1['merged'] and not (out/'metadata.jsonl').exists()
    r0 = generate(pipe, PROMPTS, out, n=2, bs=2, steps=3, env=JobEnv(0, 2))
    assert r0['made'] == 3 and r0['merged']
    assert len(read_metadata(out/'metadata.jsonl')) == 6
    assert sorted(p.name for p in (out/'progress').iterdir()) == [ledger_path('.', 0).name, ledger_path('.', 1).name]


def test_refuses_other_settings_in_the_same_folder(pipe, tmp_path):
    generate(pipe, PROMPTS[:1], tmp_path/'gen', n=1, steps=3)
    with pytest.raises(RealfakeError, match='made with steps 3, not 4'): generate(pipe, PROMPTS[:1], tmp_path/'gen', n=1, steps=4)
    s = generate(pipe, PROMPTS[:2], tmp_path/'gen', n=2, steps=3)              # more prompts and images: fine
    assert s['made'] == 3 and s['merged']


@pytest.mark.slow
def test_guided_run_reports_the_judge_first(pipe, tmp_path, tmp_path_factory, one_torch_thread):
    """A guided run scored by an independently trained judge (another seed, other data) and by the guide, in that
    order. Measured here (4 pairs, 6 steps, PNG files): guide p(real) 0.05 -> 0.44, judge 0.08 -> 0.13, up on every pair."""
    from diffusion_helpers import brightness_model, judge_model
    guide, judge = brightness_model(tmp_path_factory), judge_model(tmp_path_factory)
    out = tmp_path/'gen'
    generate(pipe, PROMPTS[:2], out, n=2, bs=4, steps=6, scheduler='ddim')                  # an unguided run first ...
    s = generate(pipe, PROMPTS[:2], out, n=2, bs=4, steps=6, scheduler='ddim', guide=guide, guide_scale=0.1, judge=judge)
    assert s['made'] == 4                                                                    # ... whose images are reused
    rep = json.loads((out/'report.json').read_text())
    assert rep == s['report'] and list(rep)[:2] == ['judge', 'guide'] and rep['guide']['n'] == 4 and 'note' not in rep
    assert rep['guide']['p_real_guided'] > rep['guide']['p_real_unguided'] and rep['guide']['improved'] == 1.0
    assert rep['judge']['improved'] == 1.0 and 0 < rep['judge']['mean_difference'] < 0.25 * rep['guide']['mean_difference']
    assert 'only if trained on other data or with another seed' in rep['judge']['independence']
    rows = (out/'guidance.csv').read_text().splitlines()
    assert rows[0].split(',')[-4:] == ['judge_unguided', 'judge_guided', 'guide_unguided', 'guide_guided'] and len(rows) == 5
    assert Image.open(out/'comparison.png').size[0] > 100
    md = read_metadata(out/'metadata.jsonl')
    assert sorted(md.source.value_counts().items()) == [('tiny-sd', 4), ('tiny-sd+guided', 4)]
    gen = [json.loads(l) for l in (out/'generation.jsonl').read_text().splitlines()]
    assert {g['kind'] for g in gen} == set(KINDS) and all((g['guide'] is None) == (g['kind'] == 'images') for g in gen)
    assert all(g['guide']['scale'] == 0.1 for g in gen if g['guide'])
    for it in plan(PROMPTS[:2], 2):                         # same seeds: guidance changed the images, not their number
        assert (out/it.rel('images')).exists() and (out/it.rel('guided')).exists()


def test_ensemble_and_views_are_recorded(pipe, tmp_path, one_torch_thread):
    "An ensemble guide with random views: the settings in generation.jsonl, the report's guide is the ensemble."
    a, b = make_model_dir(tmp_path/'a', seed=1), make_model_dir(tmp_path/'b', seed=2)
    s = generate(pipe, PROMPTS[:1], tmp_path/'gen', n=1, steps=2, scheduler='ddim', guide=[a, b], guide_views=2,
                 guide_transforms=('crop', 'jpeg'))
    gen = [json.loads(l) for l in (tmp_path/'gen'/'generation.jsonl').read_text().splitlines()]
    g = next(r['guide'] for r in gen if r['kind'] == 'guided')
    assert g['model'] == [str(a), str(b)] and g['views'] == 2 and g['transforms'] == ['crop', 'jpeg']
    assert s['report']['guide']['model'] == [str(a), str(b)] and 'judge' not in s['report'] and 'no --judge' in s['report']['note']
    with pytest.raises(RealfakeError, match=r'made with guide.transforms .* \(and 1 more: guide.views\)'):             # other views are other settings
        generate(pipe, PROMPTS[:1], tmp_path/'gen', n=1, steps=2, scheduler='ddim', guide=[a, b], guide_views=3)


def test_a_missing_judge_fails_before_generating(pipe_dir, tiny_model_dir, tmp_path):
    from realfake.modeldir import ModelNotFound
    with pytest.raises(ModelNotFound, match='nowhere'):
        generate(pipe_dir, ['a cat'], tmp_path/'gen', n=1, steps=2, device='cpu', guide=tiny_model_dir, judge=tmp_path/'nowhere')
    assert not (tmp_path/'gen').exists()


@pytest.mark.slow
@pytest.mark.parametrize('how', ['api', 'api, ensemble', 'cli, ensemble'])
def test_a_guide_cannot_judge_itself(pipe_dir, tmp_path, how):
    "The guide's own weights (here a copy in another folder) are refused as the judge before anything is made."
    import shutil
    a, b = make_model_dir(tmp_path/'a', seed=1), make_model_dir(tmp_path/'b', seed=2)
    shutil.copytree(a, tmp_path/'a_copy')
    guide = [b, a] if 'ensemble' in how else a
    out = tmp_path/'gen'
    if how.startswith('api'):
        with pytest.raises(GuidanceError, match='not independent'):
            generate(pipe_dir, ['a cat'], out, n=1, steps=2, device='cpu', guide=guide, judge=tmp_path/'a_copy')
    else:
        (tmp_path/'p.txt').write_text('a cat\n')
        r = forks.run(cli_cmd('realfake_generate') + [str(tmp_path/'p.txt'), '--pipeline', str(pipe_dir), '--out', str(out),
                           '--per_prompt', '1', '--steps', '2', '--device', 'cpu', '--guide', ','.join(map(str, guide if isinstance(guide, list) else [guide])),
                           '--judge', str(tmp_path/'a_copy')], env=cli_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and 'not independent' in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (out/'images').exists()


def test_old_spellings_still_work_with_a_notice(pipe_dir, tmp_path, capsys):
    "--n (now --per_prompt) and --dtype (now --precision): accepted, each with a one-line notice."
    from realfake.generate import realfake_generate
    (tmp_path/'p.txt').write_text('a cat\n')
    s = realfake_generate(str(tmp_path/'p.txt'), pipeline=str(pipe_dir), out=str(tmp_path/'gen'), n='2', dtype='fp32', steps=2,
                          device='cpu', no_progress=True)
    err = capsys.readouterr().err
    assert '--n is now --per_prompt' in err and '--dtype is now --precision' in err
    assert s['planned'] == 2 and json.loads((tmp_path/'gen'/'run.json').read_text())['dtype'] == 'float32'


@pytest.mark.slow
def test_cli_resumes_after_sigkill(pipe_dir, pipe, tmp_path):
    "Kill the command while it writes; a rerun finishes the set, each image once, identical to an uninterrupted run."
    (tmp_path/'prompts.txt').write_text('\n'.join(PROMPTS[:2]) + '\n')
    out, n = tmp_path/'gen', 8
    args = [tmp_path/'prompts.txt', '--pipeline', pipe_dir, '--out', out, '--per_prompt', n, '--bs', 1, '--steps', 4, '--device', 'cpu']
    proc = forks.popen(cli_cmd('realfake_generate') + [str(a) for a in args], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    progress, t0 = ledger_path(out/'progress', 0), time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < 120:
        if progress.exists() and progress.read_bytes().count(b'\n') >= 3: break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL); _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f'the command ended before it could be killed: {err.decode()[-500:]}'
    assert not (out/'metadata.jsonl').exists()
    done_before = progress.read_bytes().count(b'\n')
    s = generate(pipe_dir, tmp_path/'prompts.txt', out, n=n, bs=1, steps=4, device='cpu')         # the same run, resumed
    assert (s['made'], s['skipped'], s['merged']) == (2 * n - done_before, done_before, True)
    md = read_metadata(out/'metadata.jsonl')
    assert len(md) == 2 * n and md.path.is_unique
    assert not list(out.rglob('*.tmp'))
    ref = generate(pipe, PROMPTS[:2], tmp_path/'ref', n=n, bs=8, steps=4)
    assert ref['merged']
    for it in plan(PROMPTS[:2], n):
        assert np.abs(_pixels(out/it.rel()) - _pixels(tmp_path/'ref'/it.rel())).max() <= 1


def test_cannot_guide_this_scheduler(pipe_dir, tiny_model_dir, tmp_path):
    "Refused before anything is made, with the reason and the way out."
    with pytest.raises(GuidanceError, match=r'PNDMScheduler.*--scheduler ddim'):
        generate(pipe_dir, ['a cat'], tmp_path/'gen', n=1, scheduler='pndm', guide=tiny_model_dir, device='cpu')
    assert not (tmp_path/'gen').exists()


@pytest.mark.slow
def test_without_the_extra(tmp_path):
    "`import realfake.generate` works without diffusers and transformers; the command says how to install them."
    (tmp_path/'prompts.txt').write_text('a cat\n')
    code = ("import sys; sys.modules['diffusers'] = None; sys.modules['transformers'] = None; "
            "from fastcore.script import _run_cli; import realfake.guidance; from realfake.generate import realfake_generate as f; "
            "sys.argv[0] = 'realfake_generate'; _run_cli(f.__wrapped__, False)")
    r = forks.run([sys.executable, '-c', code, str(tmp_path/'prompts.txt'), '--pipeline', str(tmp_path/'nowhere')],
                  env=cli_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "realfake_generate: error:" in r.stderr and "pip install 'realfake[generate]'" in r.stderr


@pytest.mark.parametrize('data,want', [
    (b'\xef\xbb\xbfa cat\na dog\na cat\n', ['a cat', 'a dog']),                       # a BOM: the repeat is still one
    (b'\xef\xbb\xbfa cat\r\na dog\r\n\r\na cat\r\n', ['a cat', 'a dog']),             # BOM and Windows line ends
    (b'\xef\xbb\xbfa cat\n\xef\xbb\xbfa dog\na cat', ['a cat', 'a dog']),             # two files concatenated
    (b'  \xef\xbb\xbf a cat \n', ['a cat']),
])
def test_prompts_file_byte_order_marks(tmp_path, data, want):
    "A UTF-8 BOM (Notepad writes one) is not part of the first prompt: a repeat of that prompt is recognised."
    (tmp_path/'p.txt').write_bytes(data)
    assert read_prompts(tmp_path/'p.txt') == want


def test_prompts_file_only_a_bom(tmp_path):
    (tmp_path/'p.txt').write_bytes(b'\xef\xbb\xbf\n')
    with pytest.raises(RealfakeError, match='no prompts'): read_prompts(tmp_path/'p.txt')


def test_prompts_file_errors(tmp_path):
    f = tmp_path/'p.txt'
    f.write_bytes(b'fine\n\xc3(\n')
    with pytest.raises(RealfakeError, match=r'p.txt:2: not UTF-8'): read_prompts(f)
    with pytest.raises(RealfakeError, match='cannot read'): read_prompts(tmp_path/'missing.txt')
