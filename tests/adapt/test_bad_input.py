"""Bad input to `llmlab finetune`, `llmlab finetune-data` and `llmlab merge` (and llmlab.load of an adapter): one
sentence on stderr, exit code 2, and nothing written or overwritten."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import llmlab
from llmlab.errors import CheckpointError
from tests.cli_run import run_cli

ROOT = Path(__file__).parents[2]
TINY = ["train.steps=2", "train.warmup=0", "train.sample_every=0", "train.eval_every=0"]


def files_of(directory: Path) -> dict[str, str]:
    """Each file below directory (by relative path) and the SHA-256 of its bytes."""
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def refused(code: int, err: str, words: str) -> None:
    """Exit code 2 and one line on stderr, `error: ` and a sentence holding words, no traceback."""
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert words in err, err
    assert err.strip().endswith(".")


def finetune(method: str, out: Path, checkpoint, data, capsys, *extra):
    recipe = ROOT / "recipes" / f"finetune-{method}.yaml"
    return run_cli(["finetune", str(recipe), "--out", str(out), "--no-progress", f"model.path={checkpoint}",
                    f"data.path={data}", *TINY, *extra], capsys)


def jsonl(path: Path, *rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


GOOD_PAIR = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}
CHAT = [{"role": "user", "content": "What is 2 + 2?"}]
BAD_DATA = {  # method, format, the bad line, what the sentence says
    "preference line without rejected": ("dpo", "preference", {"prompt": "What is 2 + 2?", "chosen": "4"},
                                         "line 2 has no 'rejected' field, which the preference format needs"),
    "prompts line without a prompt": ("grpo", "prompts", {"question": "What is 2 + 2?", "answer": "4"},
                                      "line 2 has no 'prompt' field, which the prompts format needs"),
    "empty rejected reply": ("reward", "preference", {**GOOD_PAIR, "rejected": "  "},
                             "line 2: the 'rejected' reply is empty"),
    "empty assistant reply": ("sft", "messages", {"messages": [*CHAT, {"role": "assistant", "content": ""}]},
                              "line 2: message 2 of 'messages' is an empty assistant reply"),
    "identical pair": ("dpo", "preference", {**GOOD_PAIR, "rejected": "4"},
                       "line 2: the chosen and rejected replies are identical"),
    "identical pair as messages": ("reward", "auto",
                                   {"chosen": [*CHAT, {"role": "assistant", "content": "4"}],
                                    "rejected": [*CHAT, {"role": "assistant", "content": "4"}]},
                                   "line 2: the chosen and rejected replies are identical"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_one_sentence_naming_the_line(case, tiny_checkpoint, tmp_path, capsys):
    method, form, row, words = BAD_DATA[case]
    good = {"sft": {"messages": [*CHAT, {"role": "assistant", "content": "4"}]}, "grpo": {"prompt": "2+2?"}}
    data = jsonl(tmp_path / "data.jsonl", good.get(method, GOOD_PAIR), row)
    before = files_of(tiny_checkpoint)
    code, _, err = finetune(method, tmp_path / "run", tiny_checkpoint, data, capsys, f"data.format={form}",
                            "data.template=chatml")
    refused(code, err, f"{data} {words}")
    assert not (tmp_path / "run").exists() and files_of(tiny_checkpoint) == before


def test_a_template_without_the_fields_it_needs(tiny_checkpoint, tmp_path, capsys):
    template = tmp_path / "qa.jinja"
    template.write_text("Question: {{ question }}\nAnswer:")
    data = jsonl(tmp_path / "tasks.jsonl", {"instruction": "Add 2 and 2.", "input": "", "output": "4"})
    code, _, err = finetune("sft", tmp_path / "run", tiny_checkpoint, data, capsys, f"data.template={template}")
    refused(code, err, f"the template {template} needs the field 'question', which the data does not give")
    assert not (tmp_path / "run").exists()


def test_a_preference_template_without_the_prompt_text(tiny_checkpoint, tmp_path, capsys):
    data = jsonl(tmp_path / "pairs.jsonl", {**GOOD_PAIR, "prompt": CHAT})  # messages: no `prompt` text to pass on
    template = ROOT / "recipes" / "adaptation" / "prompt.jinja"
    code, _, err = finetune("dpo", tmp_path / "run", tiny_checkpoint, data, capsys, f"data.template={template}")
    refused(code, err, "needs the field 'prompt'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("target", ["[q_proj, nothing]", "lm_head"])
def test_a_lora_target_that_matches_nothing(target, tiny_checkpoint, tmp_path, capsys):
    data = jsonl(tmp_path / "tasks.jsonl", {"instruction": "Add 2 and 2.", "input": "", "output": "4"})
    code, _, err = finetune("sft", tmp_path / "run", tiny_checkpoint, data, capsys, "adapter.kind=lora",
                            f"adapter.target={target}")
    missing = "nothing" if "nothing" in target else "lm_head"
    refused(code, err, f"LoRA target '{missing}' matches no linear layer of this llama model (its names: ")
    assert not (tmp_path / "run").exists()


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: nf4 is allowed")


@pytest.mark.parametrize("setting, words", [
    ("train.parallel=fsdp", "a LoRA adapter trains under train.parallel=ddp"),
    pytest.param("adapter.quantize=nf4", "LoRA quantize: nf4 (QLoRA) needs a CUDA GPU, and none is available",
                 marks=NO_GPU),
])
def test_a_lora_setting_this_run_cannot_have(setting, words, tiny_checkpoint, tmp_path, capsys):
    data = jsonl(tmp_path / "tasks.jsonl", {"instruction": "Add 2 and 2.", "input": "", "output": "4"})
    code, _, err = finetune("sft", tmp_path / "run", tiny_checkpoint, data, capsys, "adapter.kind=lora", setting)
    refused(code, err, words)
    assert not (tmp_path / "run").exists()


def test_an_adapter_whose_base_does_not_match(tiny_checkpoint, tmp_path, capsys):
    from llmlab.adapt.lora import LoraConfig, apply_lora, save_adapter
    from tests.adapt.test_lora import tiny_llmlab

    base = tmp_path / "base"
    shutil.copytree(tiny_checkpoint, base)
    model = llmlab.load(base)
    apply_lora(model, LoraConfig(r=4))
    adapter = save_adapter(model, tmp_path / "adapter", base=str(base))
    shutil.rmtree(base)
    llmlab.save(tiny_llmlab(d_model=48), base)  # another model where the base was
    words = f"the adapter {adapter} does not fit its base {base}"
    code, _, err = run_cli(["merge", str(adapter), str(tmp_path / "merged")], capsys)
    refused(code, err, words)
    assert not (tmp_path / "merged").exists()
    with pytest.raises(CheckpointError, match="does not fit its base"):
        llmlab.load(adapter)
    data = jsonl(tmp_path / "tasks.jsonl", {"instruction": "Add 2 and 2.", "input": "", "output": "4"})
    code, _, err = finetune("sft", tmp_path / "run", adapter, data, capsys)
    refused(code, err, words)
    assert not (tmp_path / "run").exists()


def test_an_existing_run_without_resume_is_left_as_it_is(tiny_checkpoint, tmp_path, capsys):
    data = jsonl(tmp_path / "pairs.jsonl", GOOD_PAIR, {**GOOD_PAIR, "chosen": "four"})
    out = tmp_path / "run"
    code, _, err = finetune("dpo", out, tiny_checkpoint, data, capsys, "method.batch_size=2",
                            "data.held_out_fraction=0", "data.template=chatml")
    assert code == 0, err
    before = files_of(out)
    assert "final/model.safetensors" in before and "reference_logps.safetensors" in before
    code, _, err = finetune("dpo", out, tiny_checkpoint, data, capsys, "method.batch_size=2", "method.beta=0.5",
                            "data.held_out_fraction=0", "data.template=chatml")
    refused(code, err, f"{out} already holds a run; pass --resume to continue it or choose another --out")
    assert files_of(out) == before


def test_finetune_data_preference_keeps_an_existing_file_and_needs_a_model(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    out.write_text("mine\n")
    code, _, err = run_cli(["finetune-data", "preference", str(out), "--model", str(tiny_checkpoint), "--n", "2"],
                           capsys)
    refused(code, err, f"{out} already exists; choose another file or pass --overwrite")
    assert out.read_text() == "mine\n"
    code, _, err = run_cli(["finetune-data", "preference", str(tmp_path / "new.jsonl"), "--model",
                            str(tmp_path / "nowhere"), "--n", "2"], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new.jsonl").exists()
    code, _, err = run_cli(["finetune-data", "synthetic", str(tmp_path / "new.jsonl"), "--n", "2", "--tasks",
                            "addition", "--exclude", str(tmp_path / "nowhere.jsonl")], capsys)
    refused(code, err, "nowhere.jsonl does not exist")
    assert not (tmp_path / "new.jsonl").exists()
