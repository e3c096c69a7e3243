"""GRPO math on tiny tensors against hand-computed values, plus end-to-end runs of rl.py on the tiny model."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

import rl
import utils

# ---- advantages --------------------------------------------------------------------------------------------------------


def test_group_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # two groups of 4
    a = rl.group_advantages(r, 4, scale_std=True, eps=1e-6)
    std = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    assert torch.allclose(a[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-6))
    assert torch.all(a[4:] == 0)  # equal rewards: no signal, no NaN
    drgrpo = rl.group_advantages(r, 4, scale_std=False)
    assert torch.allclose(drgrpo, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))


def test_zero_variance_groups():
    r = torch.tensor([1.0, 1.0, 0.3, 0.4, 0.0, 0.0])
    assert rl.zero_variance_groups(r, 2).tolist() == [True, False, True]


# ---- masks -------------------------------------------------------------------------------------------------------------

def test_length_mask_keeps_eos_when_pad_equals_eos():
    eos = pad = 7
    tokens = torch.tensor([[3, 4, eos, pad, pad], [5, eos, pad, pad, pad], [1, 2, 3, 4, 5]])
    lengths = torch.tensor([3, 2, 5])  # EOS included; third one truncated
    m = rl.length_mask(lengths, 5)
    assert m.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert (tokens != pad).float().sum() < m.sum()  # an id-based mask would drop the EOS tokens


def test_completion_length():
    assert rl.completion_length([5, 6, 2, 2, 2], {2}) == (3, False)
    assert rl.completion_length([5, 6, 7], {2}) == (3, True)


# ---- policy loss, KL, aggregation --------------------------------------------------------------------------------------

def test_clipped_policy_loss_hand_computed():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1 (old logp = 0)
    old = torch.zeros(1, 3)
    loss, clipped = rl.clipped_policy_loss(logp, old, torch.tensor([1.0]), 0.2, 0.28)
    # A > 0: loss = -min(r, clip(r)) -> -1.28, -0.5, -1.1 ; clipped only where the clip binds (r = 1.5)
    assert torch.allclose(loss, torch.tensor([[-1.28, -0.5, -1.1]]))
    assert clipped.tolist() == [[True, False, False]]
    loss, clipped = rl.clipped_policy_loss(logp, old, torch.tensor([-2.0]), 0.2, 0.28)
    # A < 0: loss = max(2r, 2clip(r)) -> 3.0, 1.6, 2.2 ; clip binds at r = 0.5
    assert torch.allclose(loss, torch.tensor([[3.0, 1.6, 2.2]]))
    assert clipped.tolist() == [[False, True, False]]


def test_kl_k3_hand_computed():
    logp = torch.tensor([[0.0, math.log(0.5)]])
    ref = torch.tensor([[0.0, math.log(0.25)]])
    kl = rl.kl_k3(logp, ref)
    assert kl[0, 0] == 0
    assert kl[0, 1].item() == pytest.approx(0.5 - math.log(0.5) - 1)


LOSS = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0], [5.0, 6.0, 9.0, 9.0]])
MASK = rl.length_mask(torch.tensor([3, 1, 2]), 4)


def test_aggregation_hand_computed():
    assert rl.aggregate_loss(LOSS, MASK, "token_mean").item() == pytest.approx(21 / 6)
    assert rl.aggregate_loss(LOSS, MASK, "seq_mean").item() == pytest.approx((2 + 4 + 5.5) / 3)
    assert rl.aggregate_loss(LOSS, MASK, "constant", constant=8).item() == pytest.approx(21 / (3 * 8))
    with pytest.raises(ValueError):
        rl.aggregate_loss(LOSS, MASK, "nope")


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean", "constant"])
def test_micro_batches_sum_to_the_full_batch_loss(mode):
    """Token-mean etc. over the global batch: summing micro-batch losses with global normalisers equals the loss on
    the concatenated batch (what the trainer does across micro-batches and ranks)."""
    full = rl.aggregate_loss(LOSS, MASK, mode, constant=4)
    parts = sum(rl.aggregate_loss(LOSS[i:i + 1], MASK[i:i + 1], mode, n_tokens_global=MASK.sum(), n_seqs_global=3,
                                  constant=4) for i in range(3))
    assert parts.item() == pytest.approx(full.item())
    cat = (LOSS * MASK).sum() / MASK.sum()
    if mode == "token_mean":
        assert full.item() == pytest.approx(cat.item())


def test_token_logprobs_and_entropy():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    logp, ent = rl.token_logprobs(logits, torch.tensor([[1]]))
    assert logp.item() == pytest.approx(math.log(0.25))
    assert ent.item() == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


def test_build_batch_positions(tiny_model):
    """completion_logprobs reads the logits that predict each completion token (start - 1 + j)."""
    model = rl.load_model(tiny_model, "float32")
    p, c = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]]
    b = rl.build_batch(p, c, pad_id=0)
    logp, _ = rl.completion_logprobs(model, b, slice(0, 2))
    for i in range(2):
        ids = torch.tensor([p[i] + c[i]])
        ref = torch.log_softmax(model(input_ids=ids).logits[0], -1)
        for j, t in enumerate(c[i]):
            assert logp[i, j].item() == pytest.approx(ref[len(p[i]) - 1 + j, t].item(), abs=1e-5)


def test_parse_weights():
    assert rl.parse_weights("") is None
    assert rl.parse_weights("charge=1,format=0") == {"charge": 1.0, "format": 0.0}
    with pytest.raises(ValueError):
        rl.parse_weights("bogus=1")
