"""merge and `llmlab merge`: the merged model equals the unmerged one and the LoRA formula; bad input is one
sentence, exit 2, nothing overwritten."""

import json

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import llmlab  # noqa: E402
from llmlab.adapt.lora import LoraConfig, apply_lora, lora_layers, merge, save_adapter  # noqa: E402
from llmlab.errors import ConfigError  # noqa: E402
from llmlab.model import Model  # noqa: E402
from tests.adapt.test_lora import hf_base, randomize, tiny_llmlab  # noqa: E402
from tests.cli_run import run_cli  # noqa: E402
from tests.model.parity import hf_logits, max_diff_unpadded, our_logits, right_padded_batch  # noqa: E402


@pytest.mark.parametrize("options, scale", [({}, 8 / 4), ({"use_rslora": True}, 8 / 4 ** 0.5)],
                         ids=["lora", "rslora"])
def test_merge_folds_the_low_rank_update_into_the_weights(options, scale):
    model = tiny_llmlab()
    base_weight = model.decoder.blocks[0].attn.q.weight.detach().clone()
    ids, mask = right_padded_batch(64, 10, 3)
    apply_lora(model, LoraConfig(r=4, alpha=8, target=("attention", "mlp"), **options))
    randomize(model)
    layer = model.decoder.blocks[0].attn.q
    a, b = layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone()
    unmerged = our_logits(model, ids, mask)
    merged = merge(model)
    assert type(merged) is Model and not lora_layers(merged) and not hasattr(merged, "lora_config")
    assert type(merged.decoder.blocks[0].attn.q) is torch.nn.Linear
    # Hu et al. (2021): W' = W + (alpha / r) B A; rsLoRA scales by alpha / sqrt(r)
    torch.testing.assert_close(merged.decoder.blocks[0].attn.q.weight, base_weight + scale * b @ a)
    assert max_diff_unpadded(our_logits(merged, ids, mask), unmerged, mask) <= 1e-5
    assert set(merged.state_dict()) == set(tiny_llmlab().state_dict())


def test_merged_dora_equals_peft_merge_and_unload(tmp_path):
    base_dir, auto = hf_base(tmp_path, "llama")
    model = llmlab.load(base_dir)
    apply_lora(model, LoraConfig(r=4, target=("attention", "mlp"), use_dora=True))
    save_adapter(randomize(model), tmp_path / "adapter", base=str(base_dir))
    reference = peft.PeftModel.from_pretrained(auto.from_pretrained(base_dir), tmp_path / "adapter")
    reference = reference.merge_and_unload().eval()
    ids, mask = right_padded_batch(97, 10, 3)
    assert max_diff_unpadded(our_logits(merge(model), ids, mask), hf_logits(reference, ids, mask), mask) <= 1e-5


def test_merge_needs_an_adapter():
    with pytest.raises(ConfigError, match="has no LoRA adapter"):
        merge(tiny_llmlab())


# --- llmlab merge ------------------------------------------------------------------------------------------------

def adapter_on_llmlab_base(tmp_path, tokenizer: bool = True):
    """An llmlab base checkpoint (with a tokenizer) under tmp_path/base and a random adapter for it."""
    model = tiny_llmlab()
    if tokenizer:
        from tokenizers import Tokenizer, models
        model.tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
    llmlab.save(model, tmp_path / "base")
    apply_lora(model, LoraConfig(r=4, target=("attention", "mlp"), use_dora=True))
    save_adapter(randomize(model), tmp_path / "adapter", base=str(tmp_path / "base"))
    return tmp_path / "adapter"


