"""Losses: IDEnNet's self-constrained identity loss, masked cross-entropy, center loss and its update rule."""

import pytest
import torch
import torch.nn.functional as F

from fer_models.losses import (
    CenterLoss,
    SelfConstrainedIdentityLoss,
    center_loss,
    masked_cross_entropy,
    self_constrained_identity_loss,
    update_centers_,
)
from tests.harness import assert_close, run_gradcheck


# Tiny tensors: one intra-op thread is faster than fanning out (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def naive_lid(logits, target, alpha=0.1, gamma=15.0):
    """Eq. 4 written literally, per sample (float64 only, moderate logits)."""
    p = torch.softmax(logits, 1)
    y = F.one_hot(target.clamp(min=0), logits.shape[1]).to(logits.dtype)
    per = -(alpha * (1 - p) ** gamma * y * torch.log(p)).sum(1)
    return torch.where(target >= 0, per, torch.zeros_like(per))


# ---------------------------------------------------------------- self-constrained identity loss


@pytest.mark.parametrize("gamma", [0.0, 2.0, 15.0])
def test_lid_matches_equation(gamma):
    logits = torch.randn(7, 5, dtype=torch.float64) * 3
    target = torch.tensor([0, 4, -1, 2, 2, -1, 1])
    ref = naive_lid(logits, target, 0.1, gamma)
    assert_close(
        self_constrained_identity_loss(logits, target, 0.1, gamma, reduction="none"), ref, "per-sample"
    )
    assert_close(
        self_constrained_identity_loss(logits, target, 0.1, gamma, reduction="sum"), ref.sum(), "sum"
    )
    # mean is over the 5 samples with a known identity, as F.cross_entropy(ignore_index=-1)
    assert_close(self_constrained_identity_loss(logits, target, 0.1, gamma), ref.sum() / 5, "mean")


def test_lid_gamma0_is_scaled_cross_entropy():
    logits, target = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, -1, 1])
    expected = 0.3 * F.cross_entropy(logits, target, ignore_index=-1)
    assert_close(self_constrained_identity_loss(logits, target, alpha=0.3, gamma=0.0), expected)


def test_lid_all_unknown_is_exactly_zero_with_zero_gradient():
    logits = (torch.randn(4, 6) * 5).requires_grad_()
    loss = self_constrained_identity_loss(logits, torch.full((4,), -1))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert SelfConstrainedIdentityLoss()(logits, torch.full((4,), -1)).item() == 0.0


def test_lid_unknown_samples_add_nothing():
    logits = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, -1, 3, -1, 0])
    self_constrained_identity_loss(logits, target, reduction="sum").backward()
    assert torch.equal(logits.grad[[1, 3]], torch.zeros(2, 6, dtype=torch.float64))
    assert logits.grad[[0, 2, 4]].abs().sum() > 0


def test_lid_stable_in_log_space():
    # p_t -> 1: 1 - p_t underflows in float32 (the literal formula gives 0 * log 1 or NaN gradients);
    # p_t -> 0: log p_t = -inf literally. The log-space form stays finite and agrees with float64.
    logits64 = torch.tensor(
        [[40.0, 0.0, -3.0], [-200.0, 100.0, 0.0], [1e4, -1e4, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64
    )
    target = torch.tensor([0, 0, 1, 2])
    ref = self_constrained_identity_loss(logits64, target, reduction="none")
    logits32 = logits64.float().requires_grad_()
    got = self_constrained_identity_loss(logits32, target, reduction="none")
    assert torch.isfinite(got).all()
    got.sum().backward()
    assert torch.isfinite(logits32.grad).all()
    assert_close(got, ref.float(), "stable L_id", rtol=1e-5, atol=1e-30)
    # the exact values: tiny but positive when p_t ~ 1, huge log-loss times (1 - 0)^15 when p_t ~ 0
    assert 0 < ref[0] < 1e-200 and abs(ref[1] - 0.1 * 300.0) < 1e-9 and abs(ref[2] - 0.1 * 2e4) < 1e-6


def test_lid_gradcheck():
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, -1, 1, 1])
    run_gradcheck(lambda z: self_constrained_identity_loss(z, target, 0.1, 15.0), [logits])
    run_gradcheck(lambda z: self_constrained_identity_loss(z, target, 0.5, 2.0, reduction="none"), [logits])


