"""One prompt budget and one 'generate only what fits' for every generation path (issue 24, items 2 / 3 / 8):
utils.generate_within_budget (evaluate generate / judgment / longdoc, judge.py), utils.until_stop (utils.generate and
rl.py's HF rollouts), --max_prompt_tokens (one name, one meaning, one help text in rl / evaluate / judge)."""
import dataclasses


import evaluate
import judge
import rl
import utils


def test_until_stop_cuts_at_the_first_stop_token():
    assert utils.until_stop([5, 6, 2, 9, 2], {2}) == ([5, 6], False)  # generate: the stop token dropped
    assert utils.until_stop([5, 6, 2, 9, 2], {2}, keep_stop=True) == ([5, 6, 2], False)  # rl.py: kept, trained on
    assert utils.until_stop([5, 6, 7], {2, 3}) == ([5, 6, 7], True)  # no stop token: max_new_tokens was hit


def test_max_prompt_tokens_caps_the_context_budget(tiny_model):
    room = utils.model_context(tiny_model) - 8
    assert utils.prompt_budget(tiny_model, 8) == room
    assert utils.prompt_budget(tiny_model, 8, 100) == 100
    assert utils.prompt_budget(tiny_model, 8, room + 1000) == room  # a cap, never past the model's context
    configs = [rl.RLConfig, evaluate.GenerateConfig, evaluate.JudgmentConfig, evaluate.LongDocConfig,
               judge.JudgeConfig]
    helps = {c.__name__: {f.name: f.metadata.get("help") for f in dataclasses.fields(c)} for c in configs}
    assert all(h["max_prompt_tokens"] == utils.MAX_PROMPT_TOKENS_HELP and "max_context" not in h
               for h in helps.values())


def test_generate_within_budget_refuses_and_tokenizes_once(tiny_model, monkeypatch):
    """The prompts over the budget are never sent and come back with their token counts; the ones sent are the
    ids counted (tokenized once, not again inside generate); nothing fits -> no backend call (world of one), but
    every torchrun rank calls it, an empty share too."""
    prompts = {3: "短", 7: "长" * 400, 9: "被告人张三"}
    lengths = dict(zip(prompts, evaluate.prompt_lengths(tiny_model, list(prompts.values()))))
    encodes, real_encode, real_generate = [], utils.encode_prompts, utils.generate

    def counting_encode(tok, texts, chat=True):
        encodes.append(len(texts))
        return real_encode(tok, texts, chat)
    monkeypatch.setattr(utils, "encode_prompts", counting_encode)
    budget = max(lengths[3], lengths[9])
    gen, over = utils.generate_within_budget(tiny_model, prompts, budget, max_new_tokens=2)
    assert list(gen) == [3, 9] and all(isinstance(t, str) for t in gen.values())
    assert over == {7: lengths[7]} and encodes == [3]  # one tokenization of the three prompts, none in generate
    assert gen == dict(zip([3, 9], real_generate(tiny_model, [prompts[3], prompts[9]], max_new_tokens=2)))

    calls = []
    monkeypatch.setattr(utils, "generate", lambda model, texts, **kw: calls.append(texts) or [])
    assert utils.generate_within_budget(tiny_model, {7: prompts[7]}, budget) == ({}, {7: lengths[7]})
    assert calls == []
    assert utils.generate_within_budget(tiny_model, {7: prompts[7]}, budget, world=2) == ({}, {7: lengths[7]})
    assert calls == [[]]


def test_judge_refuses_a_question_over_the_budget(tmp_path, tiny_model, monkeypatch, capsys):
    """judge.py --model_a with --max_prompt_tokens: the long question gets an empty answer (counted), never sent."""
    qs = [{"id": "q0", "question": "醉驾如何处罚？", "reference": "拘役。"},
          {"id": "q1", "question": "长" * 400, "reference": "拘役。"}]
    sent = []
    monkeypatch.setattr(utils, "generate", lambda model, texts, **kw: sent.extend(texts) or ["答"] * len(texts))
    cfg = judge.JudgeConfig(questions="-", llm_url="-", llm_model="-", out=str(tmp_path), model_a=str(tiny_model),
                            max_prompt_tokens=64)
    name, answers = judge.get_answers("a", cfg, qs, tmp_path)
    assert answers == {"q0": "答", "q1": ""} and sent == ["醉驾如何处罚？"]
    assert "1 question(s) longer than the 64-token prompt budget" in capsys.readouterr().err

