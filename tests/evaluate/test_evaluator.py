"""The evaluator against independent references: a multiple-choice YAML task's log-likelihoods against transformers on
the HF export and its acc / acc_norm computed by hand, a hand-worked acc vs acc_norm example, rolling perplexity
against transformers, gold GSM8K chains scoring 100%, batch size 1 == 16, resume without redoing requests, and a
server URL model (llmlab.infer.serve in-process) giving the local model's multiple-choice results."""

import json
import math

import numpy as np
import pytest
import torch

import llmlab
from llmlab.evaluate.evaluator import LocalModel, evaluate
from llmlab.evaluate.tasks import GenerationOptions, builtin_task, load_task_file, task_from_dict
from llmlab.model.hf import save_hf
from tests.cli.test_generate_cli import save_tiny_model
from tests.evaluate.shared import shared_data

QUESTIONS = [
    ("Where did the cat sit?", ["on the mat", "in the park", "on the dog"], 0),
    ("Where did the dog run?", ["on the mat", "in the park", "to the cat", "nowhere"], 1),
    ("What did the user say?", ["hello there", "goodbye", "the cat sat"], 0),
    ("Who sat on the mat?", ["the dog", "the user", "the cat"], 2),
    ("How did the assistant greet?", ["hi", "ran", "sat", "mat"], 0),
]
TEXTS = ["The cat sat on the mat. The dog ran to the park.", "Once upon a time, there was a cat on a mat."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("evaluator") / "model")


@pytest.fixture(scope="module")
def model(checkpoint):
    return llmlab.load(checkpoint)


def mc_task_file(directory):
    """A multiple-choice task YAML over a JSONL of QUESTIONS."""
    directory.mkdir(exist_ok=True)
    (directory / "questions.jsonl").write_text("".join(
        json.dumps({"question": q, "options": c, "label": a}) + "\n" for q, c, a in QUESTIONS))
    path = directory / "mc.yaml"
    path.write_text("name: tiny_mc\nkind: multiple_choice\ndata: questions.jsonl\n"
                    "template: \"Question: {{question}}\\nAnswer:\"\nchoices: options\ntarget: \"{{label}}\"\n"
                    "metrics: [acc, acc_norm, acc_norm_bytes]\n")
    return path


def test_multiple_choice_equals_transformers_on_the_hf_export(checkpoint, model, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(save_hf(model, tmp_path / "hf"), dtype=torch.float32)
    task = load_task_file(mc_task_file(tmp_path / "task"))
    evaluation = evaluate(LocalModel(model), [task])
    samples = evaluation["samples"]["tiny_mc"]
    tokenizer = model.tokenizer
    acc, acc_norm = [], []
    for (question, choices, gold), sample in zip(QUESTIONS, samples, strict=True):
        context = f"Question: {question}\nAnswer:"
        head = tokenizer.encode(context, add_special_tokens=False).ids
        expected = []
        for choice in choices:
            whole = tokenizer.encode(f"{context} {choice}", add_special_tokens=False).ids
            assert whole[:len(head)] == head  # the context's tokens are a prefix here
            with torch.no_grad():
                logprobs = hf(torch.tensor([whole])).logits[0].log_softmax(-1)
            expected.append(sum(logprobs[p - 1, whole[p]].item() for p in range(len(head), len(whole))))
        assert sample["loglikelihoods"] == pytest.approx(expected, abs=1e-4)
        acc.append(float(np.argmax(expected) == gold))
        acc_norm.append(float(np.argmax(np.array(expected) / [len(c) for c in choices]) == gold))
    metrics = evaluation["results"]["tiny_mc"]["metrics"]
    assert metrics["acc"]["value"] == pytest.approx(np.mean(acc))
    assert metrics["acc_norm"]["value"] == pytest.approx(np.mean(acc_norm))
    assert metrics["acc"]["stderr"] == pytest.approx(np.std(acc, ddof=1) / math.sqrt(len(acc)))
    assert metrics["acc"]["n"] == len(QUESTIONS)


class FixedScores:
    """A model whose log-likelihood of a continuation is looked up in a table; it counts what it is asked."""

    can_generate, identity = True, "fixed"

    def __init__(self, table=None, outputs=None):
        self.table, self.outputs, self.calls = table or {}, outputs or {}, 0

    def loglikelihood(self, requests):
        self.calls += len(requests)
        return [(self.table[continuation], False, 1) for _, continuation in requests]

    def generate(self, prompts, options, seed=0):
        self.calls += len(prompts)
        return [[self.outputs[prompt]] * options.n for prompt in prompts]

    def describe(self):
        return {"kind": "fixed"}


def test_acc_and_acc_norm_on_a_hand_worked_example():
    # choice "a" has log-likelihood -2 (per character -2), "bbbb" -4 (per character -1): acc picks "a",
    # acc_norm picks "bbbb"; with the gold answer "bbbb" acc is 0 and acc_norm 1; a second question where both agree
    task = task_from_dict({"name": "hand", "kind": "multiple_choice", "template": "{{q}}", "choices": "options",
                           "target": "{{gold}}", "metrics": ["acc", "acc_norm"],
                           "data": [{"q": "Q1", "options": ["a", "bbbb"], "gold": 1},
                                    {"q": "Q2", "options": ["ccc", "dd"], "gold": 0}]})
    model = FixedScores({" a": -2.0, " bbbb": -4.0, " ccc": -1.0, " dd": -3.0})
    metrics = evaluate(model, [task])["results"]["hand"]["metrics"]
    assert metrics["acc"]["value"] == 0.5 and metrics["acc_norm"]["value"] == 1.0
    assert metrics["acc"]["stderr"] == pytest.approx(0.5)  # s = sqrt(0.5), n = 2: s/sqrt(n) = 0.5
    assert metrics["acc_norm"]["stderr"] == 0.0


def test_perplexity_equals_transformers_over_the_whole_text(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(save_hf(model, tmp_path / "hf"), dtype=torch.float32)
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS))
    task = builtin_task(f"perplexity:{data}")
    result = evaluate(LocalModel(model), [task])["results"]["perplexity"]["metrics"]
    total_ll = total_tokens = total_bytes = total_words = 0
    for text in TEXTS:  # each text after the end-of-text token, which fits in the context here
        ids = [model.config.bos_token_id, *model.tokenizer.encode(text, add_special_tokens=False).ids]
        with torch.no_grad():
            logprobs = hf(torch.tensor([ids])).logits[0].log_softmax(-1)
        total_ll += sum(logprobs[p - 1, ids[p]].item() for p in range(1, len(ids)))
        total_tokens, total_bytes = total_tokens + len(ids) - 1, total_bytes + len(text.encode())
        total_words += len(text.split())
    assert result["perplexity"]["value"] == pytest.approx(math.exp(-total_ll / total_tokens), rel=1e-5)
    assert result["word_perplexity"]["value"] == pytest.approx(math.exp(-total_ll / total_words), rel=1e-5)
    assert result["byte_perplexity"]["value"] == pytest.approx(math.exp(-total_ll / total_bytes), rel=1e-5)
    assert result["bits_per_byte"]["value"] == pytest.approx(-total_ll / total_bytes / math.log(2), rel=1e-5)
    assert result["perplexity"]["method"] == "bootstrap"


