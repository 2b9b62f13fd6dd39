"""kd.losses and kd.metrics against hand-computed small cases."""
import math

import pytest
import torch

from kd import losses, metrics


def test_soft_cross_entropy_hand_case():
    s = torch.tensor([[0.0, math.log(3.0)]])  # softmax -> [1/4, 3/4]
    t = torch.tensor([[math.log(2.0), 0.0]])  # softmax -> [2/3, 1/3]
    want = -(2 / 3 * math.log(1 / 4) + 1 / 3 * math.log(3 / 4))
    assert losses.soft_cross_entropy(s, t).item() == pytest.approx(want, rel=1e-6)


def test_soft_cross_entropy_temperature():
    s = torch.tensor([[0.0, 2 * math.log(3.0)]])  # at T=2: softmax -> [1/4, 3/4]
    t = torch.tensor([[2 * math.log(2.0), 0.0]])  # at T=2: [2/3, 1/3]
    want = -(2 / 3 * math.log(1 / 4) + 1 / 3 * math.log(3 / 4))
    assert losses.soft_cross_entropy(s, t, temperature=2.0).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="temperature=0"):
        losses.soft_cross_entropy(s, t, temperature=0)


def test_attention_mse_excludes_masked_pairs():
    # B=1, H=1, T=3, token 2 is padding: only the 2x2 block of real (query, key) pairs counts.
    s = torch.zeros(1, 1, 3, 3)
    t = torch.tensor([[[[1.0, 2.0, 100.0], [3.0, 4.0, 100.0], [100.0, 100.0, 100.0]]]])
    mask = torch.tensor([[1, 1, 0]])
    assert losses.attention_mse(s, t, mask).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_hidden_mse_excludes_padding():
    s = torch.zeros(1, 3, 2)
    t = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [50.0, 50.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert losses.hidden_mse(s, t, mask).item() == pytest.approx((1 + 1 + 4 + 0) / 4)


def test_kd_loss_uses_the_layer_map():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0]])
    t_hidden = tuple(torch.randn(1, 4, 2) for _ in range(4))  # embedding + 3 teacher layers
    t_scores = [torch.randn(1, 1, 4, 4) for _ in range(3)]
    layer_map = [2]  # the student's one layer mimics teacher layer 2
    s_hidden = (t_hidden[0].clone(), t_hidden[3].clone())  # exact matches under the map
    s_scores = [t_scores[2].clone()]
    logits = torch.tensor([[0.3, -0.2]])
    out = losses.kd_loss((logits, s_hidden, s_scores), (logits, t_hidden, t_scores), mask, layer_map, "classification", losses.KDWeights())
    assert out["attention"].item() == 0 and out["hidden"].item() == 0
    assert out["loss"].item() == pytest.approx(losses.soft_cross_entropy(logits, logits).item())
    # a wrong map is seen
    out = losses.kd_loss((logits, s_hidden, s_scores), (logits, t_hidden, t_scores), mask, [1], "classification", losses.KDWeights())
    assert out["attention"].item() > 0 and out["hidden"].item() > 0
    w = losses.KDWeights(logits=0.0, attention=2.0, hidden=0.5)
    out2 = losses.kd_loss((logits, s_hidden, s_scores), (logits, t_hidden, t_scores), mask, [1], "classification", w)
    assert out2["loss"].item() == pytest.approx(2 * out["attention"].item() + 0.5 * out["hidden"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="layer_map"):
        losses.kd_loss((logits, s_hidden, s_scores), (logits, t_hidden, t_scores), mask, [0, 1], "classification", w)


def test_regression_logit_term_is_mse():
    s, t = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [4.0]])
    h, a = (torch.zeros(2, 1, 1),), []
    out = losses.kd_loss((s, h, a), (t, h, a), torch.ones(2, 1), [], "regression", losses.KDWeights())
    assert out["logits"].item() == pytest.approx((1 + 4) / 2)


def test_metrics_hand_cases():
    pred, gold = torch.tensor([1, 1, 0, 0, 1]), torch.tensor([1, 0, 0, 1, 1])
    assert metrics.accuracy(pred, gold) == pytest.approx(3 / 5)
    # tp=2, fp=1, fn=1 -> f1 = 4/6
    assert metrics.f1_binary(pred, gold) == pytest.approx(4 / 6)
    # binary MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2*1-1*1)/sqrt(3*3*2*2)
    assert metrics.mcc(pred, gold) == pytest.approx(1 / 6)
    x, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 4.0, 9.0, 16.0])
    assert metrics.spearman(x, y) == pytest.approx(1.0)
    assert metrics.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    # ties get average ranks: ranks of [1, 2, 2, 3] are [0, 1.5, 1.5, 3]
    assert metrics._ranks(torch.tensor([1.0, 2.0, 2.0, 3.0])).tolist() == [0, 1.5, 1.5, 3]
