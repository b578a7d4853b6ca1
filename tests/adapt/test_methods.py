"""Every method end to end through `llmlab finetune` and its recipe on the tiny checkpoint: SFT with LoRA (an adapter
that llmlab.load reads and llmlab merge merges), a reward model, DPO with and without LoRA (resumed equal to
uninterrupted), GRPO with an exact-match reward and PPO with a reward function or the reward model; the preference
pairs of `llmlab finetune-data preference`; the evaluation task's prompt equal to the one trained on."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import llmlab
from llmlab.adapt.finetune import load_recipe
from llmlab.adapt.lora import lora_layers
from llmlab.adapt.reward import REWARD_HEAD_FILE, load_reward_model
from llmlab.adapt.synthetic import corrupt, generate_tasks, preference_pairs, write_tasks
from llmlab.adapt.templates import ALPACA_PROMPTS, Encoder, load_template
from llmlab.cli.main import main
from llmlab.evaluate.evaluator import LocalModel
from llmlab.evaluate.tasks import load_task_file, render
from tests.cli_run import run_cli

ROOT = Path(__file__).parents[2]
RECIPES = ROOT / "recipes"
PROMPT_TEMPLATE = str(RECIPES / "adaptation" / "prompt.jinja")
TASKS = ["addition", "copy", "upper"]
TRAIN = ["train.steps=4", "train.warmup=0", "train.log_every=1", "train.checkpoint_every=2", "train.eval_every=2",
         "train.eval_batches=1", "train.sample_every=0"]
ROLLOUT = ["method.prompts_per_step=2", "method.max_new_tokens=4", "train.steps=2", "train.eval_every=0"]


def finetune(recipe: str, out: Path, checkpoint, data, *extra) -> list[str]:
    """The argv of a tiny run of recipes/finetune-RECIPE.yaml."""
    return ["finetune", str(RECIPES / f"finetune-{recipe}.yaml"), "--out", str(out), "--no-progress",
            f"model.path={checkpoint}", f"data.path={data}", *TRAIN, *extra]


def records(run: Path) -> list[dict]:
    """The step records of a run's metrics.jsonl that carry a training loss."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "loss" in record]


def assert_finite(run: Path, *names: str) -> list[dict]:
    """Every step logged, and its loss and the named metrics finite."""
    logged = records(run)
    assert logged and all(math.isfinite(record[name]) for record in logged for name in ("loss", *names))
    return logged


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks") / "tasks.jsonl", 60, seed=0, tasks=TASKS)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    argv = ["finetune-data", "preference", str(out), "--model", str(tiny_checkpoint), "--n", "40", "--seed", "3",
            "--tasks", ",".join(TASKS), "--max-new-tokens", "8"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, tiny_checkpoint, pairs):
    out = tmp_path_factory.mktemp("reward") / "run"
    assert main(finetune("reward", out, tiny_checkpoint, pairs, f"data.template={PROMPT_TEMPLATE}",
                         "method.batch_size=4", "data.held_out_fraction=0.2")) == 0
    return out


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_checkpoint, pairs):
    out = tmp_path_factory.mktemp("dpo") / "run"
    assert main(finetune("dpo", out, tiny_checkpoint, pairs, f"data.template={PROMPT_TEMPLATE}",
                         "method.batch_size=4")) == 0
    return out


# --- preference pairs ---------------------------------------------------------------------------------------------

