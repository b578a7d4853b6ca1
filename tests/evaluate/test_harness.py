"""lm-eval's model "llmlab" against lm-eval's own `hf` model on the same weights (saved with save_hf): a local
multiple-choice task (identical acc and acc_norm, every choice's log-likelihood within 1e-4, at batch sizes 1 and 16),
a perplexity task read in rolling windows shorter than the texts, and greedy generate_until requests answered in
batches (the same texts as the hf model's and as one request at a time)."""

import json

import pytest
from lm_eval.api.instance import Instance

import llmlab
from llmlab.model.hf import save_hf
from tests.serve.test_lm_eval import TASK, evaluate, lm_eval, lm_eval_tasks, per_sample, task_directory
from tests.serve.servers import tiny_checkpoint

import llmlab.evaluate  # noqa: F401  registers the model "llmlab"

ROLLING_TASK = "llmlab_tiny_perplexity"
TEXTS = ["The cat sat on the mat. The dog ran to the park.", "Once upon a time, there was a cat on a mat.",
         "hello there, how can I help? The user said hello to the assistant."]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    directory = tmp_path_factory.mktemp("harness")
    checkpoint = tiny_checkpoint(directory / "model", chat_template=False)
    return checkpoint, save_hf(llmlab.load(checkpoint), directory / "hf")


@pytest.mark.parametrize("batch_size", [1, 16])
def test_multiple_choice_equals_lm_eval_s_hf_model(checkpoints, tmp_path, monkeypatch, batch_size):
    checkpoint, hf_dir = checkpoints
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    tasks_dir = task_directory(tmp_path / "tasks")
    expected = evaluate("hf", {"pretrained": str(hf_dir), "device": "cpu", "dtype": "float32"}, tasks_dir)
    got = lm_eval.simple_evaluate(model="llmlab", model_args={"pretrained": str(checkpoint)}, tasks=[TASK],
                                  task_manager=lm_eval_tasks.TaskManager(include_path=str(tasks_dir)),
                                  batch_size=batch_size, log_samples=True, bootstrap_iters=0)
    for metric in ("acc,none", "acc_norm,none"):
        assert got["results"][TASK][metric] == expected["results"][TASK][metric], metric
    got_samples, expected_samples = per_sample(got), per_sample(expected)
    assert sorted(got_samples) == sorted(expected_samples)
    for doc_id, choices in expected_samples.items():
        for (got_ll, got_greedy), (expected_ll, expected_greedy) in zip(got_samples[doc_id], choices, strict=True):
            assert got_ll == pytest.approx(expected_ll, abs=1e-4) and got_greedy == expected_greedy


def test_rolling_perplexity_equals_lm_eval_s_hf_model(checkpoints, tmp_path, monkeypatch):
    checkpoint, hf_dir = checkpoints
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    data = tasks_dir / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS))
    metrics = "".join(f"  - metric: {name}\n" for name in ("word_perplexity", "byte_perplexity", "bits_per_byte"))
    (tasks_dir / f"{ROLLING_TASK}.yaml").write_text(
        f"task: {ROLLING_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        f"metric_list:\n{metrics}")
    manager = lm_eval_tasks.TaskManager(include_path=str(tasks_dir))

    def run(model, model_args):  # windows of 8 tokens: every text takes several
        return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[ROLLING_TASK], task_manager=manager,
                                       batch_size=4, log_samples=True, bootstrap_iters=0)

    expected = run("hf", {"pretrained": str(hf_dir), "device": "cpu", "dtype": "float32", "max_length": 8})
    got = run("llmlab", {"pretrained": str(checkpoint), "max_length": 8})
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert got["results"][ROLLING_TASK][metric] == pytest.approx(expected["results"][ROLLING_TASK][metric],
                                                                     rel=1e-5), metric
    got_totals = [sample["resps"][0][0] for sample in got["samples"][ROLLING_TASK]]
    expected_totals = [sample["resps"][0][0] for sample in expected["samples"][ROLLING_TASK]]
    assert got_totals == pytest.approx(expected_totals, abs=1e-4)


def test_generate_until_in_batches_equals_one_at_a_time_and_lm_eval_s_hf_model(checkpoints):
    from lm_eval.models.huggingface import HFLM

    checkpoint, hf_dir = checkpoints
    short = {"until": [".", "hi"], "max_gen_toks": 12, "do_sample": False}
    long = {"until": ["\n\n", "he"], "max_gen_toks": 20}
    prompts = [("The cat", short), ("Once upon a time, there was", long), ("hello there, how can", short),
               ("The dog ran to the", long), ("The user said hello to the assistant and", short), ("A", long)]
    requests = [Instance("generate_until", {}, (prompt, dict(options)), index) for index, (prompt, options)
                in enumerate(prompts)]
    ours = lm_eval.api.registry.get_model("llmlab")(pretrained=str(checkpoint), batch_size=4)
    batched = ours.generate_until(requests, disable_tqdm=True)
    assert batched == [ours.generate_until([request], disable_tqdm=True)[0] for request in requests]
    hf = HFLM(pretrained=str(hf_dir), device="cpu", dtype="float32", batch_size=1)
    assert batched == hf.generate_until(requests, disable_tqdm=True)
    assert len(set(batched)) == len(batched) and all(batched)
