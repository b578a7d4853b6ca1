"""LoRA: an identity change at initialisation, only adapter weights train, and adapters round-trip through PEFT on
transformers' model of every supported Hugging Face family (PEFT and transformers are the reference)."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import llmlab  # noqa: E402
from llmlab.adapt.lora import (LoraConfig, adapter_state, apply_lora, disabled, load_adapter, lora_layers,  # noqa: E402
                               save_adapter)
from llmlab.errors import CheckpointError, ConfigError  # noqa: E402
from llmlab.model import Model, presets  # noqa: E402
from tests.model.parity import (hf_logits, max_diff_unpadded, our_logits, perturb_vectors,  # noqa: E402
                                right_padded_batch)

ATOL = 1e-4
T = transformers
# Tiny random models of every family whose projections map onto llmlab's, with their transformers Auto class.
FAMILIES = {
    "gpt2": (T.AutoModelForCausalLM, lambda: T.GPT2LMHeadModel(T.GPT2Config(
        vocab_size=97, bos_token_id=96, eos_token_id=96, n_positions=32, n_embd=32, n_layer=2, n_head=4))),
    "gpt_neo": (T.AutoModelForCausalLM, lambda: T.GPTNeoForCausalLM(T.GPTNeoConfig(
        vocab_size=97, bos_token_id=96, eos_token_id=96, max_position_embeddings=32, hidden_size=32, num_layers=2,
        num_heads=4, attention_types=[[["global", "local"], 1]], window_size=4))),
    "gptj": (T.AutoModelForCausalLM, lambda: T.GPTJForCausalLM(T.GPTJConfig(
        vocab_size=97, bos_token_id=96, eos_token_id=96, n_positions=32, n_embd=32, n_layer=2, n_head=4,
        rotary_dim=4))),
    "gpt_neox": (T.AutoModelForCausalLM, lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=32, rotary_pct=0.5))),
    "opt": (T.AutoModelForCausalLM, lambda: T.OPTForCausalLM(T.OPTConfig(
        vocab_size=97, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=32, word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2, eos_token_id=2))),
    "bloom": (T.AutoModelForCausalLM, lambda: T.BloomForCausalLM(T.BloomConfig(
        vocab_size=97, hidden_size=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2, pad_token_id=3))),
    "llama": (T.AutoModelForCausalLM, lambda: T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False))),
    # Falcon-40B's layout: k/v groups interleaved with their queries in query_key_value
    "falcon": (T.AutoModelForCausalLM, lambda: T.FalconForCausalLM(T.FalconConfig(
        vocab_size=97, hidden_size=32, ffn_hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_kv_heads=2, new_decoder_architecture=True, bos_token_id=1, eos_token_id=2))),
    "mpt": (T.AutoModelForCausalLM, lambda: T.MptForCausalLM(T.MptConfig(
        vocab_size=97, d_model=32, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=32, bos_token_id=1,
        eos_token_id=2))),
    "t5": (T.AutoModelForSeq2SeqLM, lambda: T.T5ForConditionalGeneration(T.T5Config(
        vocab_size=97, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", decoder_start_token_id=0, tie_word_embeddings=False))),
    "bert": (T.AutoModelForMaskedLM, lambda: T.BertForMaskedLM(T.BertConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32))),
}
EVERY_PROJECTION = ("attention", "mlp")


def tiny_llmlab(**fields) -> Model:
    """A 2-layer LLaMA-style llmlab model of width 32."""
    torch.manual_seed(0)
    shape = dict(d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, vocab_size=64)
    return Model(presets.get("llama", "tiny", **{**shape, **fields})).eval()


def randomize(model, seed: int = 1, std: float = 0.2):
    """Give every adapter tensor random non-zero values (DoRA's magnitudes move away from the weight norms)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for kinds in adapter_state(model).values():
            for kind, tensor in kinds.items():
                noise = torch.randn(tensor.shape, generator=generator)
                tensor.copy_(tensor * (1 + std * noise) if kind == "lora_magnitude_vector" else std * noise)
    return model


def batch(model):
    """Right-padded ids and mask (and decoder ids for an encoder-decoder) as our_logits / hf_logits take them."""
    ids, mask = right_padded_batch(model.config.vocab_size, 10, 3)
    if model.config.arch != "encoder_decoder":
        return (ids, mask), mask
    decoder = right_padded_batch(model.config.vocab_size, 7, 2, seed=1)
    return (ids, mask, *decoder), decoder[1]


def hf_base(tmp_path, family: str):
    """A tiny random transformers model of the family saved under tmp_path/base, and its Auto class."""
    auto, build = FAMILIES[family]
    torch.manual_seed(0)
    perturb_vectors(build()).eval().save_pretrained(tmp_path / "base")
    return tmp_path / "base", auto


# --- initialisation and training ---------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"use_dora": True}, {"use_rslora": True, "r": 4}],
                         ids=["lora", "dora", "rslora"])
