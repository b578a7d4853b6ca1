"""Fine-tuning data: every format read from every container and normalised, bad records refused naming file and
line, mixtures by the T5/FLAN and OPT-IML rules on hand-counted examples, a seeded held-out split, and synthetic
tasks whose answers are right."""

import json

import datasets
import pytest

from llmlab.adapt.data import DataSource, FinetuneData, load_examples, mixture_counts, read_dataset
from llmlab.adapt.synthetic import generate_tasks, write_tasks
from llmlab.errors import ConfigError, DataError


def jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def records(path, form="auto"):
    return read_dataset(DataSource(str(path), form))


def test_alpaca_jsonl(tmp_path):
    file = jsonl(tmp_path / "a.jsonl", [{"instruction": "Add", "input": "2 3", "output": "5"},
                                        {"instruction": "Say hi", "output": "hi"}])
    assert records(file) == ("alpaca", [{"prompt": {"instruction": "Add", "input": "2 3"}, "response": "5"},
                                        {"prompt": {"instruction": "Say hi", "input": ""}, "response": "hi"}])


def test_prompt_completion_json_file(tmp_path):
    file = tmp_path / "p.json"
    file.write_text(json.dumps([{"prompt": "2+2=", "completion": "4"}]))
    assert records(file) == ("prompt_completion", [{"prompt": "2+2=", "response": "4"}])


def test_openai_and_sharegpt_messages_in_parquet(tmp_path):
    openai = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    sharegpt = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    datasets.Dataset.from_list([{"messages": openai}]).to_parquet(str(tmp_path / "o.parquet"))
    datasets.Dataset.from_list([{"conversations": sharegpt}]).to_parquet(str(tmp_path / "s.parquet"))
    expected = [{"prompt": [{"role": "user", "content": "hi"}], "response": "hello"}]
    assert records(tmp_path / "o.parquet") == ("messages", expected)
    assert records(tmp_path / "s.parquet") == ("messages", expected)


def test_preference_as_text_and_as_messages_with_an_implicit_prompt(tmp_path):
    user = {"role": "user", "content": "2+2?"}
    file = jsonl(tmp_path / "p.jsonl", [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"chosen": [user, {"role": "assistant", "content": "4"}],
         "rejected": [user, {"role": "assistant", "content": "5"}]}])
    assert records(file) == ("preference", [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
                                            {"prompt": [user], "chosen": "4", "rejected": "5"}])


def test_prompts_keep_their_other_columns_from_a_saved_dataset(tmp_path):
    datasets.Dataset.from_list([{"prompt": "2+2?", "answer": "4"}]).save_to_disk(str(tmp_path / "saved"))
    assert records(tmp_path / "saved") == ("prompts", [{"prompt": "2+2?", "answer": "4"}])


@pytest.mark.parametrize("row, form, message", [
    ({"instruction": "Add"}, "alpaca", r"line 2 has no 'output' field, which the alpaca format needs"),
    ({"instruction": "Add", "output": "  "}, "alpaca", r"line 2: the 'output' field is empty"),
    ({"prompt": "2+2?", "chosen": "4", "rejected": "4"}, "preference", "line 2: the chosen and rejected replies "
                                                                        "are identical"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "line 2: the conversation does not end with "
                                                                    "an assistant reply"),
    ({"prompt": "x"}, "prompt_completion", "line 2 has no 'completion' field"),
])
def test_bad_records_are_refused_naming_file_and_line(tmp_path, row, form, message):
    good = {"alpaca": {"instruction": "a", "output": "b"}, "preference": {"prompt": "a", "chosen": "b",
            "rejected": "c"}, "messages": {"messages": [{"role": "user", "content": "a"},
                                                        {"role": "assistant", "content": "b"}]},
            "prompt_completion": {"prompt": "a", "completion": "b"}}[form]
    file = jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError, match=rf"bad\.jsonl {message}"):
        records(file, form)


