"""Malformed metadata: every defect gets a `MetadataError` naming the file, the line and the reason, or is handled as
documented (blank lines skipped, BOM and CRLF accepted, a missing final newline is fine)."""
from __future__ import annotations
import json, os
from pathlib import Path
import pytest

import pandas as pd
from realfake.metadata import read_metadata, write_metadata, validate_record, check_splits, MetadataError
from helpers import deadline

def rec(i=0, **kw):
    r = dict(path=f'img_{i}.jpg', label=('real', 'fake')[i % 2], split='train', source='s')
    r.update(kw)
    return {k: v for k, v in r.items() if v is not ...}

def jl(*recs) -> str: return ''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in recs)

def write(tmp_path, text, name='meta.jsonl', mode='w'):
    p = tmp_path / name
    if isinstance(text, bytes): p.write_bytes(text)
    else: p.write_text(text, encoding='utf-8', newline='')
    return p

def one_error(p, **kw) -> MetadataError:
    with pytest.raises(MetadataError) as ei: read_metadata(p, **kw)
    return ei.value

def check_err(e: MetadataError, p, line, field, *reason):
    "The error names the file, the line, the field and the reason (also in its message)."
    assert Path(e.file) == Path(p).absolute(), e
    assert e.line == line, f'line {e.line} != {line}: {e}'
    assert e.field == field, f'field {e.field!r} != {field!r}: {e}'
    assert any(r.lower() in e.reason.lower() for r in reason), f'reason {e.reason!r} lacks {reason}'
    s = str(e)
    assert str(Path(p).absolute()) in s and f':{line}:' in s and e.reason in s, s

# ---------------------------------------------------------------- each defect
def test_invalid_json(tmp_path):
    p = write(tmp_path, jl(rec(0), rec(1), '{"path": "x.jpg", "label": "real",', rec(3)))
    check_err(one_error(p), p, 3, '-', 'invalid json')
    df = read_metadata(p, errors='collect')
    assert list(df['path'].map(lambda s: Path(s).name)) == ['img_0.jpg', 'img_1.jpg', 'img_3.jpg']
    assert [e.line for e in df.attrs['errors']] == [3]

def test_not_an_object(tmp_path):
    p = write(tmp_path, jl(rec(0), '[1, 2]', 'null', '"a string"', rec(4)))
    df = read_metadata(p, errors='collect')
    assert [(e.line, e.field) for e in df.attrs['errors']] == [(2, '-'), (3, '-'), (4, '-')]
    assert all('object' in e.reason for e in df.attrs['errors'])
    assert len(df) == 2

@pytest.mark.parametrize('field', ['path', 'label', 'split', 'source'])
def test_missing_field(tmp_path, field):
    p = write(tmp_path, jl(rec(0), rec(1, **{field: ...})))
    check_err(one_error(p), p, 2, field, 'missing')

@pytest.mark.parametrize('field,value,reason', [('path', '', 'empty'), ('label', None, 'missing'), ('source', 3, 'string'),
                                               ('width', -5, 'positive'), ('width', 'wide', 'integer'), ('height', True, 'integer'),
                                               ('width', 1.5, 'integer'), ('prompt', 7, 'string')])
def test_wrong_type_or_value(tmp_path, field, value, reason):
    p = write(tmp_path, jl(rec(0), rec(1, **{field: value})))
    check_err(one_error(p), p, 2, field, reason)

def test_extra_field(tmp_path):
    p = write(tmp_path, jl(rec(0), rec(1, colour='blue')))
    check_err(one_error(p), p, 2, 'colour', 'unknown field')
    assert 'colour' not in read_metadata(p, extra='ignore').columns          # documented: extra='ignore' drops it
    assert read_metadata(p, extra='keep')['colour'].tolist()[1] == 'blue'   # extra='keep' keeps it

@pytest.mark.parametrize('field,value', [('label', 'Fake'), ('label', 'synthetic'), ('label', 1), ('split', 'val'),
                                         ('split', 'TRAIN'), ('split', 'validation')])
def test_unknown_label_or_split(tmp_path, field, value):
    p = write(tmp_path, jl(rec(0), rec(1), rec(2, **{field: value})))
    e = one_error(p)
    check_err(e, p, 3, field, 'not one of', 'must be a string')
    if isinstance(value, str): assert repr(value) in e.reason or value in e.reason

