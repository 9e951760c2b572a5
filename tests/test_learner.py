"Tests of realfake.learner: training metrics, checkpoint pointers, validation crops combined per image."
import json
import pytest
import torch

from realfake.core import RealfakeError
from realfake.learner import realfake_metrics, read_pointer, CropCombine


# ---------------------------------------------------------------- metrics
def test_metrics():
    ms = realfake_metrics()
    assert [m.name for m in ms] == ['accuracy', 'roc_auc', 'real_accuracy', 'fake_accuracy', 'balanced_accuracy', 'ap', 'eer',
                                    'tpr_at_1fpr', 'tpr_at_5fpr']
    probs = {'roc_auc', 'ap', 'eer', 'tpr_at_1fpr', 'tpr_at_5fpr'}
    logits = torch.tensor([[2., 0], [0, 2], [0, 2], [0, 2], [1, 0]])
    t = torch.tensor([0, 0, 1, 1, 1])
    for m in ms:
        m.reset(); m.accum_values(logits.softmax(1)[:, 1] if m.name in probs else logits.argmax(1), t)
    v = {m.name: m.value for m in ms}
    assert v['accuracy'] == pytest.approx(3 / 5) and v['real_accuracy'] == pytest.approx(1 / 2)
    assert v['fake_accuracy'] == pytest.approx(2 / 3)
    from sklearn.metrics import roc_auc_score
    assert v['roc_auc'] == pytest.approx(roc_auc_score(t.numpy(), logits.softmax(1)[:, 1].numpy()))
    assert v['balanced_accuracy'] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # a one-class validation set gives NaN, not an exception
    m = ms[1]; m.reset(); m.accum_values(torch.tensor([0.2, 0.9]), torch.tensor([1, 1]))
    assert m.value != m.value

def test_read_pointer_rejects_path_tricks(tmp_path):
    (tmp_path/'latest.json').write_text(json.dumps({'dir': '../../etc'}))
    with pytest.raises(RealfakeError, match='invalid pointer'): read_pointer(tmp_path)
    (tmp_path/'latest.json').write_text(json.dumps({'dir': 'epoch-002'}))
    assert read_pointer(tmp_path) == tmp_path/'epoch-002'
    assert read_pointer(tmp_path, 'best') is None

    (tmp_path/'latest.json').write_text('{"dir": ')                 # cut by a crash or a full disk
    with pytest.raises(RealfakeError, match='unreadable checkpoint pointer'): read_pointer(tmp_path)

def test_crop_combine_only_touches_validation_batches():
    "A batch with crop counts becomes one prediction per image (mean of its crops' logits); training batches pass through."
    from types import SimpleNamespace
    learn = SimpleNamespace(pred=torch.tensor([[0., 1.], [0., 3.], [2., 0.]]), yb=(torch.tensor([1, 0]), torch.tensor([2, 1])))
    cb = CropCombine('mean'); cb.learn = learn
    cb.after_pred()
    assert learn.pred.tolist() == [[0., 2.], [2., 0.]] and len(learn.yb) == 1 and learn.yb[0].tolist() == [1, 0]
    train = SimpleNamespace(pred=torch.ones(3, 2), yb=(torch.tensor([0, 1, 1]),))
    cb.learn = train; cb.after_pred()
    assert train.pred.shape == (3, 2)
