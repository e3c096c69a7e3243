"""The training pieces sft.py and rl.py share (issue 24 item 7): one optimizer (one meaning of --weight_decay), one
divergence guard, one chunked lm-head, one peak-memory metric. Tiny CPU tensors and the tiny model."""
import pytest
import torch
import torch.nn as nn

import rl
import utils


def test_weight_decay_skips_norms_and_biases():
    """--weight_decay (sft and rl alike) decays matrices only: after one step with zero gradients, a linear weight
    has shrunk by lr * wd, its bias and a norm weight are untouched (rl.py decayed those too before)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = utils.build_optimizer(model, lr=0.1, weight_decay=0.5, betas=(0.9, 0.95))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["0.weight"].detach(), before["0.weight"] * (1 - 0.1 * 0.5))
    for name in ("0.bias", "1.weight", "1.bias"):
        assert torch.equal(after[name].detach(), before[name]), name
    assert [g["betas"] for g in opt.param_groups] == [(0.9, 0.95)] * 2
    assert not any(g["fused"] for g in opt.param_groups)  # CPU: the fused kernel is CUDA only


def test_check_finite_names_the_step():
    utils.check_finite(3, 1.5, 0.2)
    for loss, gn in ((float("nan"), 1.0), (1.0, float("inf"))):
        with pytest.raises(FloatingPointError, match="step 3: non-finite loss .* before the optimizer step"):
            utils.check_finite(3, loss, gn)


def test_rl_step_with_nan_loss_stops_before_the_weights_change(tiny_model):
    """rl.train_on_batch now has sft's guard: a NaN advantage gives a NaN loss and gradient; the run stops with
    FloatingPointError and the weights stay as they were (without the guard SGD would have written NaN into them)."""
    from transformers import AutoModelForCausalLM
    utils.register_attention()
    model = rl.PolicyLM(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32,
                                                             attn_implementation=utils.PACKED_ATTENTION))
    model.set_requires_gradient_sync = lambda flag: None  # FSDP2's method; the plain module has none
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = rl.build_batch([[5, 6], [7, 8, 9]], [[10, 11], [12]], pad_id=0)
    mask = rl.length_mask(batch["lengths"], 2)
    old = rl.batch_logprobs(model, batch, 2)
    cfg = rl.RLConfig(model="-", prompts="-", out="-", micro_batch_size=1)
    with pytest.raises(FloatingPointError, match="step 7: non-finite"):
        rl.train_on_batch(model, torch.optim.SGD(model.parameters(), lr=1.0), batch,
                          torch.tensor([float("nan"), 1.0]), old, None, mask, cfg, step=7)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_lm_head_without_entropy_computes_none_and_matches_with_it():
    """sft.py's call (entropy=False) gives the same log-probs as rl.py's (entropy=True), and no entropy."""
    g = torch.Generator().manual_seed(0)
    h, w, t = torch.randn(9, 5, generator=g), torch.randn(11, 5, generator=g), torch.randint(0, 11, (9,), generator=g)
    lp, ent = utils.chunked_token_logprobs(h, w, t, chunk_size=4)
    lp2, ent2 = utils.chunked_token_logprobs(h, w, t, chunk_size=4, entropy=True)
    assert ent is None and ent2.shape == (9,) and torch.equal(lp, lp2)
    empty = utils.chunked_token_logprobs(h[:0], w, t[:0], entropy=True)
    assert empty[0].shape == empty[1].shape == (0,)


def test_peak_memory_on_cpu_is_the_process_high_water_mark():
    import resource
    assert utils.peak_memory_gb(torch.device("cpu")) == resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
