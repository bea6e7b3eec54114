"""The straight-through GSV masks: forward values and hand-computed gradients."""

import pytest
import torch

from guilomo.search.gsv import expert_gate, expert_mask, gsv_init, margin, rank_mask


def leaf(values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_expert_mask_forward_and_hand_computed_gradient():
    s = leaf([0.2, 0.5, 0.9, 0.1])  # k* = 2
    mask = expert_mask(s)
    assert mask.tolist() == [0.5, 0.5, 0.5, -1e4]
    mask.backward(torch.tensor([1.0, -2.0, 3.0, 5.0], dtype=torch.float64))
    # index k*=2 gets 1*0.2 + (-2)*0.5 + 3*0.9 = 1.9; every other index 0
    torch.testing.assert_close(s.grad, torch.tensor([0.0, 0.0, 1.9, 0.0], dtype=torch.float64))


def test_expert_mask_keeps_two_experts_when_argmax_is_zero():
    s = leaf([0.9, 0.5, 0.2, 0.1])  # argmax 0 -> k* = 1
    mask = expert_mask(s)
    assert mask.tolist() == [0.5, 0.5, -1e4, -1e4]
    mask.backward(torch.tensor([1.0, -2.0, 3.0, 5.0], dtype=torch.float64))
    # the credit lands on the effective boundary k*=1: 1*0.9 + (-2)*0.5 = -0.1
    torch.testing.assert_close(s.grad, torch.tensor([0.0, -0.1, 0.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "mode, floor, expected",
    [("soft", 1e-4, [2e-4, 3.8, -6e-4]), ("hard", 0.0, [0.0, 3.8, 0.0])],
)
def test_rank_mask_forward_and_hand_computed_gradient(mode, floor, expected):
    s = leaf([0.3, 0.8, 0.1])  # q* = 1
    mask = rank_mask(s, floor)
    assert mask.tolist() == [1.0, 1.0, floor]
    mask.backward(torch.tensor([2.0, 4.0, -6.0], dtype=torch.float64))
    # index q*=1: 2*0.3 + 4*0.8 = 3.8; others floor * delta_j
    torch.testing.assert_close(s.grad, torch.tensor(expected, dtype=torch.float64))


def test_gradient_continues_through_the_sigmoid():
    g = leaf([-0.4, 1.2, 0.3])
    s = torch.sigmoid(g)
    rank_mask(s).backward(torch.tensor([2.0, 4.0, -6.0], dtype=torch.float64))
    sv = s.detach()
    ds = torch.tensor([2e-4, 2 * sv[0] + 4 * sv[1], -6e-4], dtype=torch.float64)
    torch.testing.assert_close(g.grad, ds * sv * (1 - sv))


def test_batched_masks_equal_row_by_row():
    torch.manual_seed(0)
    s = torch.rand(5, 6, dtype=torch.float64, requires_grad=True)
    delta = torch.randn(5, 6, dtype=torch.float64)
    for fn in (expert_mask, rank_mask):
        (fn(s) * delta).sum().backward()
        batched, s.grad = s.grad.clone(), None
        for i in range(5):
            row = s.detach()[i].clone().requires_grad_(True)
            out = fn(row)
            assert torch.equal(out, fn(s.detach())[i])
            (out * delta[i]).sum().backward()
            torch.testing.assert_close(row.grad, batched[i])


def test_init_is_seeded_softmax_of_randn_and_margin():
    a = gsv_init(8, torch.Generator().manual_seed(3), shape=(2,))
    b = gsv_init(8, torch.Generator().manual_seed(3), shape=(2,))
    assert torch.equal(a, b) and a.shape == (2, 8)
    torch.testing.assert_close(a.sum(-1), torch.ones(2))
    torch.testing.assert_close(margin(torch.tensor([0.1, 0.7, 0.4])), torch.tensor(0.3))


def test_neighbour_credit_is_the_first_order_change_of_moving_the_boundary():
    s = leaf([0.3, 0.8, 0.1, 0.2])  # q* = 1
    mask = rank_mask(s, credit="neighbour")
    assert mask.tolist() == [1.0, 1.0, 1e-4, 1e-4]
    mask.backward(torch.tensor([2.0, 4.0, -6.0, 1.0], dtype=torch.float64))
    # C = cumsum(delta) = [2, 6, 0, 1]; grad_j = C_j - C_{q*} = C_j - 6
    torch.testing.assert_close(s.grad, torch.tensor([-4.0, 0.0, -6.0, -5.0], dtype=torch.float64))


def test_expert_gate_keeps_the_prefix_with_the_floor_above_it():
    s = leaf([0.9, 0.5, 0.2, 0.1])  # argmax 0 -> two experts kept, like the router mask
    assert expert_gate(s).tolist() == [1.0, 1.0, 0.0, 0.0]
    gate = expert_gate(s, "neighbour", floor=1e-4)
    assert gate.tolist() == [1.0, 1.0, 1e-4, 1e-4]
    gate.backward(torch.tensor([1.0, -2.0, 3.0, 5.0], dtype=torch.float64))
    # boundary k* = 1, C = [1, -1, 2, 7]: grad = C - C_1
    torch.testing.assert_close(s.grad, torch.tensor([2.0, 0.0, 3.0, 8.0], dtype=torch.float64))


def test_unknown_credit_is_refused():
    with pytest.raises(ValueError, match="credit='x'"):
        rank_mask(leaf([0.1, 0.2]), credit="x")
