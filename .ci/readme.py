"""README.md is made from nbs/index.ipynb (nbdev's readme_nb), without quarto: the markdown cells, in order.
`python .ci/readme.py` writes it; `python .ci/readme.py --check` fails if README.md is out of date."""
import json, sys
from pathlib import Path
root = Path(__file__).resolve().parents[1]
nb = json.loads((root/'nbs'/'index.ipynb').read_text(encoding='utf-8'))
text = '\n\n'.join(''.join(c['source']).strip() for c in nb['cells'] if c['cell_type'] == 'markdown') + '\n'
text = '<!-- made from nbs/index.ipynb by .ci/readme.py: edit the notebook, not this file -->\n\n' + text
readme = root/'README.md'
if '--check' in sys.argv:
    if readme.read_text(encoding='utf-8') != text: sys.exit('FAIL: README.md is out of date: run python .ci/readme.py and commit')
    print('README.md matches nbs/index.ipynb')
else: readme.write_text(text, encoding='utf-8')