def test_preference_pairs_prefer_the_gold_answer_to_the_models_own(pairs, tiny_checkpoint):
    lines = [json.loads(line) for line in pairs.read_text().splitlines()]
    gold = generate_tasks(40, seed=3, tasks=TASKS)
    model = llmlab.load(tiny_checkpoint)
    eos, tokenizer = model.config.eos_token_id, model.tokenizer
    stops = set(getattr(model.generation_config, "eos_token_ids", None) or [eos])
    for line, task in zip(lines, gold, strict=True):
        key = "prompt_input" if task["input"] else "prompt_no_input"
        assert line["prompt"] == ALPACA_PROMPTS[key].format(**task) and line["chosen"] == task["output"]
        assert line["rejected"] != line["chosen"] and line["rejected_from"] in ("model", "corrupted")
    for line in lines[:4]:  # the model's greedy answer, generated here by hand, token by token
        ids = [eos, *tokenizer.encode(line["prompt"], add_special_tokens=False).ids]
        new = []
        for _ in range(8):
            with torch.no_grad():
                token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if token in stops:
                break
            new.append(token)
        answer = tokenizer.decode(new, skip_special_tokens=True).strip()
        if answer and answer != line["chosen"]:
            assert line["rejected_from"] == "model" and line["rejected"] == answer
        else:
            assert line["rejected_from"] == "corrupted"


def test_a_right_answer_is_replaced_by_a_corrupted_one(tiny_checkpoint):
    model = llmlab.load(tiny_checkpoint)
    task = generate_tasks(1, seed=5, tasks=["copy"])[0]
    said = preference_pairs(model, [task], max_new_tokens=8)[0]
    right = {**task, "output": said["rejected"]}  # the gold answer made what the model says
    pair = preference_pairs(model, [right], max_new_tokens=8)[0]
    assert pair["rejected_from"] == "corrupted" and pair["chosen"] == said["rejected"] != pair["rejected"]


def test_exclude_keeps_held_out_prompts_out_of_training(tmp_path):
    def prompts(path):
        return {(row["instruction"], row["input"]) for row in map(json.loads, path.read_text().splitlines())}

    train = prompts(write_tasks(tmp_path / "train.jsonl", 100, seed=0, tasks=["count_letter"]))
    unfiltered = prompts(write_tasks(tmp_path / "a.jsonl", 100, seed=1, tasks=["count_letter"]))
    held_out = prompts(write_tasks(tmp_path / "b.jsonl", 100, seed=1, tasks=["count_letter"],
                                   exclude=[tmp_path / "train.jsonl"]))
    assert train & unfiltered and not train & held_out  # a few hundred prompts: drawn twice, they meet


def test_corrupted_answers_are_near_misses():
    import random

    rng = random.Random(0)
    assert all(0 < abs(int(corrupt("42", rng)) - 42) <= 3 for _ in range(20))
    assert all(int(corrupt("0", rng)) > 0 for _ in range(20))
    assert sorted(corrupt("river stone cloud", rng).split()) == ["cloud", "river", "stone"]
    assert corrupt("river stone cloud", rng) != "river stone cloud"
    assert corrupt("7 7 7", rng) == "7 7" and corrupt("APPLE", rng) == "apple" and corrupt("Return", rng) == "rETURN"


# --- SFT with LoRA --------------------------------------------------------------------------------------------------

