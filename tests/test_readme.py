"""The README's examples run as written: every ```bash block marked "# CPU" runs, in order, on the sample data in a
copy of the repository (conftest.readme_run); every other block says why it cannot run here."""
import pytest

from conftest import CPU_MARK, REPO, readme_bash_blocks

BLOCKS = readme_bash_blocks((REPO / "README.md").read_text(encoding="utf-8"))

# why a block is not run here (first match); a block that is neither marked nor matched fails test_block_runs
NOT_HERE = [("torchrun", "needs GPUs (torchrun)"), ("gpu_check", "the GPU check (tests/test_gpu_check.py runs --tiny)"),
            ("recipes/demo.sh", "the demo (tests/test_recipes.py runs it end to end)"),
            ("pip install", "installs packages"), ("../shared", "needs ../shared (real data, model shapes)"),
            ("OPENAI_API_KEY", "needs an LLM endpoint and a key"), ("--llm_url", "needs an LLM endpoint")]


def why_not(body: str) -> str | None:
    return next((why for key, why in NOT_HERE if key in body), None)


def test_readme_has_cpu_examples():
    marked = [b for _, b in BLOCKS if b.startswith(CPU_MARK)]
    assert len(marked) >= 5 and all(why_not(b) is None for b in marked)  # a marked block needs nothing we lack


@pytest.mark.parametrize("line,body", BLOCKS, ids=[f"line{n}" for n, _ in BLOCKS])
def test_block_runs(line, body, request):
    if not body.startswith(CPU_MARK):
        reason = why_not(body)
        assert reason, f"README.md:{line}: a ```bash block neither marked '{CPU_MARK}' nor needing GPUs / ../shared " \
                       f"/ an endpoint: mark it (it then runs here) or add its reason to NOT_HERE"
        pytest.skip(f"README.md:{line}: {reason}")
    root, results = request.getfixturevalue("readme_run")
    r = results[line]
    assert r.returncode == 0, f"README.md:{line}\n{body}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


def test_cpu_examples_wrote_every_figure(readme_run):
    root, _ = readme_run
    figs = sorted(p.stem for p in (root / "runs" / "cpu" / "plots").glob("*.png"))
    assert figs == ["code_mode_lawbench", "data_mix", "grpo_curves_rl", "lawbench_categories_lawbench_scores",
                    "lawbench_tasks_lawbench_scores", "length_hist", "longdoc_longdoc", "rag_effect_judgment",
                    "sft_curves"], figs
    assert sorted(p.name for p in (root / "figs").iterdir()) == sorted(f"{f}.pdf" for f in figs)