def test_duplicate_paths(tmp_path):
    p = write(tmp_path, jl(rec(0), rec(1), rec(2, path='img_0.jpg'), rec(3, path='img_1.jpg', label='real')))
    e = one_error(p)
    check_err(e, p, 3, 'path', 'duplicate', 'same file')
    assert 'line 1' in e.reason and e.more == 1, e
    df = read_metadata(p, errors='collect')
    assert len(df) == 2 and df['path'].is_unique                       # the first listing is kept
    assert [(x.line, 'line 2' in x.reason) for x in df.attrs['errors']] == [(3, False), (4, True)]

def test_duplicate_after_resolution(tmp_path):
    "'a.jpg' and '<folder>/a.jpg' are the same file: after resolve they must be reported as duplicates."
    p = write(tmp_path, jl(rec(0, path='a.jpg'), rec(1, path=str(tmp_path / 'a.jpg')), rec(2, path='./a.jpg')))
    df = read_metadata(p, errors='collect')
    assert len(df) == 1, f"one file listed 3 times (relative, absolute, ./) was read as {len(df)} records: {df['path'].tolist()}"
    assert [(e.line, e.field, 'duplicate' in e.reason or 'same file' in e.reason) for e in df.attrs['errors']] == [(2, 'path', True), (3, 'path', True)]

def test_nonexistent_paths(tmp_path):
    (tmp_path / 'img_0.jpg').write_bytes(b'x')
    p = write(tmp_path, jl(rec(0), rec(1), rec(2)))
    assert len(read_metadata(p)) == 3                                    # documented: not checked by default
    e = one_error(p, check_files=True)
    check_err(e, p, 2, 'path', 'does not exist')
    assert str(tmp_path / 'img_1.jpg') in e.reason and e.more == 1
    df = read_metadata(p, check_files=True, errors='collect')
    assert len(df) == 1 and [x.line for x in df.attrs['errors']] == [2, 3]

def test_relative_paths_resolve_against_the_metadata_folder(tmp_path, monkeypatch):
    sub = tmp_path / 'sub dir é'; sub.mkdir()
    (sub / 'img_0.jpg').write_bytes(b'x')
    p = write(sub, jl(rec(0)))
    monkeypatch.chdir(tmp_path)                                         # not the cwd
    df = read_metadata(p, check_files=True)
    assert df['path'][0] == str(sub / 'img_0.jpg')

@pytest.mark.parametrize('text', ['', '\n', '\n\n  \n', '\ufeff'])
def test_empty_file(tmp_path, text):
    p = write(tmp_path, text.encode('utf-8'))
    e = one_error(p)
    assert e.line == 0 and ('empty' in e.reason or 'no records' in e.reason) and str(p.absolute()) in str(e), e
    e2 = one_error(p, errors='collect')                                  # an empty file is never "0 valid records"
    assert e2.line == 0

def test_all_records_invalid(tmp_path):
    p = write(tmp_path, jl(rec(0, label='x'), rec(1, split='y')))
    assert one_error(p).line == 1
    df = read_metadata(p, errors='collect')
    assert len(df) == 0 and len(df.attrs['errors']) == 2

def test_no_trailing_newline(tmp_path):
    p = write(tmp_path, jl(rec(0), rec(1)) + json.dumps(rec(2)))
    df = read_metadata(p)
    assert len(df) == 3 and Path(df['path'][2]).name == 'img_2.jpg'

def test_windows_line_endings_and_bom(tmp_path):
    text = jl(rec(0), rec(1), rec(2, prompt='a cat\r\non a mat')).replace('\n', '\r\n')
    p = write(tmp_path, b'\xef\xbb\xbf' + text.encode('utf-8'))
    df = read_metadata(p)
    assert len(df) == 3
    for c in ('path', 'label', 'split', 'source'):
        assert not df[c].str.contains('\r').any(), f'{c} keeps a carriage return: {df[c].tolist()}'
    assert df['prompt'][2] == 'a cat\r\non a mat'                      # escaped CRLF inside a string is data
    (tmp_path / 'img_0.jpg').write_bytes(b'x')
    assert len(read_metadata(p, check_files=True, errors='collect')) == 1  # CR never glued to the path
    # line numbers count CRLF lines like LF lines
    p2 = write(tmp_path, jl(rec(0), rec(1, label='bad')).replace('\n', '\r\n'), 'crlf2.jsonl')
    check_err(one_error(p2), p2, 2, 'label', 'not one of')

