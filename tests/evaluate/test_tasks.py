"""Task YAML: validation with one-sentence errors naming the field and the file, data in JSONL, JSON, Parquet and
datasets directories found beside the YAML or under --data-dir, lm-eval's prompt layout with demonstrations on a
hand-written example, the built-in tasks and the shipped examples in recipes/tasks."""

import json
from pathlib import Path

import pytest

from llmlab.errors import ConfigError, DataError
from llmlab.evaluate.evaluator import contexts
from llmlab.evaluate.tasks import builtin_task, doc_choices, doc_gold, load_documents, load_task_file, resolve_tasks
from tests.evaluate.shared import ROOT, shared_data

DOCS = [{"q": "2 + 2?", "options": ["3", "4"], "label": 1}, {"q": "3 + 3?", "options": ["6", "7"], "label": 0},
        {"q": "1 + 4?", "options": ["5", "2"], "label": 0}]
TASK = ("name: sums\nkind: multiple_choice\ndata: sums.jsonl\ntemplate: \"Q: {{q}}\\nA:\"\nchoices: options\n"
        "target: \"{{label}}\"\n")


def write_task(directory: Path, text: str = TASK, docs=DOCS, name="sums.jsonl") -> Path:
    (directory / name).write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    path = directory / "task.yaml"
    path.write_text(text)
    return path


def test_a_task_file_loads_with_lm_eval_s_defaults(tmp_path):
    task = load_task_file(write_task(tmp_path))
    assert (task.name, task.kind, task.metrics, task.fewshot.k) == ("sums", "multiple_choice", ("acc", "acc_norm"), 0)
    assert task.data == (tmp_path / "sums.jsonl").resolve()
    docs = load_documents(task.data, None, task.source)
    assert [doc_choices(task, doc) for doc in docs] == [["3", "4"], ["6", "7"], ["5", "2"]]
    assert [doc_gold(task, doc, doc["options"]) for doc in docs] == [1, 0, 0]


def test_demonstrations_come_in_lm_eval_s_layout(tmp_path):
    task = load_task_file(write_task(tmp_path, TASK + "description: \"Sums.\\n\\n\"\nfewshot: {k: 1}\n"))
    docs = load_documents(task.data, None, task.source)
    # the first document other than the query, with its gold choice's text, a blank line, then the query
    assert contexts(task, docs, 1, 0) == ["Sums.\n\nQ: 3 + 3?\nA: 6\n\nQ: 2 + 2?\nA:",
                                          "Sums.\n\nQ: 2 + 2?\nA: 4\n\nQ: 3 + 3?\nA:",
                                          "Sums.\n\nQ: 2 + 2?\nA: 4\n\nQ: 1 + 4?\nA:"]
    assert contexts(task, docs, 0, 0)[0] == "Sums.\n\nQ: 2 + 2?\nA:"


def test_random_demonstrations_are_seeded(tmp_path):
    task = load_task_file(write_task(tmp_path, TASK + "fewshot: {k: 1, selection: random}\n"))
    docs = load_documents(task.data, None, task.source)
    assert contexts(task, docs, 1, 3) == contexts(task, docs, 1, 3)
    for prompt, doc in zip(contexts(task, docs, 1, 3), docs):
        assert prompt.count("Q:") == 2 and prompt.endswith(f"Q: {doc['q']}\nA:")
        assert prompt.index(f"Q: {doc['q']}") > 0  # the query is never its own demonstration


@pytest.mark.parametrize("suffix", ["json", "parquet", "dataset"])
def test_json_parquet_and_datasets_directories_give_the_same_documents(tmp_path, suffix):
    if suffix == "json":
        (tmp_path / "sums.json").write_text(json.dumps(DOCS))
        data = "sums.json"
    else:
        datasets = pytest.importorskip("datasets")
        dataset = datasets.Dataset.from_list(DOCS)
        if suffix == "parquet":
            dataset.to_parquet(str(tmp_path / "sums.parquet"))
            data = "sums.parquet"
        else:
            dataset.save_to_disk(str(tmp_path / "sums_dataset"))
            data = "sums_dataset"
    (tmp_path / "task.yaml").write_text(TASK.replace("sums.jsonl", data))
    task = load_task_file(tmp_path / "task.yaml")
    assert load_documents(task.data, task.split, task.source) == DOCS


