"""Tests for sft.py and utils section 9: leak-free packing, chunked loss, loss normalisation, 2 ranks == 1 process,
two "nodes" over loopback, exact resume after SIGKILL (mid-training and mid-save), export loads and generates.

Packed stages are written here directly (prepare_data.write_packed_stage) from prepare_data.encode_chat on
synthetic conversations, not by a prepare_data.py run."""
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prepare_data
import sft
import utils
from conftest import cpu_env, kill_when, requires_cuda
from utils import IGNORE_INDEX

REPO = Path(__file__).resolve().parents[1]
SEQ_LEN = 256
WORDS = ["盗窃", "诈骗", "被告人", "张某", "刑法", "第二百六十四条", "判处", "有期徒刑", "一年", "罚金", "法院", "认为",
         "事实", "清楚", "证据", "确实", "充分", "本院", "依照", "规定"]


# ---------------------------------------------------------------- helpers: synthetic conversations -> packed stage
def conversations(n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        msgs = [{"role": "user", "content": "".join(rng.choices(WORDS, k=rng.randint(1, 4)))},
                {"role": "assistant", "content": "".join(rng.choices(WORDS, k=rng.randint(1, 5)))}]
        if rng.random() < 0.3:
            msgs += [{"role": "user", "content": "".join(rng.choices(WORDS, k=1))},
                     {"role": "assistant", "content": "".join(rng.choices(WORDS, k=2))}]
        out.append(msgs)
    return out


def encode_all(tokenizer, convs) -> list:
    return [prepare_data.encode_chat(tokenizer, c) for c in convs]


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def stage(tmp_path_factory, tok):
    """~33 packs of 256 tokens: enough for STEPS optimizer steps of 4 packs in one epoch (the count depends on the
    tiny tokenizer, which is trained on data/sample: checked here rather than assumed)."""
    samples = encode_all(tok, conversations(200))
    out = prepare_data.write_packed_stage(tmp_path_factory.mktemp("stage") / "stage1", samples, SEQ_LEN,
                                          tok.pad_token_id)
    n_packs = json.loads((out / "meta.json").read_text())["n_packs"]
    assert n_packs >= 4 * STEPS, f"test stage has {n_packs} packs, the tests need {4 * STEPS}: add conversations"
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sft_cmd(tiny_model, stage, out, *extra, nproc: int = 1, script=(REPO / "sft.py",)) -> list:
    """sft.py's command line (plain python for 1 process, torchrun for more); script: what runs it."""
    base = ["--model", str(tiny_model), "--data", str(stage), "--out", str(out), "--lr", "1e-3",
            "--warmup_ratio", "0.2", "--seed", "0", *map(str, extra)]
    if nproc == 1:
        return [sys.executable, *map(str, script), *base]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), *map(str, script), *base]


def run_sft(tiny_model, stage, out, *extra, nproc: int = 1, env=None, check=True, script=(REPO / "sft.py",)):
    """Run sft.py; returns CompletedProcess."""
    cmd = sft_cmd(tiny_model, stage, out, *extra, nproc=nproc, script=script)
    p = subprocess.run(cmd, capture_output=True, text=True, env=cpu_env(env), timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"sft.py failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def metrics(out) -> list:
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def final_weights(out) -> dict:
    from safetensors.torch import load_file
    return load_file(str(Path(out) / "final" / "model.safetensors"))


# ---------------------------------------------------------------- pure functions
def test_shift_labels_never_crosses_a_sample():
    labels = torch.tensor([[-100, 5, 6, -100, 7, 8, -100, -100]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 0]])  # samples [0,3), [3,6), then padding
    assert sft.shift_labels_packed(labels, pos).tolist() == [[5, 6, -100, 7, 8, -100, -100, -100]]