def test_blank_lines_keep_line_numbers(tmp_path):
    p = write(tmp_path, jl(rec(0)) + '\n\n' + jl(rec(1, split='nope')))
    check_err(one_error(p), p, 4, 'split', 'not one of')

def test_non_utf8_line(tmp_path):
    data = jl(rec(0)).encode() + b'{"path": "caf\xe9.jpg", "label": "real", "split": "train", "source": "s"}\n' + jl(rec(2)).encode()
    p = write(tmp_path, data)
    e = one_error(p)
    assert e.line == 2, e
    assert len(read_metadata(p, errors='collect')) == 2

def test_huge_single_line(tmp_path):
    "A 100 MB line (e.g. a base64 image pasted in a prompt) is an error with its line number, without stopping the rest."
    big = json.dumps(rec(1, prompt='A' * (100 * 2**20)))
    p = tmp_path / 'big.jsonl'
    with open(p, 'w') as f: f.write(jl(rec(0)) + big + '\n' + jl(rec(2)))
    assert p.stat().st_size > 100 * 2**20
    with deadline(120, 'rejecting a 100 MB line'):   # a hang guard, not a timing: the reader must not stall on it
        e = one_error(p)
        check_err(e, p, 2, '-', 'long', 'mib', 'limit', 'too large')
        df = read_metadata(p, errors='collect')
    assert len(df) == 2 and [x.line for x in df.attrs['errors']] == [2]

def test_huge_single_line_no_newline(tmp_path):
    "The whole file is one 100 MB line without a newline (not JSONL at all)."
    p = tmp_path / 'one.jsonl'
    with open(p, 'w') as f: f.write('[' + '0,' * (50 * 2**20) + '0]')
    e = one_error(p)
    assert e.line == 1 and str(p.absolute()) in str(e), e

def test_metadata_path_is_a_folder_or_missing(tmp_path):
    e = one_error(tmp_path)
    assert str(tmp_path) in str(e) and e.reason, e
    e = one_error(tmp_path / 'nope.jsonl')
    assert 'nope.jsonl' in str(e) and e.line == 0, e

def test_error_is_picklable_and_counts_more(tmp_path):
    "Errors cross process boundaries (DataLoader workers, multiprocessing) intact."
    import pickle
    p = write(tmp_path, jl(rec(0, label='a'), rec(1, label='b'), rec(2, label='c')))
    e = one_error(p)
    assert e.more == 2 and '2 more' in str(e)
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.file, e2.line, e2.field, e2.reason, str(e2)) == (e.file, e.line, e.field, e.reason, str(e))

def test_validate_record():
    assert validate_record(rec(0))['group'] is None
    with pytest.raises(MetadataError) as ei: validate_record(rec(0, label='maybe'), file='x.jsonl', line=7)
    assert str(ei.value).startswith('x.jsonl:7: label:')
    with pytest.raises(MetadataError): validate_record(['not', 'a', 'dict'])

def test_write_refuses_bad_records_and_existing_file(tmp_path):
    p = tmp_path / 'out.jsonl'
    with pytest.raises(MetadataError): write_metadata([rec(0), rec(1, split='nope')], p)
    assert not p.exists(), 'a rejected write must not leave a file'
    write_metadata([rec(0), rec(1)], p)
    with pytest.raises(FileExistsError): write_metadata([rec(0)], p)
    assert len(read_metadata(p)) == 2
    assert not [f for f in tmp_path.iterdir() if f.name != 'out.jsonl'], 'temp files left behind'

def test_roundtrip_odd_names(tmp_path):
    names = ['name with spaces.jpg', 'ünïcødé 日本語.png', 'quote"and\\backslash.jpg', 'comma,semicolon;.jpg', 'tab\there.png']
    p = write_metadata([rec(i, path=n) for i, n in enumerate(names)], tmp_path / 'm.jsonl')
    assert [Path(x).name for x in read_metadata(p)['path']] == names

def test_nul_in_path(tmp_path):
    "A NUL byte is valid JSON but no file can have it: rejected with the line and field, not left to crash the loader."
    p = write(tmp_path, jl(rec(0), rec(1, path='bad\u0000name.jpg')))
    check_err(one_error(p), p, 2, 'path', 'nul', 'null', 'invalid')

