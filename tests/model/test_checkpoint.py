"""Checkpoints: native round trip, atomic writes, and one clear error for every kind of bad input."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import llmlab
from llmlab.errors import CheckpointError, ConfigError
from llmlab.model import Model, ModelConfig

TINY = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32, position="rope",
            norm="rmsnorm", mlp="swiglu", qkv_bias=False, out_bias=False, mlp_bias=False)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = Model(ModelConfig(**TINY)).eval()
    llmlab.save(model, tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def test_native_round_trip_gives_identical_logits(saved):
    model, path = saved
    ids = torch.randint(0, 61, (2, 9))
    loaded = llmlab.load(path)
    assert loaded.config == model.config
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert sorted(p.name for p in path.iterdir()) == ["llmlab.json", "model.safetensors"]


def test_tied_head_is_stored_once_and_stays_tied(tmp_path):
    model = Model(ModelConfig(**{**TINY, "tie_embeddings": True}))
    llmlab.save(model, tmp_path / "tied")
    assert "head.weight" not in load_file(tmp_path / "tied" / "model.safetensors")
    loaded = llmlab.load(tmp_path / "tied")
    assert loaded.head.weight.data_ptr() == loaded.embed.tokens.weight.data_ptr()


def _rewrite_weights(path, change):
    state = load_file(path / "model.safetensors")
    change(state)
    save_file(state, path / "model.safetensors")


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("decoder.blocks.1.attn.q.weight"), ["missing", "decoder.blocks.1.attn.q.weight"]),
    (lambda s: s.__setitem__("decoder.blocks.0.extra", torch.zeros(2)), ["unexpected", "decoder.blocks.0.extra"]),
    (lambda s: s.__setitem__("decoder.norm.weight", torch.zeros(31)), ["misshaped", "decoder.norm.weight", "(31,)"]),
], ids=["missing", "unexpected", "misshaped"])
def test_bad_native_tensors_are_named(saved, change, words):
    _, path = saved
    _rewrite_weights(path, change)
    with pytest.raises(CheckpointError) as error:
        llmlab.load(path)
    for word in words:
        assert word in str(error.value)


def test_truncated_weights_are_a_checkpoint_error(saved):
    _, path = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        llmlab.load(path)


def test_conflicting_config_in_checkpoint_names_the_fields(saved):
    _, path = saved
    header = json.loads((path / "llmlab.json").read_text())
    header["config"]["n_kv_heads"] = 3
    (path / "llmlab.json").write_text(json.dumps(header))
    with pytest.raises(ConfigError, match="n_kv_heads"):
        llmlab.load(path)


def _llama_hf_dir(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=32)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


@pytest.mark.parametrize("change, words", [
    (lambda s: s.pop("model.layers.0.mlp.up_proj.weight"), ["missing", "model.layers.0.mlp.up_proj.weight"]),
    (lambda s: s.__setitem__("model.layers.0.mystery", torch.zeros(3)), ["unexpected", "model.layers.0.mystery"]),
    (lambda s: s.__setitem__("model.norm.weight", torch.zeros(5)), ["misshaped", "decoder.norm.weight"]),
], ids=["missing", "unexpected", "misshaped"])
def test_bad_hf_tensors_are_named(tmp_path, change, words):
    path = _llama_hf_dir(tmp_path)
    _rewrite_weights(path, change)
    with pytest.raises(CheckpointError) as error:
        llmlab.load(path)
    for word in words:
        assert word in str(error.value)


def test_unknown_model_type_is_named(tmp_path):
    path = _llama_hf_dir(tmp_path)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "gpt-zzz"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="gpt-zzz"):
        llmlab.load(path)


def test_pickled_code_in_pytorch_bin_is_refused(tmp_path):
    path = _llama_hf_dir(tmp_path)
    (path / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model.embed_tokens.weight": Evil()}, path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        llmlab.load(path)


def test_pytorch_bin_checkpoint_loads(tmp_path):
    path = _llama_hf_dir(tmp_path)
    state = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin")
    model = llmlab.load(path)
    assert torch.equal(model.embed.tokens.weight, state["model.embed_tokens.weight"])


def test_failed_save_leaves_previous_checkpoint_intact(saved, monkeypatch):
    model, path = saved
    before = (path / "model.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("llmlab.model.checkpoint.save_file", disk_full)
    with pytest.raises(OSError):
        llmlab.save(model, path, overwrite=True)
    assert (path / "model.safetensors").read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    llmlab.load(path)


def test_cli_bad_checkpoint_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "nope"}')
    result = subprocess.run([sys.executable, "-m", "llmlab", "convert", str(bad), str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "nope" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_convert_round_trip(tmp_path):
    path = _llama_hf_dir(tmp_path)
    native, back = tmp_path / "native", tmp_path / "back"
    for source, target, to in ((path, native, "llmlab"), (native, back, "hf")):
        result = subprocess.run([sys.executable, "-m", "llmlab", "convert", str(source), str(target), "--to", to],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert load_file(back / "model.safetensors").keys() == load_file(path / "model.safetensors").keys()


def test_load_in_bfloat16_keeps_positions_exact(tmp_path):
    model = Model(ModelConfig(**{**TINY, "position": "alibi"})).eval()
    llmlab.save(model, tmp_path / "alibi")
    half = llmlab.load(tmp_path / "alibi", dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.decoder.alibi_slopes.dtype == torch.float32
    ids = torch.randint(0, 61, (1, 9))
    assert (half(ids).logits.float() - model(ids).logits).abs().max() < 0.1


def test_save_refuses_a_file_and_a_non_empty_directory(saved, tmp_path):
    model, _ = saved
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"text": "mine"}\n')
    for overwrite in (False, True):
        with pytest.raises(CheckpointError, match="is a file"):
            llmlab.save(model, jsonl, overwrite=overwrite)
    assert jsonl.read_text() == '{"text": "mine"}\n'
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    llama = llmlab.load(_llama_hf_dir(tmp_path))
    for format, saving in (("llmlab", model), ("hf", llama)):
        with pytest.raises(CheckpointError, match="not empty"):
            llmlab.save(saving, notes, format=format)
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    llmlab.save(model, empty)
    assert sorted(p.name for p in empty.iterdir()) == ["llmlab.json", "model.safetensors"]


def test_overwrite_replaces_only_checkpoint_files(saved, tmp_path):
    model, _ = saved
    mixed = tmp_path / "mixed"
    (mixed / "runs").mkdir(parents=True)
    (mixed / "todo.txt").write_text("mine")
    (mixed / "runs" / "log.txt").write_text("mine too")
    for stale in ("config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json"):
        (mixed / stale).write_text("an old Hugging Face export")
    llmlab.save(model, mixed, overwrite=True)
    assert sorted(p.name for p in mixed.iterdir()) == ["llmlab.json", "model.safetensors", "runs", "todo.txt"]
    assert (mixed / "todo.txt").read_text() == "mine" and (mixed / "runs" / "log.txt").read_text() == "mine too"
    assert torch.equal(llmlab.load(mixed).head.weight, model.head.weight)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    ours = tmp_path / "ours"  # only checkpoint files: replaced as a whole
    llmlab.save(llmlab.load(_llama_hf_dir(tmp_path)), ours, format="hf")
    llmlab.save(model, ours, overwrite=True)
    assert sorted(p.name for p in ours.iterdir()) == ["llmlab.json", "model.safetensors"]


def test_cli_convert_refuses_an_existing_output_unless_overwrite(tmp_path):
    path = _llama_hf_dir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    command = [sys.executable, "-m", "llmlab", "convert", str(path), str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and str(out) in result.stderr and "--overwrite" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    result = subprocess.run([*command, "--overwrite"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "keep.txt",
                                                     "model.safetensors"]
    assert load_file(out / "model.safetensors").keys() == load_file(path / "model.safetensors").keys()
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("{}\n")
    result = subprocess.run([*command[:-1], str(jsonl), "--overwrite"], capture_output=True, text=True)
    assert result.returncode == 2 and "is a file" in result.stderr and jsonl.read_text() == "{}\n"