def test_sft_with_lora_writes_an_adapter_that_loads_and_merges(tiny_checkpoint, tasks, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(finetune("sft", out, tiny_checkpoint, tasks, "adapter.kind=lora", "method.seq_len=96",
                                         "method.batch_size=4", "train.lr=1e-2"), capsys)
    assert code == 0, err
    assert "LoRA wrapped 8 modules" in stdout  # q, k, v, o of 2 layers (the default target: attention)
    final = out / "final"
    assert sorted(p.name for p in final.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert_finite(out)
    adapted, base = llmlab.load(final), llmlab.load(tiny_checkpoint)
    assert len(lora_layers(adapted)) == 8
    ids = torch.tensor([[5, 17, 33, 2, 9, 40, 11]])
    with torch.no_grad():
        unmerged, before = adapted(ids).logits, base(ids).logits
    assert (unmerged - before).abs().max() > 1e-3  # trained away from the base
    code, _, err = run_cli(["merge", str(final), str(tmp_path / "merged")], capsys)
    assert code == 0, err
    merged = llmlab.load(tmp_path / "merged")
    assert not lora_layers(merged)
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, unmerged, atol=1e-5, rtol=0)


# --- reward model ---------------------------------------------------------------------------------------------------

def test_reward_model_final_loads_and_its_report_is_the_held_out_pairwise_accuracy(reward_run, tiny_checkpoint, pairs):
    final = reward_run / "final"
    assert (final / REWARD_HEAD_FILE).is_file()
    assert_finite(reward_run, "accuracy", "margin")
    report = json.loads((reward_run / "finetune_report.json").read_text())
    model = load_reward_model(final)
    recipe = load_recipe(RECIPES / "finetune-reward.yaml", [f"model.path={tiny_checkpoint}", f"data.path={pairs}",
                                                            f"data.template={PROMPT_TEMPLATE}",
                                                            "data.held_out_fraction=0.2"])
    from llmlab.adapt.data import load_examples

    held_out = load_examples(recipe.data)[2]
    tokenizer = model.model.tokenizer
    encoder = Encoder(tokenizer, load_template(PROMPT_TEMPLATE, tokenizer, model.config.eos_token_id),
                      model.config.eos_token_id, model.config.bos_token_id)
    wins = []
    for pair in held_out:  # scored one at a time, without padding
        with torch.no_grad():
            scores = [float(model(torch.tensor([encoder.encode(pair["prompt"], pair[name])[0]])))
                      for name in ("chosen", "rejected")]
        wins.append(scores[0] > scores[1])
    assert len(held_out) == 8 and report["step"] == 4
    assert report["accuracy"] == pytest.approx(sum(wins) / len(wins))


# --- DPO ------------------------------------------------------------------------------------------------------------

def check_dpo_metrics(run: Path) -> None:
    """At step 1 the policy is its reference: the implicit rewards are 0 and the sigmoid loss is log 2; the margin
    is the chosen reward minus the rejected one; accuracies are fractions."""
    logged = assert_finite(run, "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                           "logps/chosen", "logps/rejected")
    assert [record["step"] for record in logged] == [1, 2, 3, 4]
    first = logged[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-4) and first["rewards/rejected"] == pytest.approx(0,
                                                                                                          abs=1e-4)
    for record in logged:
        assert record["rewards/margins"] == pytest.approx(record["rewards/chosen"] - record["rewards/rejected"],
                                                          abs=1e-5)
        assert 0 <= record["rewards/accuracies"] <= 1
    assert abs(logged[-1]["rewards/chosen"]) > 1e-4  # the policy has moved away from its reference
    assert (run / "reference_logps.safetensors").is_file()


def test_dpo_logs_its_rewards_from_a_start_at_the_reference(dpo_run):
    check_dpo_metrics(dpo_run)
    assert (dpo_run / "final" / "model.safetensors").is_file()


def test_dpo_with_lora_takes_the_base_without_its_adapter_as_reference(tiny_checkpoint, pairs, tmp_path, capsys):
    code, _, err = run_cli(finetune("dpo", tmp_path / "run", tiny_checkpoint, pairs, f"data.template={PROMPT_TEMPLATE}",
                                    "method.batch_size=4", "adapter.kind=lora", "train.lr=1e-2"), capsys)
    assert code == 0, err
    check_dpo_metrics(tmp_path / "run")
    assert (tmp_path / "run" / "final" / "adapter_config.json").is_file()


def test_a_resumed_dpo_run_equals_the_uninterrupted_one(dpo_run, tiny_checkpoint, pairs, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(dpo_run, out)
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoints" / "step-4")  # as if killed after step 3
    code, stdout, err = run_cli(finetune("dpo", out, tiny_checkpoint, pairs, f"data.template={PROMPT_TEMPLATE}",
                                         "method.batch_size=4", "--resume"), capsys)
    assert code == 0, err
    assert "reference log-probabilities reused" in stdout
    assert (out / "final" / "model.safetensors").read_bytes() == (dpo_run / "final" / "model.safetensors").read_bytes()
    timings = ("tokens_per_s", "step_time_s")
    assert [{key: value for key, value in record.items() if key not in timings} for record in records(out)] == \
        [{key: value for key, value in record.items() if key not in timings} for record in records(dpo_run)]


# --- GRPO and PPO ---------------------------------------------------------------------------------------------------

def test_grpo_with_an_exact_match_reward(tiny_checkpoint, tasks, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(finetune("grpo", out, tiny_checkpoint, tasks, *ROLLOUT, "method.num_generations=3"),
                                capsys)
    assert code == 0, err
    assert "grpo: 2 prompts × 3 completions a rollout" in stdout
    logged = assert_finite(out, "reward", "clip_ratio")
    assert len(logged) == 2 and all(0 <= record["reward"] <= 1 for record in logged)
    assert 0 <= json.loads((out / "finetune_report.json").read_text())["reward"] <= 1


@pytest.mark.parametrize("scored_by", ["function", "reward model"])
def test_ppo_with_a_reward_function_or_the_reward_model(scored_by, reward_run, tiny_checkpoint, tasks, tmp_path,
                                                        capsys):
    reward = (["method.reward=exact_match", "method.reward_model=null"] if scored_by == "function" else
              [f"method.reward_model={reward_run / 'final'}", "method.reward=null"])
    out = tmp_path / "run"
    code, _, err = run_cli(finetune("ppo", out, tiny_checkpoint, tasks, *ROLLOUT, *reward, "method.ppo_epochs=2",
                                    "method.minibatches=1"), capsys)
    assert code == 0, err
    assert_finite(out, "reward", "policy_loss", "value_loss", "clip_ratio")
    from safetensors.torch import load_file

    head = load_file(out / "final" / "value_head.safetensors")
    assert sorted(head) == ["value_head.bias", "value_head.weight"] and head["value_head.weight"].shape == (1, 64)
    if scored_by == "reward model":  # the reward model's scores are not all 0, as the tiny model's exact matches are
        assert head["value_head.weight"].abs().sum() > 0  # so the critic has learned from them
    assert (out / "final" / "model.safetensors").is_file()


# --- the evaluation task ------------------------------------------------------------------------------------------

def test_the_synthetic_tasks_ask_with_the_prompt_sft_trains_on(tiny_checkpoint):
    model = llmlab.load(tiny_checkpoint)
    encoder = Encoder(model.tokenizer, load_template("alpaca", model.tokenizer, model.config.eos_token_id),
                      model.config.eos_token_id, model.config.bos_token_id)
    local = LocalModel(model)
    task, addition = (load_task_file(RECIPES / "tasks" / f"synthetic{name}.yaml") for name in ("", "-addition"))
    assert addition.template == task.template and addition.target == task.target == "output"
    docs = [json.loads(line) for line in Path(task.data).read_text().splitlines()]
    assert len(docs) == 200 and {doc["task"] for doc in docs} == {record["task"] for record in generate_tasks(10)}
    for doc in docs[:20]:  # every kind of task, with and without an input
        asked = local.encode(render(task.template, doc))
        assert asked == encoder.encode_prompt({"instruction": doc["instruction"], "input": doc["input"]})


def test_the_demonstration_table_gives_the_mean_and_sample_deviation_over_seeds():
    from llmlab.adapt.report import table

    text = table({"base": {"all": [0.1, 0.1, 0.1]}, "sft": {"all": [0.2, 0.4, 0.6]}}, [0, 1, 2])
    rows = text.splitlines()
    assert rows[0] == "| model | held-out set | exact match % (mean ± sd) | seed 0 | seed 1 | seed 2 |"
    assert rows[2] == "| base | all | 10.0 ± 0.0 | 10.0 | 10.0 | 10.0 |"
    assert rows[3] == "| sft | all | 40.0 ± 20.0 | 20.0 | 40.0 | 60.0 |"  # sd: sqrt((0.2² + 0 + 0.2²) / 2)