def test_cli_merge_writes_a_full_checkpoint_equal_to_the_unmerged_model(tmp_path, capsys):
    adapter = adapter_on_llmlab_base(tmp_path)
    code, out, err = run_cli(["merge", str(adapter), str(tmp_path / "merged")], capsys)
    assert code == 0, err
    assert "wrote" in out and (tmp_path / "merged" / "llmlab.json").exists()
    assert (tmp_path / "merged" / "tokenizer.json").read_text() == (tmp_path / "base" / "tokenizer.json").read_text()
    merged, unmerged = llmlab.load(tmp_path / "merged"), llmlab.load(adapter)
    assert not lora_layers(merged) and merged.tokenizer is not None
    ids, mask = right_padded_batch(64, 10, 3)
    assert max_diff_unpadded(our_logits(merged, ids, mask), our_logits(unmerged, ids, mask), mask) <= 1e-5
    base = our_logits(llmlab.load(tmp_path / "base"), ids, mask)
    assert max_diff_unpadded(our_logits(merged, ids, mask), base, mask) > 1e-2


def test_cli_merge_to_hugging_face_format_loads_in_transformers(tmp_path, capsys):
    base_dir, auto = hf_base(tmp_path, "gpt2")
    model = llmlab.load(base_dir)
    apply_lora(model, LoraConfig(r=4, target=("attention", "mlp")))
    save_adapter(randomize(model), tmp_path / "adapter", base=str(base_dir))
    code, _, err = run_cli(["merge", str(tmp_path / "adapter"), str(tmp_path / "merged"), "--to", "hf"], capsys)
    assert code == 0, err
    reference = peft.PeftModel.from_pretrained(auto.from_pretrained(base_dir), tmp_path / "adapter").eval()
    ids, mask = right_padded_batch(97, 10, 3)
    merged = auto.from_pretrained(tmp_path / "merged").eval()
    assert max_diff_unpadded(hf_logits(merged, ids, mask), hf_logits(reference, ids, mask), mask) <= 1e-5


def one_sentence_exit_2(code: int, err: str, words: str) -> None:
    assert code == 2 and err.startswith("error: ") and words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_merge_refuses_a_directory_without_adapter_config(tmp_path, capsys):
    adapter = adapter_on_llmlab_base(tmp_path)
    code, _, err = run_cli(["merge", str(tmp_path / "base"), str(tmp_path / "merged")], capsys)
    one_sentence_exit_2(code, err, "has no adapter_config.json")
    assert not (tmp_path / "merged").exists() and adapter.exists()


def test_cli_merge_refuses_a_base_that_does_not_match(tmp_path, capsys):
    adapter = adapter_on_llmlab_base(tmp_path)
    llmlab.save(tiny_llmlab(d_model=48), tmp_path / "other")
    settings = json.loads((adapter / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = str(tmp_path / "other")
    (adapter / "adapter_config.json").write_text(json.dumps(settings))
    code, _, err = run_cli(["merge", str(adapter), str(tmp_path / "merged")], capsys)
    one_sentence_exit_2(code, err, f"the adapter {adapter} does not fit its base {tmp_path / 'other'}")
    assert not (tmp_path / "merged").exists()


def test_cli_merge_overwrites_only_when_told(tmp_path, capsys):
    adapter = adapter_on_llmlab_base(tmp_path, tokenizer=False)
    out = tmp_path / "merged"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model.safetensors").write_text("an older model")
    code, _, err = run_cli(["merge", str(adapter), str(out)], capsys)
    one_sentence_exit_2(code, err, "already exists")
    assert (out / "model.safetensors").read_text() == "an older model"
    code, _, err = run_cli(["merge", str(adapter), str(out), "--overwrite"], capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine" and not lora_layers(llmlab.load(out))


@pytest.mark.parametrize("into", ["base", "adapter"])
def test_cli_merge_never_writes_into_its_inputs(tmp_path, capsys, into):
    adapter_on_llmlab_base(tmp_path)
    before = sorted(p.name for p in (tmp_path / into).iterdir())
    code, _, err = run_cli(["merge", str(tmp_path / "adapter"), str(tmp_path / into), "--overwrite"], capsys)
    one_sentence_exit_2(code, err, "would write into its input")
    assert sorted(p.name for p in (tmp_path / into).iterdir()) == before
