"""`llmlab finetune`: a tiny SFT run in seconds whose final checkpoint keeps the tokenizer and chat template, resume
equal to an uninterrupted run bit for bit, and bad input refused in one sentence with exit code 2, nothing written."""

import json
import shutil
from pathlib import Path

import pytest

import llmlab
from llmlab.adapt.finetune import load_recipe
from llmlab.adapt.synthetic import write_tasks
from llmlab.errors import ConfigError
from tests.cli_run import run_cli

RECIPE = str(Path(__file__).parents[2] / "recipes" / "finetune-sft.yaml")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks") / "tasks.jsonl", 60, seed=0,
                       tasks=["addition", "copy", "upper"])


def small(checkpoint, data, *extra):
    return [f"model.path={checkpoint}", f"data.path={data}", "method.seq_len=96", "method.batch_size=4",
            "train.steps=4", "train.warmup=0", "train.log_every=1", "train.checkpoint_every=2", "train.eval_every=2",
            "train.eval_batches=1", "train.sample_every=0", *extra]


def finetune(out, checkpoint, data, capsys, *extra):
    return run_cli(["finetune", RECIPE, "--out", str(out), "--no-progress", *small(checkpoint, data), *extra], capsys)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_checkpoint, tasks):
    out = tmp_path_factory.mktemp("finetune") / "run"
    from llmlab.cli.main import main  # run_cli needs capsys, which a module fixture cannot have

    assert main(["finetune", RECIPE, "--out", str(out), "--no-progress", *small(tiny_checkpoint, tasks)]) == 0
    return out


def losses(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records if "loss" in record}


def test_a_finetune_writes_a_loadable_model_with_the_chat_template(finished, tiny_checkpoint):
    final = finished / "final"
    assert (final / "tokenizer_config.json").read_bytes() == (tiny_checkpoint / "tokenizer_config.json").read_bytes()
    model = llmlab.load(final)
    assert model.tokenizer is not None and model.config == llmlab.load(tiny_checkpoint).config
    assert sorted(losses(finished)) == [1, 2, 3, 4]
    assert (finished / "checkpoints" / "step-4").is_dir()
    trained = final.joinpath("model.safetensors").read_bytes()
    assert trained != tiny_checkpoint.joinpath("model.safetensors").read_bytes()


def test_resume_equals_the_uninterrupted_run(finished, tiny_checkpoint, tasks, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoints" / "step-4")  # as if killed after step 3
    code, _, err = finetune(out, tiny_checkpoint, tasks, capsys, "--resume")
    assert code == 0, err
    assert (out / "final" / "model.safetensors").read_bytes() == (finished / "final" / "model.safetensors").read_bytes()
    assert losses(out) == losses(finished)


def test_chatml_messages_with_padding_train(tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    data.write_text("".join(json.dumps({"messages": conversation}) + "\n" for _ in range(8)))
    code, out, err = finetune(tmp_path / "run", tiny_checkpoint, data, capsys, "data.format=messages",
                              "data.template=checkpoint", "method.pack=false", "train.steps=2")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "final" / "generation_config.json").read_text())["eos_token_id"] == [
        llmlab.load(tiny_checkpoint).config.eos_token_id, llmlab.load(tiny_checkpoint).tokenizer.token_to_id(
            "<|im_end|>")]  # generation stops at the end of a turn too


BAD_ROWS = {
    "missing": ({"instruction": "Add 2 and 3."}, "line 2 has no 'output' field, which the alpaca format needs"),
    "empty": ({"instruction": "Add 2 and 3.", "output": ""}, "line 2: the 'output' field is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_lines_exit_2_in_one_sentence_and_write_nothing(case, tiny_checkpoint, tmp_path, capsys):
    row, message = BAD_ROWS[case]
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps(row) + "\n")
    code, _, err = finetune(tmp_path / "run", tiny_checkpoint, data, capsys, "data.format=alpaca")
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "run").exists()


def test_identical_preference_pair_and_template_without_its_field(tiny_checkpoint, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "4"}) + "\n")
    code, _, err = finetune(tmp_path / "run", tiny_checkpoint, pairs, capsys, "data.format=auto")
    assert code == 2 and "the chosen and rejected replies are identical" in err
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                             {"role": "assistant", "content": "b"}]}) + "\n")
    code, _, err = finetune(tmp_path / "run", tiny_checkpoint, chat, capsys, "data.format=messages",
                            "data.template=alpaca")
    assert code == 2 and "the alpaca template needs the field 'instruction'" in err
    assert not (tmp_path / "run").exists()


def test_unknown_method_field_and_existing_run_are_refused(finished, tiny_checkpoint, tasks, tmp_path, capsys):
    code, _, err = finetune(tmp_path / "run", tiny_checkpoint, tasks, capsys, "method.packing=true")
    assert code == 2 and "'method.packing=true' names no field of method" in err
    before = (finished / "final" / "model.safetensors").read_bytes()
    code, _, err = finetune(finished, tiny_checkpoint, tasks, capsys)
    assert code == 2 and "already holds a run" in err
    assert (finished / "final" / "model.safetensors").read_bytes() == before
    with pytest.raises(ConfigError, match="the sft method has no parameter 'beta'"):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"model: {{path: {tiny_checkpoint}}}\ndata: {{path: {tasks}}}\n"
                          "method: {name: sft, beta: 1}\n")
        load_recipe(recipe)


def test_finetune_data_synthetic_writes_and_keeps_files(tmp_path, capsys):
    out = tmp_path / "tasks.jsonl"
    code, stdout, _ = run_cli(["finetune-data", "synthetic", str(out), "--n", "12", "--tasks", "addition,sort"],
                              capsys)
    assert code == 0 and len(out.read_text().splitlines()) == 12 and "wrote 12 tasks" in stdout
    before = out.read_bytes()
    code, _, err = run_cli(["finetune-data", "synthetic", str(out), "--n", "3"], capsys)
    assert code == 2 and "already exists" in err and out.read_bytes() == before