def assert_same_choices(got_samples, expected_samples):
    """The same records, log-likelihoods within 1e-5: float32 sums in a batch of another shape may round
    differently in the last bits."""
    for got, expected in zip(got_samples, expected_samples, strict=True):
        got, expected = dict(got), dict(expected)
        assert got.pop("loglikelihoods") == pytest.approx(expected.pop("loglikelihoods"), abs=1e-5)
        assert got == expected


def test_results_are_identical_at_batch_sizes_1_and_16(model, tmp_path):
    task = load_task_file(mc_task_file(tmp_path / "task"))
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS * 3))
    tasks = [task, builtin_task(f"perplexity:{data}")]
    one = evaluate(LocalModel(model, batch_size=1), tasks)
    sixteen = evaluate(LocalModel(model, batch_size=16), tasks)
    assert one["results"] == sixteen["results"]
    assert_same_choices(one["samples"]["tiny_mc"], sixteen["samples"]["tiny_mc"])
    assert one["samples"]["perplexity"] == sixteen["samples"]["perplexity"]


GSM8K_TEST = shared_data("gsm8k", "test.jsonl")


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason="../shared/data/gsm8k is absent")
@pytest.mark.parametrize("name", ["gsm8k", "gsm8k_cot"])
def test_gold_gsm8k_chains_as_outputs_score_100_percent(name):
    task = builtin_task(name, GSM8K_TEST.parent.parent)
    docs = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines()[:20]]

    def gold_output(doc):  # the reference solution in the form each task's prompt asks for
        if name == "gsm8k":
            return " " + doc["answer"]
        steps, number = doc["answer"].rsplit("#### ", 1)
        return f" {' '.join(steps.split())} The answer is {number.strip()}."

    prompts = {}
    model = FixedScores()
    model.generate = lambda prompts_, options, seed=0: [[prompts[p]] for p in prompts_]
    from llmlab.evaluate.evaluator import contexts

    for doc, prompt in zip(docs, contexts(task, docs, task.fewshot.k, 0)):
        prompts[prompt] = gold_output(doc)
    result = evaluate(model, [task], limit=20)["results"][name]["metrics"]
    assert result["exact_match,strict-match"]["value"] == 1.0
    assert result["exact_match,flexible-extract"]["value"] == 1.0
    assert result["exact_match,strict-match"]["n"] == 20


class Counting(LocalModel):
    """A local model that counts the requests it computes."""

    calls = 0

    def loglikelihood(self, requests):
        Counting.calls += len(requests)
        return super().loglikelihood(requests)


