"""H-DPO loss against hand-computed values, DPO at alpha = 1, and the documented limit cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from hdpo_core.loss import hdpo_loss


def _t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_hand_computed_values():
    """Pairs chosen so the logit h = alpha*beta*Δpi - beta*Δref is 0, 1 and 2:

    pair 0: alpha=0.5 beta=0.2 Δpi=10 Δref=5 -> 1 - 1 = 0 -> log 2 = 0.693147
    pair 1: (same alpha/beta) Δpi=20, Δref=5 -> 2 - 1 = 1 -> log(1+e^-1) = 0.313262
    pair 2: Δpi=25, Δref=2.5 -> 2.5 - 0.5 = 2 -> log(1+e^-2) = 0.126928
    """
    pc, pr = _t(-10.0, -5.0, -5.0), _t(-20.0, -25.0, -30.0)
    rc, rr = _t(-5.0, -5.0, -7.5), _t(-10.0, -10.0, -10.0)
    out = hdpo_loss(pc, pr, rc, rr, beta=0.2, alpha=0.5)
    torch.testing.assert_close(out.logits, _t(0.0, 1.0, 2.0))
    torch.testing.assert_close(out.losses, _t(0.693147, 0.313262, 0.126928), atol=1e-6, rtol=0)
    # H-DPO implicit reward alpha*beta*logp - beta*logp_ref
    torch.testing.assert_close(out.chosen_rewards, 0.1 * pc - 0.2 * rc)
    torch.testing.assert_close(out.rejected_rewards, 0.1 * pr - 0.2 * rr)
    torch.testing.assert_close(out.dpo_chosen_rewards, 0.2 * (pc - rc))


def test_alpha_one_is_dpo_sigmoid_loss():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-torch.rand(64, generator=g, dtype=torch.float64) * 50 for _ in range(4))
    beta = 0.3
    dpo = -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))
    torch.testing.assert_close(hdpo_loss(pc, pr, rc, rr, beta=beta, alpha=1.0).losses, dpo, atol=1e-12, rtol=0)


@pytest.mark.parametrize("alpha", [0.5, 0.8, 1.0, 1.3])
def test_first_step_logit_is_alpha_minus_one_times_ref_margin(alpha):
    g = torch.Generator().manual_seed(1)
    c, r = -torch.rand(16, generator=g) * 30, -torch.rand(16, generator=g) * 30
    out = hdpo_loss(c, r, c, r, beta=0.1, alpha=alpha)
    torch.testing.assert_close(out.logits, (alpha - 1) * 0.1 * (c - r))
    expected = (-F.logsigmoid((alpha - 1) * 0.1 * (c - r))).mean()
    torch.testing.assert_close(out.losses.mean(), expected)


def test_alpha_below_one_raises_first_loss_when_reference_ranks_right():
    c, r = torch.tensor([-5.0]), torch.tensor([-9.0])  # Δref = 4 > 0
    losses = {a: hdpo_loss(c, r, c, r, beta=0.5, alpha=a).losses.item() for a in (0.8, 1.0, 1.2)}
    assert losses[0.8] > math.log(2) > losses[1.2]
    assert losses[1.0] == pytest.approx(math.log(2))


def test_gradient_sign_and_alpha_scaling():
    """d loss / d logp_pi(y_w) = -alpha*beta*sigmoid(-h): negative (raise chosen), scaled by alpha."""
    grads = {}
    for alpha in (0.5, 1.0):
        pc = torch.tensor([-4.0], requires_grad=True)
        pr = torch.tensor([-6.0], requires_grad=True)
        out = hdpo_loss(pc, pr, torch.tensor([-4.0]), torch.tensor([-6.0]), beta=0.1, alpha=alpha)
        out.losses.sum().backward()
        h = out.logits.item()
        assert pc.grad.item() == pytest.approx(-alpha * 0.1 * torch.sigmoid(torch.tensor(-h)).item(), rel=1e-6)
        assert pr.grad.item() == pytest.approx(-pc.grad.item(), rel=1e-6)
        grads[alpha] = (pc.grad.item(), h)
    assert grads[0.5][0] < 0 and grads[1.0][0] < 0


def test_reference_gets_no_gradient_and_sft_term():
    rc = torch.tensor([-3.0], requires_grad=True)
    pc = torch.tensor([-3.0], requires_grad=True)
    out = hdpo_loss(pc, torch.tensor([-5.0]), rc, torch.tensor([-5.0]), beta=0.1, alpha=0.9,
                    sft_weight=2.0, chosen_token_counts=torch.tensor([3.0]))
    base = hdpo_loss(pc, torch.tensor([-5.0]), rc, torch.tensor([-5.0]), beta=0.1, alpha=0.9).losses
    torch.testing.assert_close(out.losses - base, torch.tensor([2.0 * 3.0 / 3.0]))
    out.losses.sum().backward()
    assert rc.grad is None


def test_bad_arguments_raise():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        hdpo_loss(x, x, x, torch.zeros(2), beta=0.1, alpha=1.0)
    with pytest.raises(ValueError, match="beta"):
        hdpo_loss(x, x, x, x, beta=0.0, alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        hdpo_loss(x, x, x, x, beta=0.1, alpha=-1.0)
    with pytest.raises(ValueError, match="chosen_token_counts"):
        hdpo_loss(x, x, x, x, beta=0.1, alpha=1.0, sft_weight=1.0)