def test_lid_rejects_bad_targets():
    with pytest.raises(ValueError, match="target"):
        self_constrained_identity_loss(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        self_constrained_identity_loss(torch.randn(2, 1), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="logits"):
        self_constrained_identity_loss(torch.randn(2, 3, 1), torch.tensor([0, 0]))


# ---------------------------------------------------------------- masked cross-entropy


def test_masked_cross_entropy():
    logits, target = torch.randn(5, 4, requires_grad=True), torch.tensor([0, -1, 3, -1, 2])
    assert_close(masked_cross_entropy(logits, target), F.cross_entropy(logits[[0, 2, 4]], target[[0, 2, 4]]))
    zero = masked_cross_entropy(logits, torch.full((5,), -1))
    assert zero.item() == 0.0
    zero.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ---------------------------------------------------------------- center loss


def test_center_loss_value_and_gradient():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0, 2, 2, -1, 3, 0])
    known = t >= 0
    diff = x.detach()[known] - c[t[known]]
    assert_close(center_loss(x, t, c), 0.5 * diff.pow(2).sum() / 5)
    center_loss(x, t, c).backward()
    expected = torch.zeros_like(x)
    expected[known] = diff / 5  # dL/dx_i = (x_i - c_{y_i}) / n
    assert_close(x.grad, expected, "dL/dx")


def test_center_loss_gradcheck():
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([0, 2, -1, 2, 1])
    run_gradcheck(lambda f: center_loss(f, t, c), [x])
    module = CenterLoss(3, 4).double().eval()  # eval: the centers stay put across gradcheck's calls
    run_gradcheck(lambda f: module(f, t), [x])


def test_center_loss_centers_get_no_gradient():
    c = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    center_loss(x, torch.tensor([0, 1, 2, 0]), c).backward()
    assert c.grad is None and x.grad is not None


def test_center_update_rule():
    centers = torch.randn(4, 3, dtype=torch.float64)
    x = torch.randn(6, 3, dtype=torch.float64)
    t = torch.tensor([1, 1, 3, -1, 1, 3])
    alpha = 0.4
    expected = centers.clone()
    for j in range(4):  # Wen et al., eqs. 4-5, literally
        members = [i for i in range(6) if t[i] == j]
        delta = sum((centers[j] - x[i] for i in members), torch.zeros(3, dtype=torch.float64)) / (
            1 + len(members)
        )
        expected[j] = centers[j] - alpha * delta
    out = update_centers_(centers, x, t, alpha)
    assert out is centers
    assert_close(centers, expected, "centers")
    assert torch.equal(centers[[0, 2]], expected[[0, 2]])  # absent classes do not move


def test_center_loss_module_updates_only_in_training():
    m = CenterLoss(3, 2, alpha=0.5)
    assert "centers" in m.state_dict() and not list(m.parameters())
    x, t = torch.randn(4, 2), torch.tensor([0, 0, 2, -1])
    before = m.centers.clone()
    m.eval()
    m(x, t)
    assert torch.equal(m.centers, before)
    m.train()
    loss = m(x, t)
    assert_close(loss, center_loss(x, t, before))  # the loss uses the centers before the step
    expected = before.clone()
    update_centers_(expected, x, t, 0.5)
    assert_close(m.centers, expected)
    assert torch.equal(m.centers[1], before[1])
    m.update = False
    after = m.centers.clone()
    m(x, t)
    assert torch.equal(m.centers, after)
    # repeated updates pull a class center onto its (fixed) features' mean
    m.update = True
    x1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    for _ in range(60):
        m(x1, torch.tensor([1, 1]))
    assert_close(m.centers[1], x1.mean(0), atol=1e-5, rtol=0)


def test_center_loss_all_unknown_is_zero():
    m = CenterLoss(3, 2)
    before = m.centers.clone()
    x = torch.randn(2, 2, requires_grad=True)
    loss = m(x, torch.tensor([-1, -1]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(m.centers, before)
