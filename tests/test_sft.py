"""Tests for sft.py and utils section 9: leak-free packing, chunked loss, loss normalisation, 2 ranks == 1 process,
two "nodes" over loopback, exact resume after SIGKILL (mid-training and mid-save), export loads and generates.

Packed stages are written here directly in the PACKED_FORMAT contract (tiny `write_packed_stage` helper), from
utils.encode_chat on synthetic conversations, so these tests do not depend on prepare_data.py."""
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import utils
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
    return [utils.encode_chat(tokenizer, c) for c in convs]


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def stage(tmp_path_factory, tok):
    """~33 packs of 256 tokens: enough for STEPS optimizer steps of 4 packs in one epoch (the count depends on the
    tiny tokenizer, which is trained on data/sample: checked here rather than assumed)."""
    samples = encode_all(tok, conversations(200))
    out = utils.write_packed_stage(tmp_path_factory.mktemp("stage") / "stage1", samples, SEQ_LEN, tok.pad_token_id)
    n_packs = json.loads((out / "meta.json").read_text())["n_packs"]
    assert n_packs >= 4 * STEPS, f"test stage has {n_packs} packs, the tests need {4 * STEPS}: add conversations"
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_sft(tiny_model, stage, out, *extra, nproc: int = 1, env=None, check=True):
    """Run sft.py (plain python for 1 process, torchrun for more); returns CompletedProcess."""
    base = ["--model", str(tiny_model), "--data", str(stage), "--output_dir", str(out), "--lr", "1e-3",
            "--warmup_ratio", "0.2", "--seed", "0", *map(str, extra)]
    if nproc == 1:
        cmd = [sys.executable, str(REPO / "sft.py"), *base]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), str(REPO / "sft.py"), *base]
    e = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    e = {k: v for k, v in e.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    p = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=600)
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
    assert utils.shift_labels_packed(labels, pos).tolist() == [[5, 6, -100, 7, 8, -100, -100, -100]]


