"""Generation scores what the model says (issue 19, findings 7-9), on CPU with tiny offline models:
- a tokenizer that adds a BOS (R1-Distill, Llama-layout InternLM2): HF and vLLM get the same prompt token ids (one
  BOS, from the chat template) and give the same greedy text;
- a chat model whose end of turn (<|im_end|>) is not its eos (</s>): every generation path stops at the end of turn
  (utils.generate hf / vllm, rl.py's HF and vLLM rollouts, a plain transformers generate after utils.export_hf),
  and the export keeps the source's generation_config;
- vLLM under torchrun with tensor parallelism: the engine kwargs and the prompts per rank (pure functions);
- a checkpoint that needs trust_remote_code (native InternLM2): one line saying how to convert it.
One vLLM engine per model and path (vllm-cpu starts in ~10-15 s)."""
import copy
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

import evaluate
import rl
import utils
from conftest import REPO, exit_status

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed")
VLLM_CPU = dict(max_model_len=256, kv_cache_bytes=64 << 20, enforce_eager=True, vllm_dtype="float32")
PROMPTS = ["被告人张三盗窃他人财物，价值三千元。", "罪名"]


@pytest.fixture(scope="module")
def bos_model(tmp_path_factory) -> Path:
    """Random-init tiny model whose tokenizer adds <s> to every text and whose template starts with it; eos </s>."""
    return utils.build_tiny_model(tmp_path_factory.mktemp("bos") / "model", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def turn_model(bos_model, tmp_path_factory) -> Path:
    """bos_model rewired so that after any chat prompt it says "a", then <|im_end|> (its end of turn; its eos is
    </s>), then "b" for ever. Every layer's output projections are zero, so the last hidden state is the last
    token's embedding; one-hot embeddings and lm_head rows make each step a fixed rule with a logit margin of
    ~1100 (the same at temperature 1). Its generation_config has only </s> (as a converted InternLM2 has) and
    sampling defaults (as R1-Distill's has), which an export must keep."""
    from transformers import AutoModelForCausalLM
    out = tmp_path_factory.mktemp("turn") / "model"
    shutil.copytree(bos_model, out)
    tok = utils.load_tokenizer(bos_model)
    model = AutoModelForCausalLM.from_pretrained(bos_model)
    last = tok(utils.render_prompt(tok, "x"), add_special_tokens=False)["input_ids"][-1]
    a, b, eot = tok.convert_tokens_to_ids(["a", "b", "<|im_end|>"])
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for k, (now, then) in enumerate([(last, a), (a, eot), (eot, b), (b, b)]):
            emb[now] = 0.0
            emb[now, k] = 1.0
            head[then, k] = 100.0
    model.generation_config.update(do_sample=True, temperature=0.6, top_p=0.95)
    model.save_pretrained(out)
    return out


def _ids(model_dir, names):
    return utils.load_tokenizer(model_dir).convert_tokens_to_ids(names)


# ---- finding 7: one BOS, the same ids in both backends ------------------------------------------------------------

@needs_vllm
def test_bos_tokenizer_same_prompt_ids_and_greedy_text_in_hf_and_vllm(bos_model, monkeypatch):
    from vllm import LLM
    tok = utils.load_tokenizer(bos_model)
    want = utils.encode_prompts(tok, PROMPTS)
    assert all(ids[0] == tok.bos_token_id != ids[1] for ids in want)  # exactly one BOS, the template's
    assert tok(utils.render_prompt(tok, PROMPTS[0]))["input_ids"][:2] == [tok.bos_token_id] * 2  # the trap
    seen, real = [], LLM.generate

    def recording(self, *args, **kwargs):  # the engine's RequestOutputs: the prompt ids it really ran on
        outs = real(self, *args, **kwargs)
        seen.extend(outs)
        return outs
    monkeypatch.setattr(LLM, "generate", recording)
    hf = utils.generate(bos_model, PROMPTS, backend="hf", max_new_tokens=16, batch_size=2)
    vl = utils.generate(bos_model, PROMPTS, backend="vllm", max_new_tokens=16, **VLLM_CPU)
    assert [list(o.prompt_token_ids) for o in seen] == want  # what the engine really ran on
    assert vl == hf and all(hf), (hf, vl)


# ---- findings 9 (stop tokens, export) ------------------------------------------------------------------------------

def test_stop_tokens_include_the_end_of_turn(turn_model, tiny_model):
    tok = utils.load_tokenizer(turn_model)
    eot, eos = _ids(turn_model, ["<|im_end|>", "</s>"])
    assert tok.eos_token_id == eos != eot and utils.end_of_turn_ids(tok) == {eos, eot}
    assert utils.stop_token_ids(turn_model) == sorted([eot, eos])
    assert utils.stop_token_ids(tiny_model) == _ids(tiny_model, ["<|im_end|>"])  # eos is the end of turn: once
    other = copy.deepcopy(tok)  # a template that ends turns with a token no list names (Gemma's <end_of_turn>)
    other.chat_template = utils.CHATML_TEMPLATE.replace("<|im_end|>", "<|endoftext|>")
    assert utils.end_of_turn_ids(other) == {eos, eot, _ids(turn_model, ["<|endoftext|>"])[0]}


@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=needs_vllm)])
def test_generate_stops_at_the_end_of_turn(turn_model, backend):
    """Without the end of turn as a stop token the answer runs on: "abbbbbb" (<|im_end|> itself decodes to "")."""
    kw = VLLM_CPU if backend == "vllm" else {}
    assert utils.generate(turn_model, PROMPTS, backend=backend, max_new_tokens=8, **kw) == ["a", "a"]