def test_relative_data_is_found_under_the_data_dir(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "tasks").mkdir()
    (tmp_path / "data" / "sums.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    (tmp_path / "tasks" / "task.yaml").write_text(TASK)
    with pytest.raises(DataError, match=r"sums.jsonl .*does not exist"):
        load_task_file(tmp_path / "tasks" / "task.yaml")
    task = load_task_file(tmp_path / "tasks" / "task.yaml", data_dir=tmp_path / "data")
    assert task.data == (tmp_path / "data" / "sums.jsonl").resolve()


@pytest.mark.parametrize("addition, words", [
    ("temperature: 3\n", ["unknown field 'temperature'", "task.yaml"]),
    ("fewshot: {k: 1, shots: 2}\n", ["unknown field 'shots'", "fewshot", "task.yaml"]),
    ("generation: {max_tokens: 5}\n", ["unknown field 'max_tokens'", "generation"]),
    ("normalize: {lowercase: true}\n", ["unknown field 'lowercase'", "normalize"]),
    ("metrics: [bleu]\n", ["'bleu'", "multiple_choice"]),
    ("fewshot: {k: 1, selection: nearest}\n", ["'nearest'", "bm25"]),
    ("fewshot: {k: -1}\n", ["fewshot.k"]),
])
def test_a_bad_field_is_one_sentence_naming_it_and_the_file(tmp_path, addition, words):
    with pytest.raises(ConfigError) as error:
        load_task_file(write_task(tmp_path, TASK + addition))
    for word in words:
        assert word in str(error.value)
    assert str(error.value).count(". ") == 0 and "\n" not in str(error.value)


def test_a_wrong_kind_and_a_missing_field_are_named(tmp_path):
    with pytest.raises(ConfigError, match="kind 'choice'"):
        load_task_file(write_task(tmp_path, TASK.replace("multiple_choice", "choice")))
    with pytest.raises(ConfigError, match="no 'choices' field"):
        load_task_file(write_task(tmp_path, TASK.replace("choices: options\n", "")))


def test_a_template_variable_missing_from_the_data_is_named(tmp_path):
    from llmlab.evaluate.evaluator import evaluate

    task = load_task_file(write_task(tmp_path, TASK.replace("{{q}}", "{{question}}")))

    class Nothing:
        can_generate, identity = True, "nothing"

        def describe(self):
            return {}

    with pytest.raises(ConfigError, match=r"template of task sums .*task.yaml.* uses 'question'.*have label, opt"):
        evaluate(Nothing(), [task])  # before any request


def test_a_missing_data_file_is_a_data_error(tmp_path):
    (tmp_path / "task.yaml").write_text(TASK)
    with pytest.raises(DataError, match="the data file sums.jsonl of .*task.yaml does not exist"):
        load_task_file(tmp_path / "task.yaml")
    with pytest.raises(ConfigError, match="the task file .*nothing.yaml does not exist"):
        load_task_file(tmp_path / "nothing.yaml")


def test_unknown_and_dataless_built_in_tasks(tmp_path):
    with pytest.raises(ConfigError, match="no task 'mmlu'.*gsm8k"):
        resolve_tasks("mmlu", tmp_path)
    with pytest.raises(ConfigError, match="--data-dir"):
        resolve_tasks("gsm8k")
    with pytest.raises(DataError, match="gsm8k/test.jsonl"):
        resolve_tasks("gsm8k", tmp_path)
    with pytest.raises(DataError, match="perplexity data nowhere does not exist"):
        resolve_tasks("perplexity:nowhere")


def test_perplexity_reads_text_files_directories_and_shards(tmp_path):
    from llmlab.data.shards import tokenize_to_shards
    from tests.cli.test_generate_cli import word_tokenizer

    (tmp_path / "one.txt").write_text("The cat sat on the mat.")
    (tmp_path / "two.txt").write_text("The dog ran in the park.")
    assert load_documents(builtin_task(f"perplexity:{tmp_path / 'one.txt'}").data, None, "") == [
        {"text": "The cat sat on the mat."}]
    assert [doc["text"] for doc in load_documents(builtin_task(f"perplexity:{tmp_path}").data, None, "")] == [
        "The cat sat on the mat.", "The dog ran in the park."]
    tokenizer = word_tokenizer()
    tokenize_to_shards(["The cat sat on the mat.", "The dog ran in the park."], tokenizer, tmp_path / "shards")
    docs = load_documents(builtin_task(f"perplexity:{tmp_path / 'shards'}").data, None, "")
    assert [doc["tokens"] for doc in docs] == [tokenizer.encode("The cat sat on the mat.").ids,
                                               tokenizer.encode("The dog ran in the park.").ids]


GSM8K = shared_data("gsm8k", "test.jsonl")


@pytest.mark.skipif(not GSM8K.exists(), reason="../shared/data/gsm8k is absent")
def test_the_gsm8k_tasks_follow_lm_eval(tmp_path):
    data_dir = GSM8K.parent.parent
    gsm8k, cot, zeroshot, sc = (builtin_task(name, data_dir, samples=4) for name in
                                ("gsm8k", "gsm8k_cot", "gsm8k_cot_zeroshot", "gsm8k_cot_sc"))
    docs = load_documents(gsm8k.data, None, "")[:1]
    train = [json.loads(line) for line in (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()[:8]]
    expected = "".join(f"Question: {d['question']}\nAnswer: {d['answer']}\n\n" for d in train)
    assert contexts(gsm8k, docs, 8, 0) == [expected + f"Question: {docs[0]['question']}\nAnswer:"]
    assert gsm8k.generation.until == ("Question:", "</s>", "<|im_end|>")
    prompt = contexts(cot, docs, 8, 0)[0]
    assert prompt.startswith("Q: There are 15 trees in the grove.") and prompt.count("The answer is") == 8
    assert prompt.endswith(f"\n\nQ: {docs[0]['question']}\nA:")
    assert contexts(zeroshot, docs, 0, 0) == [f"Q: {docs[0]['question']}\nA: Let's think step by step."]
    assert sc.vote and sc.generation.n == 4 and sc.generation.temperature == 0.7


def test_the_shipped_example_tasks_load_and_their_templates_fit_their_data():
    from llmlab.evaluate.tasks import check_templates

    files = sorted((ROOT / "recipes" / "tasks").glob("*.yaml"))
    assert len(files) >= 3
    for path in files:
        task = load_task_file(path)
        docs = load_documents(task.data, task.split, task.source)
        check_templates(task, docs)
        assert contexts(task, docs, task.fewshot.k, 0)