def test_packed_boundaries_adds_padding_segment():
    assert utils.packed_boundaries([[0, 3, 5], [0, 8]], 8) == [0, 3, 5, 8, 16]


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_chunked_cross_entropy_equals_full(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(10, 6, generator=g, requires_grad=True)
    w = torch.randn(13, 6, generator=g, requires_grad=True)
    t = torch.randint(0, 13, (10,), generator=g)
    t[[2, 5]] = IGNORE_INDEX
    got = utils.chunked_cross_entropy_sum(h, w, t, chunk)
    gh, gw = torch.autograd.grad(got, (h, w))
    ref = torch.nn.functional.cross_entropy(h @ w.t(), t, reduction="sum")
    rh, rw = torch.autograd.grad(ref, (h, w))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(gh, rh, rtol=0, atol=1e-6)
    torch.testing.assert_close(gw, rw, rtol=0, atol=1e-6)


def test_lr_schedule_warmup_then_cosine():
    lrs = [utils.lr_at(s, 100, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] > 0.1 - 1e-9
    assert utils.lr_at(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_train_flops_counts_attention_per_sample():
    # two samples of 100 cost less attention than one of 200
    two = utils.train_flops(1000, 200, 100 ** 2 * 2, 2, 64)
    one = utils.train_flops(1000, 200, 200 ** 2, 2, 64)
    assert two < one and two == 6 * 1000 * 200 + 6 * 20000 * 64 * 2


# ---------------------------------------------------------------- leak-free packing (in process, world of one)
def test_packed_loss_and_grads_equal_sum_over_samples(tiny_model, tok):
    """A packed micro-batch (2 packs, several samples each + padding) through the packed-attention path gives the
    same summed loss and the same gradients as running each sample alone through stock HF attention (sdpa)."""
    import sft
    from transformers import AutoModelForCausalLM
    samples = encode_all(tok, conversations(12, seed=1))
    stage = utils.write_packed_stage(Path(os.environ.get("TMPDIR", "/tmp")) / f"leak_{os.getpid()}", samples, SEQ_LEN,
                               tok.pad_token_id)
    data = sft.PackedStage(stage)
    assert data.n >= 2
    b = data.batch([0, 1])
    n_in = len(data.cu(0)) - 1 + len(data.cu(1)) - 1
    assert n_in >= 4

    utils.register_packed_attention()
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash / torch varlen attention need CUDA")
@pytest.mark.parametrize("backend", ["torch_varlen", "flash"])
def test_cuda_attention_paths_match_exact(backend):
    if backend == "flash":
        pytest.importorskip("flash_attn")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 4, 40, 32, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 2, 40, 32, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, 2, 40, 32, device="cuda", dtype=torch.bfloat16, generator=g)
    cu = [0, 7, 30, 40]
    cu_t = torch.tensor(cu, dtype=torch.int32, device="cuda")
    ref = utils.attention_exact(q, k, v, cu, 32 ** -0.5)
    fn = utils.attention_flash if backend == "flash" else utils.attention_torch_varlen
    torch.testing.assert_close(fn(q, k, v, cu_t, 23, 32 ** -0.5), ref, rtol=2e-2, atol=2e-2)


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
    run_sft(tiny_model, stage, out, "--init_from", baseline / "final", "--max_steps", 2, "--grad_accum", 4)
    first1, last1, first2 = metrics(baseline)[0]["loss"], metrics(baseline)[-1]["loss"], metrics(out)[0]["loss"]
    assert first2 < first1 - 0.5 and abs(first2 - last1) < 0.5, (first1, last1, first2)


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


def test_two_nodes_over_loopback_hybrid_shard(baseline, tiny_model, stage, tmp_path):
    """Two torchrun 'nodes' (--nnodes 2, 1 process each, static rendezvous on 127.0.0.1), hybrid shard."""
    out = tmp_path / "nodes2"
    port = free_port()
    base = ["--model", str(tiny_model), "--data", str(stage), "--output_dir", str(out), "--lr", "1e-3",
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
    """Killed (SIGKILL) after step 5, resumed with --resume auto from step 4 -> final weights bitwise equal.
    Then: killed in the middle of the step-4 save -> resumes from step 2 -> bitwise equal as well."""
    args = ["--max_steps", STEPS, "--micro_batch_size", 1, "--grad_accum", 4, "--save_every", 2, "--keep_last", 2]
    ref = final_weights(baseline)
    for hook, value, resumed_from in [("LEXLAB_TEST_KILL_AT_STEP", "5", 4), ("LEXLAB_TEST_KILL_DURING_SAVE", "4", 2)]:
        out = tmp_path / hook
        p = run_sft(tiny_model, stage, out, *args, env={hook: value}, check=False)
        assert p.returncode != 0 and not (out / "final").exists()
        if hook == "LEXLAB_TEST_KILL_DURING_SAVE":
            assert (out / "checkpoints" / ".tmp_step_00000004").is_dir()  # the half-written save
            assert utils.latest_checkpoint(out / "checkpoints").name == "step_00000002"
        p = run_sft(tiny_model, stage, out, *args, "--resume", "auto")
        assert f"(step {resumed_from})" in p.stdout
        got = final_weights(out)
        assert all(torch.equal(got[k], ref[k]) for k in ref), hook
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
    assert "non-finite loss" in p.stdout and "before the optimizer step" in p.stdout
    assert not (tmp_path / "run" / "final").exists()


def test_bad_data_dir_is_one_line_error(tiny_model, tmp_path):
    p = run_sft(tiny_model, tmp_path / "nope", tmp_path / "run", check=False)
    assert p.returncode == 2 and "meta.json: file not found" in p.stderr and "Traceback" not in p.stderr
    p = run_sft(tiny_model, tmp_path / "nope", tmp_path / "run", "--resume", "yes", check=False)
    assert p.returncode == 2 and "--resume: expected one of auto, got 'yes'" in p.stderr