@needs_vllm
def test_rl_vllm_rollout_stops_at_the_end_of_turn(turn_model):
    a, eot = _ids(turn_model, ["a", "<|im_end|>"])
    cfg = rl.RLConfig(model=str(turn_model), prompts="-", out="-", max_new_tokens=8, vllm_kv_bytes=64 << 20)
    roll = rl.VLLMRollout(cfg, 0, 1, 256, torch.device("cpu"))
    try:
        tok = utils.load_tokenizer(turn_model)
        comps = roll.generate([utils.encode_prompts(tok, PROMPTS[:1])[0]], n=2, generator_seed=0)
    finally:
        roll.close()
    assert [(c.ids, c.truncated) for c in comps] == [([a, eot], False)] * 2  # the stop token is scored


def test_rl_hf_rollout_and_export_stop_at_the_end_of_turn(turn_model, tmp_path, world_of_one):
    """rl.py's HF rollouts stop at <|im_end|>; utils.export_hf (sft.py's and rl.py's final/) keeps the source's
    generation_config (sampling defaults) with every stop token, so a plain transformers generate on the export,
    which reads nothing but the folder, stops at the end of turn too."""
    from transformers import AutoModelForCausalLM, GenerationConfig
    a, eot, eos = _ids(turn_model, ["a", "<|im_end|>", "</s>"])
    tok = utils.load_tokenizer(turn_model)
    prompt = utils.encode_prompts(tok, PROMPTS[:1])[0]
    cfg = rl.RLConfig(model=str(turn_model), prompts="-", out="-", max_new_tokens=8)
    model = rl.build_policy(turn_model, "float32", world_of_one)
    comps = rl.HFRollout(model, tok, cfg).generate([prompt], n=2, generator_seed=0)
    assert [(c.ids, c.truncated) for c in comps] == [([a, eot], False)] * 2

    utils.export_hf(model, model.hf, turn_model, tmp_path / "final", prefix="hf.")
    gen = GenerationConfig.from_pretrained(tmp_path / "final")
    assert sorted(gen.eos_token_id) == sorted([eot, eos])
    assert (gen.do_sample, gen.temperature, gen.top_p) == (True, 0.6, 0.95)  # the source's, not config.json's
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    out = plain.generate(torch.tensor([prompt]), max_new_tokens=8)[0, len(prompt):].tolist()
    assert out == [a, eot]
    assert utils.generate(tmp_path / "final", PROMPTS, max_new_tokens=8) == ["a", "a"]


# ---- finding 8: tensor parallel x data parallel under torchrun ------------------------------------------------------

