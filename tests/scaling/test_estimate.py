"""Estimates: FLOPs against hand-computed cases, memory against peaks measured on small CPU configurations, and bad
input on the command line."""

import json

import pytest
import torch

from tests.cli_run import run_cli
from llmlab.model import Model, presets
from llmlab.scaling import estimate as est
from llmlab.train.loop import training_flops_per_token


def test_flops_per_token_by_hand():
    assert est.training_flops_per_token(1000, n_layers=2, d_model=16, seq_len=8) == 6000 + 12 * 2 * 16 * 8
    assert est.inference_flops_per_token(1000, n_layers=2, d_model=16, context=8) == 2000 + 4 * 2 * 16 * 8
    assert training_flops_per_token is est.training_flops_per_token  # still importable from the loop
    result = est.estimate(presets.get("gpt2", "124m"), seq_len=1024)
    assert result["flops_per_token"]["training"] == 6 * 124_439_808 + 12 * 12 * 768 * 1024
    assert result["flops_per_token"]["inference"] == 2 * 124_439_808 + 4 * 12 * 768 * 1024
    t5 = est.estimate(presets.get("t5", "3b"), seq_len=512)  # 24 + 24 layers, attention width 32 × 128
    assert t5["flops_per_token"]["training"] == 6 * 2_851_598_336 + 12 * 48 * 4096 * 512


def test_chinchilla_tokens():
    assert est.chinchilla_tokens(70e9) == 1.4e12
    # approach 3: at the compute C = 6·N·D it returns, N minimises E + A/N^α + B/D^β along 6·N·D = C
    fit = est.HOFFMANN_FIT
    n = 1e9
    compute = 6 * n * est.chinchilla_tokens(n, "approach3")
    loss = lambda m: fit["A"] / m ** fit["alpha"] + fit["B"] / (compute / 6 / m) ** fit["beta"]  # noqa: E731
    grid = [n * 1.01 ** k for k in range(-200, 201)]
    assert min(grid, key=loss) == pytest.approx(n, rel=0.011)


def test_kv_cache_and_inference_memory_by_hand():
    llama = presets.get("llama", "7b")
    assert est.kv_cache_bytes_per_token(llama, "bf16") == 2 * 32 * 32 * 128 * 2
    assert est.kv_cache_bytes_per_token(presets.get("llama", "70b"), "fp16") == 2 * 80 * 8 * 128 * 2
    assert est.kv_cache_bytes_per_token(presets.get("palm", "8b"), "fp32") == 2 * 32 * 1 * 256 * 4
    assert est.kv_cache_bytes_per_token(presets.get("bert", "base")) == 0
    memory = est.inference_memory(llama, context=4096, batch=8, dtype="bf16")
    assert memory["weights"] == 6_738_415_616 * 2 and memory["kv_cache"] == 2 * 32 * 32 * 128 * 2 * 4096 * 8


def test_training_memory_parts_and_sharding_by_hand():
    config = presets.get("gpt2", "tiny")
    n = Model(config).num_parameters()
    memory = est.training_memory(config, seq_len=64, batch=2, dtype="fp32", shards=4)
    tensors = len(list(Model(config).parameters()))
    assert memory.weights == memory.gradients == 4 * n
    assert memory.optimizer == 8 * n + 4 * tensors  # two float32 moments and a step count per tensor
    rest = max(memory.activations, memory.gradients + memory.activation_parts["one_block"])
    assert memory.sharded["zero-0"] == memory.peak == 4 * n + 8 * n + 4 * tensors + rest
    assert memory.sharded["zero-1"] == pytest.approx(4 * n + (8 * n + 4 * tensors) / 4 + rest)
    assert memory.sharded["zero-0"] > memory.sharded["zero-1"] >= memory.sharded["zero-2"] > memory.sharded["zero-3"]
    adafactor = est.optimizer_state_bytes(est.model_shape(config), "adafactor")
    matrices = [p for p in Model(config).parameters()]
    assert adafactor == 4 * sum((p.shape[0] + p.shape[1] if p.dim() == 2 else p.numel()) + 1 for p in matrices)


