"""lm-evaluation-harness's `local-completions` model pointed at `llmlab serve` scores a multiple-choice task exactly as
lm-eval's own `hf` model does on the same weights (saved with save_hf): the same acc and acc_norm, and every
per-choice loglikelihood (and is-greedy flag) of every sample. lm-eval sends the prompt as token ids with echo, logprobs 1
and max_tokens 1, and sums the echoed prompt log-probabilities of the continuation."""

import json

import pytest

import llmlab
from llmlab.model.hf import save_hf
from tests.serve.servers import API_KEY, cli_server, tiny_checkpoint

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install lm-eval)")
lm_eval_tasks = pytest.importorskip("lm_eval.tasks")
pytest.importorskip("accelerate", reason="lm-eval's hf model needs accelerate (pip install lm-eval[hf])")
pytest.importorskip("tenacity", reason="lm-eval's API models need tenacity (pip install lm-eval[api])")
pytest.importorskip("datasets")
pytest.importorskip("llmlab.infer.engine", reason="llmlab serve runs on llmlab.infer.engine")

NAME = "tiny"
TASK = "llmlab_tiny_mc"
QUESTIONS = [
    ("Where did the cat sit?", ["on the mat", "in the park", "on the dog"], 0),
    ("Where did the dog run?", ["on the mat", "in the park", "to the cat", "nowhere"], 1),
    ("What did the user say?", ["hello there", "goodbye", "the cat sat"], 0),
    ("What did the assistant ask?", ["where is the mat", "how can I help", "who ran", "why"], 1),
    ("Who sat on the mat?", ["the dog", "the user", "the cat"], 2),
    ("Who ran in the park?", ["the dog", "the mat", "the assistant", "the cat"], 0),
    ("What is on the mat?", ["a park", "the cat", "hello"], 1),
    ("How did the assistant greet?", ["hi", "ran", "sat", "mat"], 0),
]


def task_directory(directory):
    """A local multiple-choice task: a JSONL of QUESTIONS and the YAML that reads it."""
    directory.mkdir()
    data = directory / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": question, "choices": choices, "answer": answer}) + "\n"
                            for question, choices, answer in QUESTIONS))
    metrics = "".join(f"  - metric: {name}\n    aggregation: mean\n    higher_is_better: true\n"
                      for name in ("acc", "acc_norm"))
    (directory / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
        "doc_to_choice: choices\n"
        "doc_to_target: answer\n"
        f"metric_list:\n{metrics}")
    return directory


def evaluate(model: str, model_args: dict, tasks_dir) -> dict:
    manager = lm_eval_tasks.TaskManager(include_path=str(tasks_dir))
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[TASK], task_manager=manager,
                                   batch_size=1, log_samples=True, bootstrap_iters=0)


def per_sample(results: dict) -> dict[int, list[tuple[float, bool]]]:
    """doc id -> the (loglikelihood, is greedy) of each choice."""
    return {sample["doc_id"]: [tuple(response[0]) for response in sample["resps"]]
            for sample in results["samples"][TASK]}


def test_local_completions_over_llmlab_serve_equals_lm_eval_s_hf_model(tmp_path, monkeypatch):
    checkpoint = tiny_checkpoint(tmp_path / "model", chat_template=False)
    hf_dir = save_hf(llmlab.load(checkpoint), tmp_path / "hf")
    tasks_dir = task_directory(tmp_path / "tasks")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)  # local-completions sends it as the bearer token

    reference = evaluate("hf", {"pretrained": str(hf_dir), "device": "cpu", "dtype": "float32"}, tasks_dir)
    with cli_server(checkpoint, "--served-model-name", NAME, env={"LLMLAB_API_KEY": API_KEY}) as (base, _):
        served = evaluate("local-completions", {
            "model": NAME, "base_url": f"{base}/v1/completions", "tokenizer": str(hf_dir),
            "tokenizer_backend": "huggingface", "tokenized_requests": True, "num_concurrent": 1, "max_retries": 1,
        }, tasks_dir)

    got, expected = served["results"][TASK], reference["results"][TASK]
    for metric in ("acc,none", "acc_norm,none"):
        assert got[metric] == expected[metric], metric
    got_samples, expected_samples = per_sample(served), per_sample(reference)
    assert sorted(got_samples) == sorted(expected_samples) == list(range(len(QUESTIONS)))
    for doc_id, choices in expected_samples.items():
        assert len(got_samples[doc_id]) == len(choices) == len(QUESTIONS[doc_id][1])
        for (got_ll, got_greedy), (expected_ll, expected_greedy) in zip(got_samples[doc_id], choices, strict=True):
            assert got_ll == pytest.approx(expected_ll, abs=1e-4), doc_id
            assert got_greedy == expected_greedy, doc_id