def test_a_line_that_is_not_json_is_named(tmp_path):
    file = tmp_path / "bad.jsonl"
    file.write_text('{"instruction": "a", "output": "b"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad\.jsonl line 2 is not valid JSON"):
        records(file)


def test_examples_proportional_mixing_caps_each_dataset_as_t5():
    # Raffel et al. 2020 §3.5.2: r_m = min(e_m, K) / sum_n min(e_n, K)
    assert mixture_counts([10, 100, 1000], [None] * 3, [50] * 3) == [10, 50, 50]
    assert mixture_counts([10, 100], [None, None], [None, None]) == [10, 100]
    assert mixture_counts([10, 110], [3.0, 1.0], [None, None]) == [90, 30]  # 120 examples split 3:1


def test_mixture_held_out_and_pretraining_ratio(tmp_path):
    small = jsonl(tmp_path / "small.jsonl", [{"prompt": f"s{i}", "completion": "x"} for i in range(10)])
    large = jsonl(tmp_path / "large.jsonl", [{"prompt": f"l{i}", "completion": "y"} for i in range(40)])
    text = tmp_path / "text.txt"
    text.write_text("one block\n\nanother block\n")
    data = FinetuneData(sources=(DataSource(str(small)), DataSource(str(large))), cap=20, held_out_fraction=0.1,
                        pretraining=str(text), pretraining_ratio=0.25, seed=3)
    kind, examples, held_out = load_examples(data)
    assert kind == "sft"
    assert len(held_out) == 1 + 4  # 10% of each dataset
    instructions = [e for e in examples if "prompt" in e]
    assert sum(e["prompt"].startswith("s") for e in instructions) == 9  # all of small's training examples
    assert sum(e["prompt"].startswith("l") for e in instructions) == 20  # large capped at 20
    assert sum("text" in e for e in examples) == 10  # 29 examples + 10 text: text is ceil(29 / 3), a quarter
    assert not {e["prompt"] for e in held_out} & {e["prompt"] for e in instructions}
    assert load_examples(data) == (kind, examples, held_out)  # seeded
    assert load_examples(FinetuneData(**{**data.__dict__, "seed": 4}))[2] != held_out


def test_sources_of_different_kinds_are_refused(tmp_path):
    a = jsonl(tmp_path / "a.jsonl", [{"prompt": "a", "completion": "b"}] * 2)
    b = jsonl(tmp_path / "b.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 2)
    with pytest.raises(ConfigError, match="mix records of different kinds"):
        load_examples(FinetuneData(sources=(DataSource(str(a)), DataSource(str(b)))))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        records(tmp_path / "none.jsonl")


def test_synthetic_tasks_have_the_right_answers(tmp_path):
    tasks = generate_tasks(60, seed=5, tasks=["addition", "multiplication", "reverse", "sort", "count_letter",
                                             "count_words", "copy", "upper", "lower"])
    for task in tasks:
        numbers = [int(n) for n in task["instruction"].replace("?", " ").replace(".", " ").split() if n.isdigit()]
        given = task["input"]
        expected = {"addition": lambda: str(sum(numbers)), "multiplication": lambda: str(numbers[0] * numbers[1]),
                    "reverse": lambda: " ".join(given.split()[::-1]),
                    "sort": lambda: " ".join(sorted(given.split(), key=int)),
                    "count_letter": lambda: str(given.count(task["instruction"].split("letter ")[-1][0])
                                                if "letter" in task["instruction"] else
                                                given.count(task["instruction"].split("does ")[1][0])),
                    "count_words": lambda: str(len(given.split())), "copy": lambda: given,
                    "upper": lambda: given.upper(), "lower": lambda: given.lower()}[task["task"]]()
        assert task["output"] == expected, task
    assert len({task["instruction"] for task in tasks if task["task"] == "addition"}) > 1  # several phrasings
    path = write_tasks(tmp_path / "tasks.jsonl", 5, seed=1, tasks=["lookup"])
    assert all(json.loads(line)["output"] for line in path.read_text().splitlines())
    with pytest.raises(ConfigError, match="already exists"):
        write_tasks(path, 5)