def test_measure_peak_bytes_sees_a_known_allocation():
    def allocate():
        a = torch.empty(1 << 20, dtype=torch.float32)  # 4 MiB
        b = torch.empty(1 << 19, dtype=torch.float32)  # 2 MiB while a lives
        del a, b
        return torch.empty(1 << 18)  # 1 MiB
    peak, _ = est.measure_peak_bytes(allocate)
    assert 6 << 20 <= peak <= (6 << 20) + 4096


SMALL = dict(n_layers=2, d_model=128, n_heads=4, d_ff=512, vocab_size=512, max_seq_len=256)


@pytest.mark.parametrize(("name", "overrides", "optimizer", "checkpointing"), [
    ("gpt2", {}, "adamw", False),
    ("gpt2", {}, "adamw", True),
    ("llama", {"n_kv_heads": 2, "d_ff": 352}, "adamw", False),
    ("llama", {"n_kv_heads": 2, "d_ff": 352}, "adafactor", False),
])
def test_training_peak_within_ten_percent_of_measured(name, overrides, optimizer, checkpointing):
    config = presets.get(name, "tiny", **{**SMALL, **overrides})
    measured, _ = est.measure_peak_bytes(lambda: est.run_training_steps(config, 8, 128, optimizer, checkpointing))
    estimated = est.training_memory(config, 128, 8, "fp32", optimizer, checkpointing).peak
    assert abs(estimated - measured) / measured <= 0.10, (measured, estimated)


@pytest.mark.parametrize("kv_heads", [4, 1])  # multi-head and multi-query
def test_generation_peak_within_ten_percent_of_measured(kv_heads):
    config = presets.get("llama", "tiny", n_layers=4, d_model=256, n_heads=4, n_kv_heads=kv_heads, d_ff=688,
                         vocab_size=2048)

    def generate():
        torch.manual_seed(0)
        model = Model(config).eval()
        model.generate(torch.randint(0, 2048, (8, 128)), max_new_tokens=32, do_sample=False)
    measured, _ = est.measure_peak_bytes(generate)
    estimated = est.inference_memory(config, 160, 8, "fp32", prompt=128)["total"]
    assert abs(estimated - measured) / measured <= 0.10, (measured, estimated)




def test_cli_estimate_preset_json(capsys):
    code, out, _ = run_cli(["estimate", "llama:7b", "--seq-len", "2048", "--shards", "8", "--format", "json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["parameters"] == 6_738_415_616 and data["shards"] == 8
    assert set(data["training_memory"]["sharded"]) == {"zero-0", "zero-1", "zero-2", "zero-3"}
    code, out, _ = run_cli(["estimate", "gpt2", "--activation-checkpointing", "--optimizer", "adafactor"], capsys)
    assert code == 0 and "124" in out and "FLOPs per token" in out


def test_cli_estimate_reads_only_a_checkpoints_config(tmp_path, capsys):
    import llmlab
    from llmlab.model.hf import family_for

    config = presets.get("gpt2", "tiny")
    llmlab.save(Model(config), tmp_path / "native")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(family_for(config).config_to_hf(config)))  # no weights at all
    expected = Model(config).num_parameters()
    for directory in (tmp_path / "native", hf):
        code, out, _ = run_cli(["estimate", str(directory), "--format", "json"], capsys)
        assert code == 0 and json.loads(out)["parameters"] == expected


@pytest.mark.parametrize(("arguments", "named"), [
    (["nosuch:7b"], "nosuch"),
    (["llama:99b"], "99b"),
    (["gpt2", "--dtype", "fp13"], "fp13"),
    (["gpt2", "--batch", "0"], "batch"),
    (["gpt2", "--seq-len", "-4"], "seq_len"),
    (["gpt2", "--shards", "0"], "shards"),
    (["gpt2", "--optimizer", "sgd"], "sgd"),
    (["EMPTY"], "config.json"),
    (["./missing/dir"], "missing"),
])
def test_cli_bad_input_is_one_sentence(arguments, named, tmp_path, capsys):
    arguments = [str(tmp_path) if a == "EMPTY" else a for a in arguments]
    code, _, err = run_cli(["estimate", *arguments], capsys)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1 and named in err, err