def test_lora_starts_as_an_identity_change(options):
    model = tiny_llmlab()
    ids, mask = right_padded_batch(64, 10, 3)
    before = our_logits(model, ids, mask)
    assert apply_lora(model, LoraConfig(target=EVERY_PROJECTION, **options)) == 2 * 7  # q k v o gate up down
    assert torch.equal(our_logits(model, ids, mask), before)


def test_only_adapter_weights_train_and_the_loss_falls():
    model = tiny_llmlab()
    config = LoraConfig(r=4, alpha=8, target=("q", "v", "down"))
    assert apply_lora(model, config) == 6
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Hu et al.: each wrapped [out, in] layer adds r * (in + out) parameters; q, v, down: (32+32), (32+16), (64+32)
    assert sum(p.numel() for p in trainable) == 2 * 4 * ((32 + 32) + (32 + 16) + (64 + 32))
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    ids = torch.randint(3, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if name in frozen)
    assert all(layer.lora_B["default"].weight.abs().sum() > 0 for layer in lora_layers(model).values())


def test_disabled_runs_the_base_and_restores_the_adapter():
    model = tiny_llmlab()
    ids, mask = right_padded_batch(64, 10, 3)
    base = our_logits(model, ids, mask)
    apply_lora(model, LoraConfig())
    randomize(model)
    adapted = our_logits(model, ids, mask)
    assert (adapted - base).abs().max() > 1e-2
    with disabled(model):
        assert torch.equal(our_logits(model, ids, mask), base)
    assert torch.equal(our_logits(model, ids, mask), adapted)
    assert all(p.requires_grad == (".lora_" in name) for name, p in model.named_parameters())


def test_targets_by_llmlab_name_hugging_face_name_or_group():
    assert apply_lora(tiny_llmlab(), LoraConfig(target=("q_proj", "v_proj"))) == 4  # llama's own names
    assert apply_lora(tiny_llmlab(), LoraConfig(target="mlp")) == 6
    fused = Model(presets.get("gpt2", "tiny", d_model=32, n_heads=4, vocab_size=64))
    assert apply_lora(fused, LoraConfig()) == 2 * 2  # qkv and o
    assert {name for name in lora_layers(fused) if ".0." in name} == {"decoder.blocks.0.attn.o",
                                                                       "decoder.blocks.0.attn.qkv"}


@pytest.mark.parametrize("target", [("q", "nope"), ("q_porj",), ("blocks.5.attn.q",)])
def test_a_target_that_matches_nothing_is_named(target):
    model = tiny_llmlab()
    with pytest.raises(ConfigError, match=f"LoRA target '{target[-1]}' matches no linear layer") as error:
        apply_lora(model, LoraConfig(target=target))
    assert "\n" not in str(error.value) and not lora_layers(model)


def test_q_on_a_fused_projection_is_an_error():
    fused = Model(presets.get("gpt2", "tiny", d_model=32, n_heads=4, vocab_size=64))
    with pytest.raises(ConfigError, match="'q' matches no linear layer.*qkv"):
        apply_lora(fused, LoraConfig(target=("q",)))


@pytest.mark.parametrize("field, value", [("r", 0), ("r", 2.5), ("alpha", 0), ("dropout", 1.0), ("target", ()),
                                          ("quantize", "int3")])
