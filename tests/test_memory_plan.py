"""The memory plan (`sft.py --dry_run`, sft.memory_plan): config.json only, meta device, the documented last line.
That its parameter / gradient / optimizer parts equal what a run allocates is checked in tests/test_sft.py (1 and 2
ranks, memory_rankR.json); its total against a GPU's measured peak in bench/gpu_check.py (sft_memory)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import utils
from conftest import cpu_env

REPO = Path(__file__).resolve().parents[1]
LAST = re.compile(r"^total per GPU: (\d+\.\d) GiB \((fits|does not fit) in (\d+(?:\.\d+)?) GiB\)$")


def dry_run(model_dir, *extra) -> list[str]:
    p = subprocess.run([sys.executable, str(REPO / "sft.py"), "--model", str(model_dir), "--dry_run", *map(str, extra)],
                       capture_output=True, text=True, env=cpu_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout.strip().splitlines()


def test_dry_run_7b_at_32k_on_8_gpus_needs_config_only(shared_dir, tmp_path):
    """Qwen2.5-7B shape, config.json alone (copied to an empty folder: no weights, no tokenizer, no data): fits in
    80 GiB with activation checkpointing, does not without; the table has every part."""
    model = tmp_path / "qwen7b"
    model.mkdir()
    shutil.copy(shared_dir / "model_shapes" / "qwen2.5-7b" / "config.json", model / "config.json")
    args = ["--world_size", 8, "--seq_len", 32768, "--micro_batch_size", 1, "--gpu_memory_gb", 80]
    on = dry_run(model, *args, "--activation_checkpointing", "true")
    off = dry_run(model, *args, "--activation_checkpointing", "false")
    m_on, m_off = LAST.match(on[-1]), LAST.match(off[-1])
    assert m_on and m_off, (on[-1], off[-1])
    assert m_on.group(2) == "fits" and m_off.group(2) == "does not fit" and m_on.group(3) == "80"
    assert 25 < float(m_on.group(1)) < 60 and float(m_off.group(1)) > 150
    for part in utils.MEMORY_PLAN_PARTS:
        assert any(line.startswith(part + " ") for line in on), part


def test_plan_parts_scale_as_fsdp_shards(tiny_model):
    """Pure-function checks on the tiny config: shards halve with 2 ranks (dims even), optimizer = 2 x params +
    one fp32 step per tensor, AC shrinks activations, unsharded-gradient accumulation adds the full fp32 size."""
    from transformers import AutoConfig
    c = AutoConfig.from_pretrained(tiny_model)
    one = utils.memory_plan(c, 1, 256, 1, False, mixed_precision=False)
    two = utils.memory_plan(c, 2, 256, 1, False, mixed_precision=False)
    n_tensors = 2 + c.num_hidden_layers * 12 + 1  # embed, lm_head, 12 per Qwen2 layer (q/k/v with bias), final norm
    assert one["params"] == 4 * one["n_params"] and two["params"] == one["params"] // 2
    assert one["optimizer"] == 2 * one["params"] + 4 * n_tensors
    c8 = AutoConfig.from_pretrained(tiny_model, num_hidden_layers=8, layer_types=["full_attention"] * 8)
    big = utils.memory_plan(c8, 2, 4096, 1, False)
    assert utils.memory_plan(c8, 2, 4096, 1, True)["activations"] < 0.3 * big["activations"]
    acc = utils.memory_plan(c, 2, 256, 1, False, grad_accum=4, reduce_every_micro_batch=False)
    assert acc["grads"] == two["grads"] + 4 * two["n_params"]


def test_dry_run_bad_model_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "sft.py"), "--model", str(tmp_path), "--dry_run"],
                       capture_output=True, text=True, env=cpu_env(), timeout=120)
    assert p.returncode != 0 and "config.json: file not found" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("tied", [False, True])
def test_meta_init_broadcast_load_equals_from_pretrained(tmp_path, world_of_one, tied):
    """utils.load_sharded_model (meta init, shards only, rank-0 load + broadcast) gives exactly from_pretrained's
    model: same logits, rotary buffers rebuilt (they are not in the state dict), tied embeddings still tied."""
    import torch
    from transformers import AutoModelForCausalLM
    d = utils.build_tiny_model(tmp_path / "m", tie_word_embeddings=tied)
    model, hf = utils.load_sharded_model(d, world_of_one)
    ref = AutoModelForCausalLM.from_pretrained(d)
    hf.set_attn_implementation("sdpa")  # the trainer's packed attention needs cu_seqlens: a plain forward here
    x = torch.randint(0, 1000, (1, 33))
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, ref(input_ids=x).logits)
    assert torch.equal(hf.model.rotary_emb.inv_freq, ref.model.rotary_emb.inv_freq)
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == tied and hf.training
    frozen, _ = utils.load_sharded_model(d, world_of_one, trainable=False)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
