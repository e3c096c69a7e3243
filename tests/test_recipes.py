"""recipes/: the demo end to end (the README's main command), and the paper recipes' commands (dry runs: their real
runs need GPUs and downloaded weights), including that every flag they pass exists in the script they call."""
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import utils

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))  # recipes/demo_summary.py


# ---- the demo: prepare -> SFT x2 -> GRPO -> evaluate -> judge hint -> plots, on the tiny model --------------------

@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo") / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEXLAB_JUDGE")}
    r = subprocess.run(["bash", str(REPO / "recipes" / "demo.sh")], capture_output=True, text=True, timeout=3600,
                       env={**env, "RUN": str(run)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return run, r.stdout


def read_metrics(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def mean(xs) -> float:
    return sum(xs) / len(xs)


def test_demo_sft_loss_falls(demo_run):
    run, _ = demo_run
    s1, s2 = read_metrics(run / "sft_stage1" / "metrics.jsonl"), read_metrics(run / "sft_stage2" / "metrics.jsonl")
    first, last = mean([m["loss"] for m in s1[:20]]), mean([m["loss"] for m in s2[-20:]])
    assert last < 0.5 * first, (first, last)
    assert (run / "sft_stage2" / "final" / "config.json").is_file()


def test_demo_grpo_reward_rises(demo_run):
    run, _ = demo_run
    rewards = [m["reward"] for m in read_metrics(run / "rl" / "metrics.jsonl")]
    assert len(rewards) >= 40
    assert mean(rewards[-20:]) > mean(rewards[:20]) + 0.05, rewards


def test_demo_evaluates_judges_and_plots(demo_run):
    run, out = demo_run
    scores = (run / "eval" / "lawbench" / "scores.csv").read_text().splitlines()
    assert scores[0] == "task,model_name,score,abstention_rate" and len(scores) == 1 + 6 + 1  # 3-7 twice: direct, code
    code = json.loads((run / "eval" / "lawbench" / "code_mode.json").read_text())["zero_shot/3-7"]
    assert code["n"] == 3 and code["ran"] + code["no_code"] == 3 and "| shot/task | direct | code |" in out
    effect = json.loads((run / "eval" / "judgment" / "rag_effect.json").read_text())
    f1 = effect["runs"]["rag_k2"]["charge_micro_f1"]  # labelled, with the items compared and where they came from
    assert set(f1) == {"without_rag", "with_rag", "change"} and effect["items"] == 41
    assert effect["data"] == "data/judgments_test.jsonl"
    samples = [json.loads(x) for x in (run / "rl" / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(s["prompt"].startswith(utils.JUDGMENT_INSTRUCTION) and s["truth"]["charges"] for s in samples)
    assert json.loads((run / "eval" / "longdoc" / "metrics.json").read_text())["questions"] == 10
    assert "skipped: no judge endpoint" in out and "LEXLAB_JUDGE_URL" in out
    assert json.loads((run / "agreement" / "agreement.json").read_text())["n_items"] == 10  # data/expert_votes_sample
    for name in ("data_mix", "length_hist", "sft_curves", "grpo_curves_rl", "code_mode_lawbench", "rag_effect_judgment",
                 "longdoc_longdoc", "lawbench_categories_lawbench_scores"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 10_000, name


def test_demo_ends_with_headline_numbers(demo_run):
    """The demo explains itself: a number per stage and what to expect from a tiny random-init model."""
    run, out = demo_run
    table = out[out.index("headline numbers"):]
    for stage in ("data", "SFT", "GRPO", "LawBench", "code mode", "judgment", "retrieval", "long docs"):
        assert re.search(rf"^  {re.escape(stage)} +\S.*\d", table, re.M), (stage, table)
    assert "not run" not in table and "n/a" not in table, table
    assert "records removed by decontamination" in table and "mean of 6 sample tasks" in table
    assert "lexlab-demo-code" not in table and "zero_shot/3-7: direct" in table
    assert table.count("   -> ") == 8


def test_demo_summary_on_a_partial_run(tmp_path, capsys):
    """Missing stages are said, never filled with a number."""
    import demo_summary
    utils.write_jsonl(tmp_path / "rl" / "metrics.jsonl", [{"step": i, "reward": 0.1 * i, "reward_format": 0.5,
                                                          "reward_charge": 0.0} for i in range(1, 21)])
    assert demo_summary.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "GRPO       reward 0.55 -> 1.55 (means of the first / last 10 of 20 steps; format 0.50 -> 0.50" in out
    assert "data       not run (no data/data_report.json)" in out and "LawBench   not run" in out
    assert "code mode  not run" in out
    assert demo_summary.main([str(tmp_path / "absent")]) == 2


# ---- the paper recipes (dry runs) -----------------------------------------------------------------------------------

def dry_run(script: str, **env) -> list[str]:
    r = subprocess.run(["bash", str(REPO / "recipes" / script)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "DRY_RUN": "1", "MODEL": "/weights", **env})
    assert r.returncode == 0, r.stderr
    return [line[2:] for line in r.stdout.splitlines() if line.startswith("+ ")]


def config_for(argv: list[str]):
    """The config dataclass behind one command line (the script, and evaluate.py's subcommand)."""
    import evaluate
    import judge
    import prepare_data
    import rl
    import sft
    from plots import plots
    script = next(a for a in argv if a.endswith(".py"))
    rest = argv[argv.index(script) + 1:]
    if script == "evaluate.py":
        return {"generate": evaluate.GenerateConfig, "score": evaluate.ScoreConfig,
                "judgment": evaluate.JudgmentConfig, "longdoc": evaluate.LongDocConfig}[rest[0]]
    return {"sft.py": sft.SFTConfig, "rl.py": rl.RLConfig, "prepare_data.py": prepare_data.Config,
            "judge.py": judge.JudgeConfig, "plots/plots.py": plots.PlotConfig}[script]


@pytest.mark.parametrize("script", ["internlm_law.sh", "lexpro.sh"])
def test_recipe_flags_exist(script):
    cmds = dry_run(script)
    assert len(cmds) >= 6
    for cmd in cmds:
        argv = shlex.split(cmd)
        fields = {f.name for f in dataclasses.fields(config_for(argv))}
        for flag in re.findall(r"(?<=\s)--(\w+)", " " + " ".join(a for a in argv if a.startswith("--"))):
            if argv[0] == "torchrun" and flag in ("nproc_per_node", "nnodes"):
                continue
            assert flag in fields, f"{script}: `{cmd}` passes --{flag}, which {argv} does not have"


def test_internlm_law_recipe_hyper_parameters():
    cmds = dry_run("internlm_law.sh")
    assert "--seq_len 32768 --general_ratio 0.2" in cmds[0]
    assert cmds[1].startswith("torchrun") and "--data runs/internlm_law/data/stage1" in cmds[1]
    assert "--lr 1e-5" in cmds[1]
    assert "--init_from runs/internlm_law/sft1/final --data runs/internlm_law/data/stage2" in cmds[2]
    gen = [c for c in cmds if "evaluate.py generate" in c]
    assert len(gen) == 1 and "--shots both" in gen[0] and "--max_new_tokens 1024" in gen[0]
    assert sum(c.startswith("python evaluate.py score") for c in cmds) == 2
    assert any("evaluate.py longdoc" in c for c in cmds) and any("judge.py" in c for c in cmds)
    assert cmds[-1] == "python plots/plots.py --run runs/internlm_law"


def test_lexpro_recipe_commands():
    cmds = dry_run("lexpro.sh", RUN="r")
    assert any(c.startswith("torchrun") and " rl.py " in c and "--prompts r/data/rl_prompts.jsonl" in c for c in cmds)
    judged = [c for c in cmds if "evaluate.py judgment" in c]
    assert len(judged) == 4 and sum("--rag" in c for c in judged) == 2
    manifest = json.loads((REPO / "recipes" / "lexpro_data.json").read_text())
    assert {s["kind"] for s in manifest} == {"judgments", "eval_only"}


def test_recipes_refuse_without_weights():
    for script in ("internlm_law.sh", "lexpro.sh"):
        r = subprocess.run(["bash", str(REPO / "recipes" / script)], capture_output=True, text=True, timeout=60,
                           env={k: v for k, v in os.environ.items() if k not in ("MODEL", "DRY_RUN")})
        assert r.returncode == 2 and "set MODEL=" in r.stderr


def test_lawbench_table_without_lawbench(tmp_path):
    """Without ../shared (a plain clone) the recipe ends with one line saying what it needs, not a realpath error."""
    (tmp_path / "cwd").mkdir()  # ../shared/lawbench relative to it does not exist
    r = subprocess.run(["bash", str(REPO / "recipes" / "lawbench_table.sh")], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path / "cwd")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("lawbench_table.sh: error: ../shared/lawbench: not a LawBench copy"), r.stderr