def test_a_resumed_evaluation_does_not_redo_finished_requests(model, tmp_path):
    task = load_task_file(mc_task_file(tmp_path / "task"))
    cache = tmp_path / "out" / "requests.jsonl"
    cache.parent.mkdir()
    choices = [len(c) for _, c, _ in QUESTIONS]
    Counting.calls = 0
    first = evaluate(Counting(model), [task], limit=2, cache_file=cache)
    assert Counting.calls == sum(choices[:2])
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])  # killed in the middle of the last answer
    Counting.calls = 0
    second = evaluate(Counting(model), [task], cache_file=cache)
    assert Counting.calls == sum(choices) - sum(choices[:2]) + 1  # the rest, and the one cut short
    fresh = evaluate(LocalModel(model), [task])
    assert second["results"] == fresh["results"]
    assert_same_choices(second["samples"]["tiny_mc"][:2], first["samples"]["tiny_mc"])
    Counting.calls = 0
    evaluate(Counting(model), [task], cache_file=cache)
    assert Counting.calls == 0


def test_a_server_url_model_gives_the_local_model_s_results(checkpoint, model, tmp_path):
    pytest.importorskip("fastapi")
    from llmlab.evaluate.remote import RemoteModel
    from llmlab.infer.engine import AsyncEngine, Engine
    from llmlab.infer.serve import ServeSettings, create_app
    from tests.serve.servers import app_server

    task = load_task_file(mc_task_file(tmp_path / "task"))
    generation = task_from_dict({"name": "greedy", "kind": "generation", "template": "{{q}}", "target": "{{q}}",
                                 "generation": {"max_new_tokens": 6}, "metrics": ["exact_match"],
                                 "data": [{"q": "The cat"}, {"q": "Once upon a"}, {"q": "hello there"}]})
    local = evaluate(LocalModel(model), [task, generation])
    engine = AsyncEngine(Engine(model, model.tokenizer))
    with app_server(create_app(engine, ServeSettings("tiny", model.config.max_seq_len))) as base:
        remote = evaluate(RemoteModel(f"{base}/v1", batch_size=3), [task, generation])
    for metric in ("acc", "acc_norm", "acc_norm_bytes"):
        assert remote["results"]["tiny_mc"]["metrics"][metric] == local["results"]["tiny_mc"]["metrics"][metric]
    for got, expected in zip(remote["samples"]["tiny_mc"], local["samples"]["tiny_mc"], strict=True):
        assert got["loglikelihoods"] == pytest.approx(expected["loglikelihoods"], abs=1e-4)
    # greedy generation through /v1/completions gives the local model's text
    assert [s["outputs"] for s in remote["samples"]["greedy"]] == [s["outputs"] for s in local["samples"]["greedy"]]


def test_generation_options_reach_the_model():
    task = task_from_dict({"name": "echo", "kind": "generation", "template": "{{q}}", "target": "{{a}}",
                           "generation": {"until": "\n", "n": 3, "temperature": 0.5}, "metrics": ["exact_match"],
                           "data": [{"q": "2+2=", "a": "4"}, {"q": "3+3=", "a": "7"}]})
    assert task.generation == GenerationOptions(until=("\n",), n=3, temperature=0.5)
    model = FixedScores(outputs={"2+2=": "4", "3+3=": "6"})
    result = evaluate(model, [task])
    assert result["results"]["echo"]["metrics"]["exact_match"]["value"] == 0.5
    assert result["samples"]["echo"][0]["outputs"] == ["4"] * 3


HUMANEVAL = shared_data("HumanEval.jsonl.gz")


@pytest.mark.skipif(not HUMANEVAL.exists(), reason="../shared/data/HumanEval.jsonl.gz is absent")
def test_humaneval_pass_at_k_of_canonical_and_broken_samples(tmp_path):
    from llmlab.evaluate.execution import read_problems

    problems = list(read_problems(HUMANEVAL).values())[:3]
    task = builtin_task("humaneval", HUMANEVAL.parent, samples=2)
    assert task.generation.n == 2 and task.metrics == ("pass@1",)
    model = FixedScores()
    # problem 0: both samples canonical; 1: one canonical, one broken; 2: both broken
    plans = {p["prompt"]: [p["canonical_solution"] if ok else "    return None\n" for ok in okays]
             for p, okays in zip(problems, [(True, True), (True, False), (False, False)])}
    model.generate = lambda prompts, options, seed=0: [plans[p] for p in prompts]
    evaluation = evaluate(model, [task], limit=3)
    metrics = evaluation["results"]["humaneval"]["metrics"]
    # pass@1 per problem: c/n = 1, 1/2, 0; pass@2 = 1 - C(n-c, 2)/C(2, 2) = 1, 1, 0
    assert metrics["pass@1"]["value"] == pytest.approx(0.5)
    assert metrics["pass@2"]["value"] == pytest.approx(2 / 3)
    assert [s["passed"] for s in evaluation["samples"]["humaneval"]] == [[True, True], [True, False], [False, False]]
    from llmlab.evaluate.report import write_outputs

    written = write_outputs(tmp_path, evaluation)
    assert (tmp_path / "pass_at_k.png") in written