def test_bad_settings_are_rejected(field, value):
    with pytest.raises(ConfigError, match=f"LoRA {field}"):
        LoraConfig(**{field: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_nf4_without_a_gpu_is_one_sentence():
    with pytest.raises(ConfigError, match="nf4.*needs a CUDA GPU") as error:
        LoraConfig(quantize="nf4")
    assert str(error.value).count(".") == 1


def test_a_second_adapter_is_refused():
    model = tiny_llmlab()
    apply_lora(model, LoraConfig())
    with pytest.raises(ConfigError, match="already has a LoRA adapter"):
        apply_lora(model, LoraConfig())


# --- PEFT's format, checked by PEFT on transformers ----------------------------------------------------------------

def check_against_peft(tmp_path, base_dir, auto, model):
    """Save model's adapter; PeftModel on the transformers base and llmlab.load of the adapter give model's logits."""
    save_adapter(model, tmp_path / "adapter", base=str(base_dir))
    reference = peft.PeftModel.from_pretrained(auto.from_pretrained(base_dir), tmp_path / "adapter").eval()
    inputs, check = batch(model)
    expected = hf_logits(reference, *inputs)
    assert max_diff_unpadded(our_logits(model, *inputs), expected, check) <= ATOL
    assert max_diff_unpadded(our_logits(llmlab.load(tmp_path / "adapter"), *inputs), expected, check) <= ATOL
    plain = hf_logits(auto.from_pretrained(base_dir).eval(), *inputs)
    assert max_diff_unpadded(plain, expected, check) > 1e-2  # the adapter shows in the logits
    return reference


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_round_trips_through_peft(tmp_path, family):
    base_dir, auto = hf_base(tmp_path, family)
    model = llmlab.load(base_dir)
    apply_lora(model, LoraConfig(r=4, alpha=8, target=EVERY_PROJECTION))
    reference = check_against_peft(tmp_path, base_dir, auto, randomize(model))
    # PEFT wrapped exactly the layers llmlab did
    assert len([m for m in reference.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]) == len(lora_layers(model))


@pytest.mark.parametrize("family, options", [("llama", {"use_dora": True}), ("llama", {"use_rslora": True}),
                                             ("llama", {"use_dora": True, "use_rslora": True}),
                                             ("falcon", {"use_dora": True}), ("gpt2", {"use_dora": True})],
                         ids=["llama-dora", "llama-rslora", "llama-dora-rslora", "falcon-dora", "gpt2-dora"])
def test_dora_and_rslora_round_trip_through_peft(tmp_path, family, options):
    base_dir, auto = hf_base(tmp_path, family)
    model = llmlab.load(base_dir)
    apply_lora(model, LoraConfig(r=4, alpha=12, target=EVERY_PROJECTION, **options))
    check_against_peft(tmp_path, base_dir, auto, randomize(model))


def test_saved_files_are_peft_s_format(tmp_path):
    base_dir, _ = hf_base(tmp_path, "llama")
    model = llmlab.load(base_dir)
    apply_lora(model, LoraConfig(r=4, alpha=8, target=("q", "v")))
    save_adapter(model, tmp_path / "adapter", base=str(base_dir))
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json",
                                                                       "adapter_model.safetensors"]
    settings = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (settings["peft_type"], settings["r"], settings["lora_alpha"], settings["task_type"]) == \
        ("LORA", 4, 8, "CAUSAL_LM")
    assert settings["target_modules"] == ["q_proj", "v_proj"] and settings["base_model_name_or_path"] == str(base_dir)
    from safetensors.torch import load_file
    keys = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys and len(keys) == 2 * 2 * 2


@pytest.mark.parametrize("family, options", [("llama", {"use_dora": True, "use_rslora": True}), ("gpt2", {}),
                                             ("falcon", {}), ("t5", {}), ("bloom", {"use_dora": True})])
def test_adapters_peft_trained_load_in_llmlab(tmp_path, family, options):
    """An adapter PEFT itself wrote on the transformers model (random A and B) loads with llmlab.load."""
    base_dir, auto = hf_base(tmp_path, family)
    names = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"], "t5": ["q", "v", "wo"],
             "falcon": ["query_key_value", "dense_4h_to_h"], "bloom": ["query_key_value", "dense"]}[family]
    torch.manual_seed(3)
    reference = peft.get_peft_model(auto.from_pretrained(base_dir), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=names, init_lora_weights=False, **options)).eval()
    reference.save_pretrained(tmp_path / "adapter")
    model = llmlab.load(tmp_path / "adapter")
    inputs, check = batch(model)
    assert max_diff_unpadded(our_logits(model, *inputs), hf_logits(reference, *inputs), check) <= ATOL