def test_vllm_engine_kwargs_and_prompts_per_rank_under_tp_x_dp():
    """torchrun 8 ranks, 2 GPUs per engine: 4 engines of 2 consecutive ranks (vLLM's external_launcher layout). Every
    rank gets the same engine kwargs (TP 2, external launcher, one seed), both ranks of an engine the same items,
    the 4 engines disjoint shares covering every item."""
    world, tp = 8, 2
    kws = [utils.vllm_llm_kwargs("m", 0, 4096, 1 << 28, False, "bfloat16", cuda=True, tensor_parallel_size=tp,
                                 world_size=world) for _ in range(world)]
    assert all(kw == kws[0] for kw in kws)
    assert kws[0]["tensor_parallel_size"] == tp and kws[0]["distributed_executor_backend"] == "external_launcher"
    assert kws[0]["max_model_len"] == 4096 and kws[0]["seed"] == 0
    groups = [evaluate.data_parallel_rank(r, world, tp) for r in range(world)]
    assert groups == [(0, 4), (0, 4), (1, 4), (1, 4), (2, 4), (2, 4), (3, 4), (3, 4)]
    shares = [[i for i in range(21) if i % dp_world == dp_rank] for dp_rank, dp_world in groups]
    assert all(shares[r] == shares[r + 1] for r in range(0, world, tp))
    assert sorted(i for s in shares[::tp] for i in s) == list(range(21))
    assert evaluate.data_parallel_rank(3, 4, 1) == (3, 4) and evaluate.data_parallel_rank(0, 1, 4) == (0, 1)
    with pytest.raises(utils.DataError, match="--tensor_parallel_size.*4 GPUs per vLLM engine do not divide the 6"):
        evaluate.data_parallel_rank(0, 6, 4)


def test_generate_lawbench_tensor_parallel_ranks_send_the_same_prompts(tiny_model, tmp_path, monkeypatch):
    """generate_lawbench on each of 4 ranks with --tensor_parallel_size 2 (the rank stubbed; without a process group
    the barriers and gathers are no-ops): ranks 0/1 and 2/3 send the same prompts, only each engine's first rank
    reports them, and every call of every rank gets one max_model_len for the whole run (the longest prompt +
    max_new_tokens, not the model's context)."""
    calls = {}
    cfg = evaluate.GenerateConfig(model=str(tiny_model), lawbench_dir=str(REPO / "data" / "sample" / "lawbench"),
                                  out=str(tmp_path), tasks="1-1,3-1", max_new_tokens=4, model_name="m",
                                  backend="vllm", tensor_parallel_size=2)
    reported = {}
    for rank in (3, 2, 1, 0):  # rank 0 last: it alone writes the files (a finished task is not generated again)
        monkeypatch.setattr(evaluate, "_rank_world", lambda backend, rank=rank: (rank, 4))
        monkeypatch.setattr(utils, "generate", lambda model, prompts, rank=rank, **kw: calls.setdefault(
            rank, []).append((prompts, kw["max_model_len"])) or ["x"] * len(prompts))
        reported[rank] = evaluate.generate_lawbench(cfg)["per_rank"]
    assert calls[0] == calls[1] and calls[2] == calls[3] and calls[0] != calls[2]
    sent = [p for r in (0, 2) for prompts, _ in calls[r] for p in prompts]
    all_prompts = [evaluate.lawbench_prompt(it) for t in ("1-1", "3-1") for it in
                   evaluate.load_lawbench_task(cfg.lawbench_dir, "zero", t)]
    assert sorted(sent) == sorted(all_prompts)  # every item once per engine group, none twice
    want = max(evaluate.prompt_lengths(tiny_model, all_prompts)) + 4
    assert {mml for r in calls for _, mml in calls[r]} == {want}
    assert reported[1] == [0] and reported[0] == [sum(len(prompts) for prompts, _ in calls[0])]  # own counts


@needs_vllm  # without vllm the flag check says that first
def test_tensor_parallel_that_does_not_divide_the_world_is_refused(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc = exit_status(evaluate.main, ["generate", "--model", tiny_model, "--lawbench_dir", REPO / "data" / "sample" /
                                     "lawbench", "--tasks", "1-1", "--out", tmp_path / "o", "--backend", "vllm",
                                     "--tensor_parallel_size", "4"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "4 GPUs per vLLM engine do not divide the 2 torchrun ranks" in err
    assert not (tmp_path / "o").exists()


# ---- finding 9: a checkpoint that needs remote code ----------------------------------------------------------------

def test_native_internlm2_gets_the_conversion_command(tmp_path):
    d = tmp_path / "internlm2-chat-7b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "internlm2", "architectures": ["InternLM2ForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                     "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}}))
    with pytest.raises(utils.DataError) as e:
        utils.check_model_dir(d)
    msg = str(e.value)
    assert e.value.reason == "remote_code" and "\n" not in msg and "tokenizer not loadable" not in msg
    assert f"convert2llama.py --src {d} --tgt {d}-llama" in msg and "trust_remote_code" in msg