def test_packed_boundaries_adds_padding_segment():
    assert sft.packed_boundaries([[0, 3, 5], [0, 8]], 8) == [0, 3, 5, 8, 16]


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_chunked_cross_entropy_equals_full(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(10, 6, generator=g, requires_grad=True)
    w = torch.randn(13, 6, generator=g, requires_grad=True)
    t = torch.randint(0, 13, (10,), generator=g)
    t[[2, 5]] = IGNORE_INDEX
    keep = t != IGNORE_INDEX  # sft.PackedCausalLM passes only the supervised rows
    got = -utils.chunked_token_logprobs(h[keep], w, t[keep], chunk_size=chunk)[0].sum()
    gh, gw = torch.autograd.grad(got, (h, w))
    ref = torch.nn.functional.cross_entropy(h @ w.t(), t, reduction="sum")
    rh, rw = torch.autograd.grad(ref, (h, w))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(gh, rh, rtol=0, atol=1e-6)
    torch.testing.assert_close(gw, rw, rtol=0, atol=1e-6)


def test_lr_schedule_warmup_then_cosine():
    lrs = [sft.lr_at(s, 100, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] > 0.1 - 1e-9
    assert sft.lr_at(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_train_flops_counts_attention_per_sample():
    # two samples of 100 cost less attention than one of 200
    two = sft.train_flops(1000, 200, 100 ** 2 * 2, 2, 64)
    one = sft.train_flops(1000, 200, 200 ** 2, 2, 64)
    assert two < one and two == 6 * 1000 * 200 + 6 * 20000 * 64 * 2
    # lm_head only on the rows where it runs (sft.py: supervised tokens)
    assert sft.train_flops(1000, 200, 0, 2, 64, lm_head_params=50, n_lm_head_tokens=30) == 6 * 1000 * 200 + 6 * 50 * 30


def test_flop_params_exclude_embeddings_known_configs(tiny_model, shared_dir):
    """6*N counts the decoder blocks only (torchtitan's convention). Tiny model by hand; Qwen2.5-7B against its model
    card's published non-embedding count (6.53B of 7.61B). Before: N = all 7.61B parameters."""
    from transformers import AutoConfig, AutoModelForCausalLM
    c = AutoConfig.from_pretrained(tiny_model)
    with torch.device("meta"):
        body, head = sft.flop_params(AutoModelForCausalLM.from_config(c))
    H, I, L, kv = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_key_value_heads * 32
    per_layer = H * H + H + 2 * (H * kv + kv) + H * H + 3 * H * I + 2 * H
    assert (body, head) == (L * per_layer + H, c.vocab_size * H)
    c7 = AutoConfig.from_pretrained(shared_dir / "model_shapes" / "qwen2.5-7b")
    with torch.device("meta"):
        m7 = AutoModelForCausalLM.from_config(c7)
    body7, head7 = sft.flop_params(m7)
    assert round(body7 / 1e9, 2) == 6.53 and round(sum(p.numel() for p in m7.parameters()) / 1e9, 2) == 7.62
    assert head7 == 152064 * 3584 and sft.attention_dim(c7) == 3584
    # MFU of a known step: 8 x 32k tokens of 7B (samples of 4k, all supervised) in 10 s on 8 H100s:
    # 6 * 6.53e9 * 262144 (1.027e16) + 6 * 5.45e8 * 262144 (8.57e14) + 6 * 64 * 4096^2 * 3584 * 28 (6.47e14)
    flops = sft.train_flops(body7, 8 * 32768, 64 * 4096 ** 2, 28, 3584, head7, 8 * 32768)
    assert flops == pytest.approx(1.177e16, rel=1e-3)
    assert flops / 10 / (8 * sft.PEAK_TFLOPS["H100"] * 1e12) == pytest.approx(0.1488, abs=1e-3)


@pytest.mark.parametrize("signature", ["torch_2_12", "torch_2_10"])
def test_varlen_call_adapts_to_the_installed_signature(signature):
    """PyTorch's varlen_attn gained scale / window_size / enable_gqa (keyword-only) in 2.12; older versions take
    is_causal and no scale or GQA. A CPU stand-in with each signature (exact per-segment attention that REFUSES
    unequal head counts unless enable_gqa) must give attention_exact's result, forward and backward, for a GQA
    shape and a non-default scale. Before: enable_gqa= and scale= were always passed (TypeError on torch < 2.12)."""
    import torch.nn.functional as F

    def segments(q, k, v, cu, causal, scale, gqa):
        assert q.shape[1] == k.shape[1] or gqa, "GQA shapes without enable_gqa"
        outs = [F.scaled_dot_product_attention(*(x[a:b].transpose(0, 1) for x in (q, k, v)), is_causal=causal,
                                               scale=scale, enable_gqa=gqa).transpose(0, 1)
                for a, b in zip(cu.tolist()[:-1], cu.tolist()[1:])]
        return torch.cat(outs)

    if signature == "torch_2_12":
        def fake(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                 window_size=(-1, -1), enable_gqa=False):
            return segments(query, key, value, cu_seq_q, window_size == (-1, 0), scale, enable_gqa)
    else:
        def fake(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
            return segments(query, key, value, cu_seq_q, is_causal, None, False)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 40, 16, generator=g, requires_grad=True)
    k = torch.randn(1, 2, 40, 16, generator=g, requires_grad=True)
    v = torch.randn(1, 2, 40, 16, generator=g, requires_grad=True)
    cu = [0, 7, 30, 40]
    scaling = 0.1  # not 1/sqrt(16): the old signature has no scale argument
    got = utils.varlen_call(fake, *(x[0].transpose(0, 1) for x in (q, k, v)), torch.tensor(cu), 23, scaling)
    ref = utils.attention_exact(q, k, v, cu, scaling)[0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    dy = torch.randn(ref.shape, generator=g)
    g_got = torch.autograd.grad(got, (q, k, v), dy)
    g_ref = torch.autograd.grad(ref, (q, k, v), dy)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dist_init_sets_a_long_timeout(monkeypatch):
    """Checkpoint saves and rank-0 exports of a 7B model on a shared filesystem outlast NCCL's 10-minute default;
    dist_init passes DIST_TIMEOUT_MIN (or timeout_min). Before: no timeout was passed."""
    import torch.distributed as dist
    seen = {}
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.update(backend=backend, **kw))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    utils.dist_init(0)
    assert seen["backend"] == "gloo" and seen["timeout"].total_seconds() == 60 * utils.DIST_TIMEOUT_MIN >= 3600
    utils.dist_init(0, timeout_min=240)
    assert seen["timeout"].total_seconds() == 240 * 60


def test_micro_batch_forward_backward_has_no_host_sync(tiny_model):
    """The whole micro-batch (packed forward, chunked loss, backward) runs on the META device: any .item(),
    boolean-mask indexing or other data-dependent step (a host-device sync on a GPU, per micro-batch) would raise
    there. Negative control: without the host-computed supervised rows, the loss's boolean mask cannot run on meta
    (that was sft.py before: one sync per micro-batch)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    utils.register_attention()  # META_ATTENTION: the memory plan's shape-only flash kernel, it runs on meta
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model),
                                              attn_implementation=utils.META_ATTENTION).train()
    model = sft.PackedCausalLM(hf, "meta", loss_chunk=64)
    T = 300
    ids, pos = torch.zeros(1, T, dtype=torch.long, device="meta"), torch.zeros(1, T, dtype=torch.long, device="meta")
    targets, rows = torch.zeros(1, T, dtype=torch.long, device="meta"), torch.zeros(200, dtype=torch.long,
                                                                                      device="meta")
    loss = model(ids, pos, targets, [0, 100, 300], rows)
    loss.backward()
    assert loss.device.type == "meta" and hf.lm_head.weight.grad is not None
    with pytest.raises((NotImplementedError, RuntimeError)):
        model(ids, pos, targets, [0, 100, 300])


# ---------------------------------------------------------------- leak-free packing (in process, world of one)
def test_packed_loss_and_grads_equal_sum_over_samples(tiny_model, tok):
    """A packed micro-batch (2 packs, several samples each + padding) through the packed-attention path gives the
    same summed loss and the same gradients as running each sample alone through stock HF attention (sdpa)."""
    from transformers import AutoModelForCausalLM
    samples = encode_all(tok, conversations(12, seed=1))
    stage = prepare_data.write_packed_stage(Path(os.environ.get("TMPDIR", "/tmp")) / f"leak_{os.getpid()}", samples,
                                            SEQ_LEN, tok.pad_token_id)
    data = sft.PackedStage(stage)
    assert data.n >= 2
    b = data.batch([0, 1])
    n_in = len(data.cu(0)) - 1 + len(data.cu(1)) - 1
    assert n_in >= 4

    utils.register_attention()
    packed = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32,
                                                  attn_implementation=utils.PACKED_ATTENTION)
    wrapper = sft.PackedCausalLM(packed, "exact", loss_chunk=50)
    loss = wrapper(b["input_ids"], b["position_ids"], b["targets"], b["cu_seqlens"])
    loss.backward()

    ref_model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    ref = torch.zeros(())
    for ids, labels in samples[:n_in]:
        x = torch.tensor([ids])
        logits = ref_model(input_ids=x).logits[0]
        tgt = torch.tensor(labels[1:] + [IGNORE_INDEX])
        ref = ref + torch.nn.functional.cross_entropy(logits, tgt, reduction="sum")
    ref.backward()
    assert loss.item() > 0
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-4)
    assert b["n_supervised"] == sum(sum(l != IGNORE_INDEX for l in lab[1:]) for _, lab in samples[:n_in])
    for (name, p), (_, q) in zip(packed.named_parameters(), ref_model.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    with torch.no_grad():  # negative control: one causal segment over the whole micro-batch leaks and differs
        leaky = wrapper(b["input_ids"], b["position_ids"], b["targets"], [0, b["input_ids"].shape[1]])
    assert abs(leaky.item() - ref.item()) > 1e-2


@requires_cuda
@pytest.mark.parametrize("backend", ["torch_varlen", "flash"])
def test_cuda_attention_paths_match_exact(backend):
    """Forward and backward (dq, dk, dv) of the CUDA kernels vs exact per-sample attention, in bf16, with a 7B GQA
    shape (28 query / 4 KV heads, head_dim 128) and uneven sample boundaries. Tolerances: bf16 (~3 significant
    digits), relative to the reference's scale."""
    if backend == "flash":
        pytest.importorskip("flash_attn")
    g = torch.Generator(device="cuda").manual_seed(0)
    T, D = 1000, 128
    q = torch.randn(1, 28, T, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    k = torch.randn(1, 4, T, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    v = torch.randn(1, 4, T, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    cu = [0, 7, 300, 301, 777, T]
    cu_t = torch.tensor(cu, dtype=torch.int32, device="cuda")
    ref = utils.attention_exact(q, k, v, cu, D ** -0.5)
    fn = utils.attention_flash if backend == "flash" else utils.attention_torch_varlen
    got = fn(q, k, v, cu_t, 476, D ** -0.5)
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)
    dy = torch.randn(ref.shape, device="cuda", dtype=torch.bfloat16, generator=g)
    for a, b, name in zip(torch.autograd.grad(got, (q, k, v), dy), torch.autograd.grad(ref, (q, k, v), dy), "qkv"):
        assert (a.float() - b.float()).abs().max() <= 2e-2 * b.float().abs().max() + 2e-2, f"d{name}"


@requires_cuda
def test_cuda_micro_batch_has_no_host_sync(tiny_model, world_of_one_cuda):
    """On a GPU, one micro-batch forward + backward under torch.cuda.set_sync_debug_mode('error'): no sync."""
    cfg = sft.SFTConfig(model=str(tiny_model))
    model, hf, backend = sft.load_model(cfg, world_of_one_cuda)
    T = 512
    b = {"input_ids": torch.randint(0, 100, (1, T)), "position_ids": torch.arange(T)[None] % 256,
         "targets": torch.randint(0, 100, (1, T)), "rows": torch.arange(T)}
    dev = [utils.to_device(b[k], world_of_one_cuda) for k in ("input_ids", "position_ids", "targets", "rows")]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model(*dev[:3], [0, 256, T], dev[3]).backward()  # a host sync here raises under sync_debug_mode "error"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # the backward really ran


# ---------------------------------------------------------------- the trainer at scale (in process, world of one)
def test_activation_checkpointing_cuts_saved_activations(tiny_model, stage, world_of_one):
    """sft.load_model's model is in train mode, so Hugging Face really recomputes each block: the bytes autograd
    saves for backward in one micro-batch drop by a large factor with --activation_checkpointing true.
    Before: from_pretrained left the model in eval mode, the layers skipped checkpointing, the bytes were equal."""
    data = sft.PackedStage(stage)
    b = data.batch([0, 1])
    saved = {}
    for ac in (False, True):
        model, hf, _ = sft.load_model(sft.SFTConfig(model=str(tiny_model), activation_checkpointing=ac), world_of_one)
        assert hf.training and model.training
        with utils.SavedTensorBytes() as c:
            loss = model(b["input_ids"], b["position_ids"], b["targets"], b["cu_seqlens"], b["rows"])
        loss.backward()
        saved[ac] = c.bytes
    assert saved[True] < 0.25 * saved[False], saved


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_step_collectives_run_on_the_compute_device(tiny_model, stage, device, request, monkeypatch):
    """Every collective of a training step gets tensors on the compute device (NCCL has no CPU tensors)."""
    import torch.distributed as dist
    dev = request.getfixturevalue("world_of_one" if device == "cpu" else "world_of_one_cuda")
    cfg = sft.SFTConfig(model=str(tiny_model), grad_accum=2)
    model, _, _ = sft.load_model(cfg, dev)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as on a rank of two: utils.all_reduce runs them (a world of one skips)
    seen, real = [], dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: seen.append(t.device.type) or real(t, *a, **k))
    optimizer = utils.build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), dev)
    sft.train_step(model, optimizer, sft.PackedStage(stage), [0, 1], cfg, 0, 1, dev, 0)
    assert seen and set(seen) == {dev.type}


def run_probe(*args, nproc: int = 2) -> list:
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                        str(REPO / "tests" / "sft_probe.py"), *map(str, args)],
                       capture_output=True, text=True, env=cpu_env(), timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return sorted((json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")), key=lambda r: r["rank"])


def test_nonzero_rank_never_holds_the_full_model(tmp_path_factory):
    """2 ranks load a ~100M-parameter model (400 MB in fp32): rank 1's peak RSS grows by well under the model's
    fp32 size (it only ever holds its shard and one broadcast tensor at a time); rank 0 reads the file once.
    Before: every rank ran from_pretrained (the full model) and then sharded it (growth > 1x the fp32 size)."""
    model_dir = utils.build_tiny_model(tmp_path_factory.mktemp("m100") / "model", hidden_size=1024,
                                       intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                                       num_key_value_heads=4)
    rows = run_probe("load", model_dir)
    fp32 = rows[0]["fp32_bytes"]
    assert 3.5e8 < fp32 < 5e8
    assert rows[1]["rss_growth"] < 0.75 * fp32, rows


def test_grad_accumulation_keeps_gradients_sharded(tiny_model, stage):
    """2 ranks, grad_accum 3: between micro-batches each rank holds only its gradient shard (about half the fp32
    gradients) by default; with --reduce_every_micro_batch false FSDP2 keeps the full unsharded gradients (the
    7B case: 30 GB per GPU). Same loss either way. Before: the full-size accumulation was the only behaviour."""
    sharded = run_probe("grads", tiny_model, stage, "true")
    full = run_probe("grads", tiny_model, stage, "false")
    fp32 = sharded[0]["fp32_bytes"]
    for r in sharded:
        assert len(r["held"]) == 3 and max(r["held"]) <= 0.6 * fp32, r
    for r in full:
        assert max(r["held"]) >= fp32, r
    assert abs(sharded[0]["loss"] - full[0]["loss"]) < 1e-6


# ---------------------------------------------------------------- end to end (subprocesses)
STEPS = 6


@pytest.fixture(scope="module")
def baseline(tiny_model, stage, tmp_path_factory):
    """1 process, micro_batch_size 1 x grad_accum 4, uninterrupted, checkpoints every 2 steps."""
    out = tmp_path_factory.mktemp("base") / "run"
    run_sft(tiny_model, stage, out, "--max_steps", STEPS, "--micro_batch_size", 1, "--grad_accum", 4,
            "--save_every", 2, "--keep_last", 2)
    return out


def test_run_writes_metrics_config_checkpoints_and_loss_falls(baseline):
    m = metrics(baseline)
    assert [r["step"] for r in m] == list(range(1, STEPS + 1))
    assert m[-1]["loss"] < m[0]["loss"] - 0.5, [r["loss"] for r in m]
    for key in ("loss", "grad_norm", "lr", "tokens_per_s", "mfu", "peak_mem_gb"):
        assert key in m[0]
    assert json.loads((baseline / "config.json").read_text())["grad_accum"] == 4
    kept = sorted(p.name for p in (baseline / "checkpoints").iterdir())
    assert kept == ["step_00000002", "step_00000004"]  # keep_last 2; no save at the final step
    assert_plan_equals_measured(baseline / "memory_rank0.json")


def assert_plan_equals_measured(path):
    """The memory plan's parameter / gradient / optimizer bytes equal what the rank holds after its first step."""
    mem = json.loads(Path(path).read_text())
    for part in ("params", "grads", "optimizer"):
        assert mem["plan"][part] == mem["measured"][part], (part, mem)


def test_export_loads_and_generates(baseline, tok):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(baseline / "final")
    tok2 = AutoTokenizer.from_pretrained(baseline / "final")
    assert tok2.chat_template == tok.chat_template
    x = tok2(tok2.apply_chat_template([{"role": "user", "content": "盗窃"}], tokenize=False,
                                      add_generation_prompt=True), return_tensors="pt")
    y = model.generate(**x, max_new_tokens=5, do_sample=False)
    assert y.shape[1] > x["input_ids"].shape[1]


def test_stage2_init_from_stage1_export(baseline, tiny_model, stage, tmp_path):
    """Stage 2 starts from stage 1's export: its first loss is the trained model's, well below stage 1's first."""
    out = tmp_path / "stage2"
    run_sft(tiny_model, stage, out, "--init_from", baseline / "final", "--max_steps", 2, "--grad_accum", 4,
            "--export_dtype", "bfloat16")
    first1, last1, first2 = metrics(baseline)[0]["loss"], metrics(baseline)[-1]["loss"], metrics(out)[0]["loss"]
    assert first2 < first1 - 0.5 and abs(first2 - last1) < 0.5, (first1, last1, first2)
    # a bf16 export says so in config.json (before: the weights were bf16 but config.json said float32)
    assert json.loads((out / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    assert all(v.dtype == torch.bfloat16 for v in final_weights(out).values())


def test_micro_batches_do_not_change_the_update(baseline, tiny_model, stage, tmp_path):
    """4 micro-batches x 1 pack == 1 micro-batch x 4 packs (loss normalised by the global supervised count)."""
    out = tmp_path / "mb4"
    run_sft(tiny_model, stage, out, "--max_steps", STEPS, "--micro_batch_size", 4, "--grad_accum", 1)
    a, b = metrics(baseline), metrics(out)
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) < 1e-5 and abs(x["grad_norm"] - y["grad_norm"]) < 1e-4
    wa, wb = final_weights(baseline), final_weights(out)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)


def test_activation_checkpointing_gives_the_same_steps(baseline, tiny_model, stage, tmp_path):
    """--activation_checkpointing true recomputes each block in backward: same losses and gradient norms."""
    out = tmp_path / "ac"
    run_sft(tiny_model, stage, out, "--max_steps", 2, "--micro_batch_size", 1, "--grad_accum", 4,
            "--activation_checkpointing", "true")
    for x, y in zip(metrics(baseline)[:2], metrics(out)):
        assert abs(x["loss"] - y["loss"]) < 1e-5 and abs(x["grad_norm"] - y["grad_norm"]) < 1e-4


def test_two_ranks_match_one_process(baseline, tiny_model, stage, tmp_path):
    """torchrun with 2 gloo ranks x grad_accum 2 == 1 process x grad_accum 4 on the same global batches."""
    out = tmp_path / "ddp2"
    run_sft(tiny_model, stage, out, "--max_steps", STEPS, "--micro_batch_size", 1, "--grad_accum", 2, nproc=2)
    a, b = metrics(baseline), metrics(out)
    assert len(b) == STEPS >= 5
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) < 1e-5, (x, y)
    wa, wb = final_weights(baseline), final_weights(out)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)
    for rank in (0, 1):  # each rank holds half (dim 0 padded to a multiple of 2): the plan says so exactly
        assert_plan_equals_measured(out / f"memory_rank{rank}.json")


def test_two_nodes_over_loopback_hybrid_shard(baseline, tiny_model, stage, tmp_path):
    """Two torchrun 'nodes' (--nnodes 2, 1 process each, static rendezvous on 127.0.0.1), hybrid shard."""
    out = tmp_path / "nodes2"
    port = free_port()
    base = ["--model", str(tiny_model), "--data", str(stage), "--out", str(out), "--lr", "1e-3",
            "--warmup_ratio", "0.2", "--seed", "0", "--max_steps", str(STEPS), "--grad_accum", "2",
            "--hybrid_shard", "true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(r),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               str(REPO / "sft.py"), *base], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    for x, y in zip(metrics(baseline), metrics(out)):
        assert abs(x["loss"] - y["loss"]) < 1e-5, (x, y)


def test_resume_after_sigkill_is_bitwise_equal(baseline, tiny_model, stage, tmp_path):
    """Killed (SIGKILL, from outside) once step 5 is logged, resumed with --resume auto from step 4 -> final weights
    bitwise equal. Then: killed in the middle of the step-4 save -> resumes from step 2 -> bitwise equal as well."""
    args = ["--max_steps", STEPS, "--micro_batch_size", 1, "--grad_accum", 4, "--save_every", 2, "--keep_last", 2]
    ref = final_weights(baseline)
    out = tmp_path / "killed_after_step_5"
    log = out / "metrics.jsonl"
    kill_when(sft_cmd(tiny_model, stage, out, *args), cpu_env(), lambda: log.is_file() and
              log.read_text().count("\n") >= 5)
    p = run_sft(tiny_model, stage, tmp_path / "killed_in_save", *args, check=False,
                script=(REPO / "tests" / "sft_probe.py", "kill_in_save", 4))  # dies with the step-4 save half done
    assert p.returncode != 0
    assert (tmp_path / "killed_in_save" / "checkpoints" / ".tmp_step_00000004").is_dir()  # the half-written save
    for out, resumed_from in ((out, 4), (tmp_path / "killed_in_save", 2)):
        assert not (out / "final").exists()
        assert utils.latest_checkpoint(out / "checkpoints").name == f"step_{resumed_from:08d}"
        p = run_sft(tiny_model, stage, out, *args, "--resume", "auto")
        assert f"(step {resumed_from})" in p.stdout
        got = final_weights(out)
        assert all(torch.equal(got[k], ref[k]) for k in ref), out
        assert [r["step"] for r in metrics(out)] == list(range(1, STEPS + 1))
        assert [r["loss"] for r in metrics(out)] == [r["loss"] for r in metrics(baseline)]


def test_non_finite_loss_stops_with_clear_message(tiny_model, stage, tmp_path):
    from transformers import AutoModelForCausalLM
    bad = tmp_path / "nan_model"
    m = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        m.model.norm.weight[0] = float("nan")
    m.save_pretrained(bad)
    p = run_sft(tiny_model, stage, tmp_path / "run", "--init_from", bad, "--max_steps", 2, check=False)
    assert p.returncode == 1
    assert "non-finite loss" in p.stderr and "before the optimizer step" in p.stderr
    assert not (tmp_path / "run" / "final").exists()


def test_bad_data_dir_is_one_line_error(tiny_model, tmp_path):
    p = run_sft(tiny_model, tmp_path / "nope", tmp_path / "run", check=False)
    assert p.returncode == 2 and "meta.json: file not found" in p.stderr and "Traceback" not in p.stderr
    p = run_sft(tiny_model, tmp_path / "nope", tmp_path / "run", "--resume", "yes", check=False)
    assert p.returncode == 2 and "--resume: expected one of auto, got 'yes'" in p.stderr
