"""Bench 3, training overhead: one epoch of `realfake.learner.create_learner(...).fit_one_cycle` against a plain PyTorch
loop doing the same work: the same timm convnext_atto (same initial weights), the same batches preloaded in memory,
AdamW (lr 1e-3, wd 0.05 decoupled, none on norm/bias params, eps 1e-5, like fastai), OneCycleLR, then a validation
pass with loss, accuracy and ROC AUC. CPU. Goal: realfake / plain <= 1.05.

    .venv/bin/python bench/train_overhead.py            # ~1.5 min on 2 cores (quiet machine)
    .venv/bin/python bench/train_overhead.py --quick    # smoke run
"""
from __future__ import annotations
import os, sys, time, io, contextlib, warnings
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C

ARCH = 'convnext_atto'

def make_batches(n:int, bs:int, size:int, seed:int):
    import torch
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, size, size, generator=g), torch.randint(0, 2, (bs,), generator=g)) for _ in range(n)]

def preloaded_dls(train, valid):
    "fastai DataLoaders that hand out the given in-memory batches as they are (no collation, no transforms)."
    from fastai.data.load import DataLoader
    from fastai.data.core import DataLoaders
    from fastai.data.transforms import CategoryMap
    from realfake.core import LABELS
    class Preloaded(DataLoader):
        def __init__(self, batches):
            super().__init__(batches, bs=None, shuffle=False, num_workers=0)
            self.batches = batches
        def __iter__(self):
            self.before_iter()
            for b in self.batches: yield b
            self.after_iter()
        def __len__(self): return len(self.batches)
    tr, va = Preloaded(train), Preloaded(valid)
    for dl in (tr, va): dl.c, dl.vocab = 2, CategoryMap(LABELS)
    dls = DataLoaders(tr, va, device='cpu')
    dls.c, dls.vocab = 2, CategoryMap(LABELS)
    return dls

def param_groups(model, wd):
    decay, no = [], []
    for n, p in model.named_parameters():
        (no if p.ndim <= 1 else decay).append(p)
    return [dict(params=decay, weight_decay=wd), dict(params=no, weight_decay=0.)]

def plain_fit(model, train, valid, lr=1e-3, wd=0.05):
    "The plain PyTorch loop: returns (first batch loss, valid loss, accuracy, auc)."
    import torch, torch.nn.functional as F
    from sklearn.metrics import roc_auc_score
    opt = torch.optim.AdamW(param_groups(model, wd), lr=lr, betas=(0.95, 0.99), eps=1e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=len(train), pct_start=0.25, div_factor=25.,
                                                final_div_factor=1e5, base_momentum=0.85, max_momentum=0.95)
    model.train()
    first = None
    for xb, yb in train:
        loss = F.cross_entropy(model(xb), yb)
        loss.backward(); opt.step(); sched.step(); opt.zero_grad()
        if first is None: first = loss.item()
    model.eval()
    losses, probs, ys = [], [], []
    with torch.no_grad():
        for xb, yb in valid:
            out = model(xb)
            losses.append(F.cross_entropy(out, yb).item() * len(yb)); probs.append(out.softmax(1)[:, 1]); ys.append(yb)
    p, y = torch.cat(probs).numpy(), torch.cat(ys).numpy()
    return first, sum(losses) / len(y), float(((p > .5) == y).mean()), float(roc_auc_score(y, p)) if len(set(y)) > 1 else float('nan')