def test_adapter_on_an_llmlab_checkpoint(tmp_path):
    """base_model_name_or_path may be an llmlab checkpoint; its HF export under PEFT is the reference."""
    model = tiny_llmlab()
    llmlab.save(model, tmp_path / "base")
    llmlab.save(model, tmp_path / "hf", format="hf")
    apply_lora(model, LoraConfig(r=4, target=EVERY_PROJECTION, use_dora=True))
    save_adapter(randomize(model), tmp_path / "adapter", base=str(tmp_path / "base"))
    reference = peft.PeftModel.from_pretrained(T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf"),
                                               tmp_path / "adapter").eval()
    ids, mask = right_padded_batch(64, 10, 3)
    loaded = llmlab.load(tmp_path / "adapter")
    assert max_diff_unpadded(our_logits(loaded, ids, mask), hf_logits(reference, ids, mask), mask) <= ATOL


@pytest.mark.parametrize("fields", [{"family": "custom"}, {"fused_qkv": True}], ids=["custom", "llama-fused-qkv"])
def test_a_base_without_hugging_face_form_keeps_llmlab_s_names(tmp_path, fields):
    model = tiny_llmlab(**fields)
    llmlab.save(model, tmp_path / "base")
    ids, mask = right_padded_batch(64, 10, 3)
    apply_lora(model, LoraConfig(r=4, target=EVERY_PROJECTION))
    expected = our_logits(randomize(model), ids, mask)
    save_adapter(model, tmp_path / "adapter", base=str(tmp_path / "base"))
    from safetensors.torch import load_file
    assert "base_model.model.decoder.blocks.0.attn.o.lora_B.weight" in load_file(
        tmp_path / "adapter" / "adapter_model.safetensors")
    base = our_logits(llmlab.load(tmp_path / "base"), ids, mask)
    loaded = our_logits(llmlab.load(tmp_path / "adapter"), ids, mask)
    assert torch.allclose(loaded, expected, atol=1e-6) and not torch.allclose(loaded, base, atol=1e-3)


# --- adapters that do not fit --------------------------------------------------------------------------------------

def saved_adapter(tmp_path, model, name="adapter") -> str:
    apply_lora(model, LoraConfig(r=4))
    llmlab.save(model, tmp_path / "base") if not (tmp_path / "base").exists() else None
    return str(save_adapter(randomize(model), tmp_path / name, base=str(tmp_path / "base")))


def test_an_adapter_for_another_shape_names_both(tmp_path):
    adapter = saved_adapter(tmp_path, tiny_llmlab(d_model=48, n_heads=4, n_kv_heads=2))
    with pytest.raises(CheckpointError, match=f"the adapter {adapter} does not fit its base the other.*shape"):
        load_adapter(tiny_llmlab(), adapter, base="the other")


def test_an_adapter_for_another_family_names_both(tmp_path):
    adapter = saved_adapter(tmp_path, Model(presets.get("gpt2", "tiny", d_model=32, n_heads=4, vocab_size=64)))
    with pytest.raises(CheckpointError, match=f"the adapter {adapter} has weights for transformer.h.0.attn.c_attn, "
                                              f"which its base .* \\(llama\\) does not have"):
        load_adapter(tiny_llmlab(), adapter)


@pytest.mark.parametrize("change, words", [({"peft_type": "IA3"}, "'IA3' adapter"), ({"bias": "all"}, "bias='all'"),
                                           ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
                                           ({"base_model_name_or_path": "meta-llama/Llama-2-7b-hf"},
                                            "not a local directory")])
def test_unsupported_adapter_settings_are_named(tmp_path, change, words):
    adapter = saved_adapter(tmp_path, tiny_llmlab())
    settings_file = tmp_path / "adapter" / "adapter_config.json"
    settings_file.write_text(json.dumps({**json.loads(settings_file.read_text()), **change}))
    with pytest.raises((ConfigError, CheckpointError), match=words):
        llmlab.load(adapter)