# ---------------------------------------------------------------- issue 14: no tracebacks, plain messages, any file name
def test_duplicate_key_in_one_record(tmp_path):
    "JSON parsers keep the last of two equal keys; a metadata line must not silently change its path that way."
    p = write(tmp_path, jl(rec(0), '{"path": "a.jpg", "path": "b.jpg", "label": "real", "split": "train", "source": "s"}', rec(2)))
    check_err(one_error(p), p, 2, 'path', 'given twice')
    df = read_metadata(p, errors='collect')
    assert [Path(x).name for x in df['path']] == ['img_0.jpg', 'img_2.jpg'] and [e.line for e in df.attrs['errors']] == [2]
    # a "key": inside a text is not a duplicate key
    q = write(tmp_path, jl(rec(0, prompt='the "path": is "label": here')), 'ok.jsonl')
    assert read_metadata(q)['prompt'][0] == 'the "path": is "label": here'

@pytest.mark.parametrize('value', ['99999999999999999999', '18446744073709551615', '9223372036854775808', '-99999999999999999999',
                                   '1e300', '2147483648'])
def test_integers_beyond_64_bits_are_errors_not_tracebacks(tmp_path, value):
    p = write(tmp_path, jl(rec(0)) + '{"path": "x.jpg", "label": "real", "split": "train", "source": "s", "width": %s}\n' % value)
    e = one_error(p)
    check_err(e, p, 2, 'width', 'at most', 'positive', 'integer')
    assert 'np.' not in str(e) and 'numpy' not in str(e), e
    df = read_metadata(p, errors='collect')
    assert len(df) == 1 and str(df['width'].dtype) == 'Int64'
    with pytest.raises(MetadataError, match='width'):
        write_metadata([rec(0, width=int(float(value)) if 'e' in value else int(value))], tmp_path / 'w.jsonl')

@pytest.mark.parametrize('field,value,shown', [('width', 5.5, 'got 5.5'), ('quality', 101, 'at most 100, got 101'),
                                               ('quality', 0, 'positive, got 0'), ('quality', 'high', "integer, got 'high'")])
def test_messages_show_plain_numbers(tmp_path, field, value, shown):
    p = write(tmp_path, jl(rec(0), rec(1, **{field: value})))
    e = one_error(p)
    check_err(e, p, 2, field, shown)
    assert 'np.float64' not in str(e) and 'np.int64' not in str(e), e

def test_quality_field_round_trips(tmp_path):
    p = write_metadata([rec(0, quality=75, format='JPEG'), rec(1, format='PNG')], tmp_path / 'm.jsonl')
    df = read_metadata(p)
    assert df['quality'].tolist()[0] == 75 and pd.isna(df['quality'].tolist()[1]) and str(df['quality'].dtype) == 'Int64'

def test_metadata_without_a_needed_split(tmp_path):
    p = write(tmp_path, jl(rec(0), rec(1), rec(2, split='test')))
    with pytest.raises(MetadataError) as ei: check_splits(read_metadata(p))
    e = ei.value
    assert (Path(e.file), e.line, e.field) == (p.absolute(), 0, 'split') and "'valid'" in e.reason and 'train 2, test 1' in e.reason, e
    assert len(check_splits(read_metadata(p), ['train', 'test'])) == 3

def test_latin1_file_name_round_trips(tmp_path):
    "A file name that is not UTF-8 is written escaped (orjson refuses lone surrogates) and read back as the same name."
    name = os.fsdecode(b'caf\xe9.jpg')
    (tmp_path / name).write_bytes(b'x')
    p = write_metadata([rec(0, path=str(tmp_path / name)), rec(1, path=str(tmp_path / 'a\\xe9.jpg'))], tmp_path / 'm.jsonl', relative_to=tmp_path)
    assert p.read_bytes().decode('utf-8').splitlines()[0].startswith('{"path":"caf\\\\xe9.jpg"')
    df = read_metadata(p, check_files=True, errors='collect')
    assert df['path'][0] == str(tmp_path / name) and os.path.exists(df['path'][0])
    assert [e.line for e in df.attrs['errors']] == [2]                                 # the other one does not exist ...
    assert 'a\\\\xe9.jpg' in str(df.attrs['errors'][0])                               # ... and is named unambiguously
    with pytest.raises(MetadataError, match=r"1: source: text holds bytes that are not UTF-8: 'caf\\xe9.jpg'"):
        write_metadata([rec(0, source=name)], tmp_path / 'bad.jsonl')
    assert not (tmp_path / 'bad.jsonl').exists()