def main():
    pa = C.parser(__doc__.split('\n')[0], reps=3)
    pa.add_argument('--size', type=int, default=224, help='image size (default 224)')
    pa.add_argument('--bs', type=int, default=32, help='batch size (default 32)')
    pa.add_argument('--batches', type=int, default=10, help='training batches per epoch (default 10)')
    args = pa.parse_args()
    warnings.filterwarnings('ignore')
    import torch
    if args.quick: args.size, args.bs, args.batches = 64, 8, 2
    reps = 1 if args.quick else args.reps
    C.header(f'train_overhead: realfake learner vs plain PyTorch loop ({ARCH}, CPU, bs={args.bs}, {args.size}px, '
             f'{args.batches} train + 2 valid batches)')
    if not C.module_available('learner'): sys.exit('needs realfake.learner')
    from realfake.learner import create_learner
    from realfake.preprocess import Preprocess
    from realfake.modeldir import build_network
    train = make_batches(args.batches, args.bs, args.size, 0)
    valid = make_batches(2, args.bs, args.size, 1)
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in build_network(ARCH).state_dict().items()}

    state = {}
    def rf():
        learn = state['learn']
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            learn.fit_one_cycle(1, lr_max=1e-3)
    def setup_rf():
        from fastai.losses import CrossEntropyLossFlat   # what fastai infers from get_dls's CategoryBlock
        learn = create_learner(preloaded_dls(train, valid), Preprocess(size=args.size), arch=ARCH, pretrained=False, path='/tmp',
                               loss_func=CrossEntropyLossFlat())
        learn.model.load_state_dict(init)
        state['learn'] = learn
        torch.manual_seed(1)   # the same dropout masks on both sides
    def plain():
        state['plain'] = plain_fit(state['model'], train, valid)
    def setup_plain():
        m = build_network(ARCH); m.load_state_dict(init); state['model'] = m
        torch.manual_seed(1)

    # interleave the two sides; setup (model / learner creation) is untimed
    ts = {'plain': [], 'realfake': []}
    cs = {'plain': [], 'realfake': []}
    firsts = {}
    for r in range(reps + 1):
        for k, (s, f) in {'plain': (setup_plain, plain), 'realfake': (setup_rf, rf)}.items():
            s(); c = time.process_time(); t = time.perf_counter(); f(); dt = time.perf_counter() - t
            if r: ts[k].append(dt); cs[k].append(time.process_time() - c)
        firsts['plain'] = state['plain'][0]
        firsts['realfake'] = float(state['learn'].recorder.losses[0])
        # same model, same first batch, same weights -> same first loss
        assert abs(firsts['plain'] - firsts['realfake']) < 1e-3 * max(1, abs(firsts['plain'])), firsts
    tp, tr = C.med(ts['plain']), C.med(ts['realfake'])
    cp, cr = C.med(cs['plain']), C.med(cs['realfake'])
    nb = args.batches
    rec = state['learn'].recorder
    names = list(rec.metric_names[1:-1])
    vals = dict(zip(names, rec.values[-1])) if rec.values else {}
    rows = [[f"1 epoch: {nb} x {args.bs} train + 2 x {args.bs} valid", f"{tp:.2f} s {C.spread(ts['plain'])}",
             f"{tr:.2f} s {C.spread(ts['realfake'])}", f"**{tr / tp:.3f}**", f"<=1.05 {'met' if tr / tp <= 1.05 else 'NOT met'}",
             f"{cr / cp:.3f}", f"{cp:.1f} s / {cr:.1f} s", f"{(tr - tp) / (nb + 2) * 1e3:+.0f} ms/batch"]]
    print(C.table(rows, ['work', 'plain PyTorch', 'realfake learner', 'realfake/plain (wall)', 'goal',
                         'realfake/plain (CPU time)', 'CPU s plain / realfake', 'wall difference']))
    print(f"\n{reps} interleaved repetitions after 1 warm-up, fresh model/learner each (untimed); medians. CPU time = user+sys"
          " of this process (all torch threads): the work done, less sensitive to other jobs than wall-clock.")
    print(f"first-batch loss plain {firsts['plain']:.5f} vs realfake {firsts['realfake']:.5f} (same model, weights and batch);"
          f" final plain (valid loss, acc, auc) = {tuple(round(v, 4) for v in state['plain'][1:])}, realfake = {vals}")
    if C.load_note(): print(C.load_note())

if __name__ == '__main__': main()
