"""Presets: full sizes match the published parameter counts; tiny sizes build, run and learn."""

from __future__ import annotations

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.model import Model, presets

HF = "HF checkpoint"
# (preset, size, published parameter count, source, tolerance). An "HF checkpoint" count is exact: the parameters
# of transformers' own model class at that checkpoint's config.json (for T5 v1.1, mT5 and umT5 plus the separate
# lm_head their checkpoints store, which transformers 5 ties on construction); rounded figures are the papers'.
# Tolerance is 1% except where a paper rounds more coarsely than that: there the preset builds the shape the paper
# itself gives, and the row says what that shape counts.
PUBLISHED = [
    ("gpt2", "124m", 124_439_808, f"{HF} gpt2", 0.01),
    ("gpt2", "355m", 354_823_168, f"{HF} gpt2-medium", 0.01),
    ("gpt2", "774m", 774_030_080, f"{HF} gpt2-large", 0.01),
    ("gpt2", "1.5b", 1_557_611_200, f"{HF} gpt2-xl", 0.01),
    ("gpt3", "125m", 125e6, "Brown et al. 2020, Table 2.1", 0.01),
    # Table 2.1's shape (24 layers, d_model 1024, 2048 positions) is GPT-2 medium's with 2048 positions: 355.9M
    ("gpt3", "350m", 350e6, "Brown et al. 2020, Table 2.1 (rounded: the table's shape gives 355.9M)", 0.02),
    ("gpt3", "760m", 760e6, "Brown et al. 2020, Table 2.1", 0.01),
    # the same shape as the released OPT-1.3B (1,315,758,080) and GPT-Neo 1.3B (1,315,575,808)
    ("gpt3", "1.3b", 1.3e9, "Brown et al. 2020, Table 2.1 (rounded: the table's shape gives 1.316B)", 0.02),
    # the same shape as the released OPT-2.7B (2,651,596,800)
    ("gpt3", "2.7b", 2.7e9, "Brown et al. 2020, Table 2.1 (rounded: the table's shape gives 2.652B)", 0.02),
    ("gpt3", "6.7b", 6.7e9, "Brown et al. 2020, Table 2.1", 0.01),
    ("gpt3", "13b", 13e9, "Brown et al. 2020, Table 2.1", 0.01),
    ("gpt3", "175b", 175e9, "Brown et al. 2020, Table 2.1", 0.01),
    ("gpt_neo", "125m", 125_198_592, f"{HF} EleutherAI/gpt-neo-125m", 0.01),
    ("gpt_neo", "1.3b", 1_315_575_808, f"{HF} EleutherAI/gpt-neo-1.3B", 0.01),
    ("gpt_neo", "2.7b", 2_651_307_520, f"{HF} EleutherAI/gpt-neo-2.7B", 0.01),
    ("gptj", "6b", 6_053_381_344, "EleutherAI/gpt-j-6b model card, n_parameters", 0.01),
    ("gpt_neox", "20b", 20_554_567_680, f"{HF} EleutherAI/gpt-neox-20b", 0.01),
    ("pythia", "70m", 70_426_624, "Biderman et al. 2023, Table 1 (total parameters)", 0.01),
    ("pythia", "160m", 162_322_944, "Biderman et al. 2023, Table 1", 0.01),
    ("pythia", "410m", 405_334_016, "Biderman et al. 2023, Table 1", 0.01),
    ("pythia", "1b", 1_011_781_632, "Biderman et al. 2023, Table 1", 0.01),
    ("pythia", "1.4b", 1_414_647_808, "Biderman et al. 2023, Table 1", 0.01),
    ("pythia", "2.8b", 2_775_208_960, "Biderman et al. 2023, Table 1", 0.01),
    ("pythia", "6.9b", 6_857_302_016, "Biderman et al. 2023, Table 1", 0.01),
    ("pythia", "12b", 11_846_072_320, "Biderman et al. 2023, Table 1", 0.01),
    ("opt", "125m", 125_239_296, f"{HF} facebook/opt-125m", 0.01),
    ("opt", "350m", 331_196_416, f"{HF} facebook/opt-350m", 0.01),
    ("opt", "1.3b", 1_315_758_080, f"{HF} facebook/opt-1.3b", 0.01),
    ("opt", "2.7b", 2_651_596_800, f"{HF} facebook/opt-2.7b", 0.01),
    ("opt", "6.7b", 6_658_473_984, f"{HF} facebook/opt-6.7b", 0.01),
    ("opt", "13b", 12_853_473_280, f"{HF} facebook/opt-13b", 0.01),
    ("opt", "30b", 29_974_540_288, f"{HF} facebook/opt-30b", 0.01),
    ("opt", "66b", 65_719_701_504, f"{HF} facebook/opt-66b", 0.01),
    ("opt", "175b", 175e9, "Zhang et al. 2022, Table 1", 0.01),
    ("bloom", "560m", 559_214_592, f"{HF} bigscience/bloom-560m", 0.01),
    ("bloom", "1b1", 1_065_314_304, f"{HF} bigscience/bloom-1b1", 0.01),
    ("bloom", "1b7", 1_722_408_960, f"{HF} bigscience/bloom-1b7", 0.01),
    ("bloom", "3b", 3_002_557_440, f"{HF} bigscience/bloom-3b", 0.01),
    ("bloom", "7b1", 7_069_016_064, f"{HF} bigscience/bloom-7b1", 0.01),
    ("bloom", "176b", 176_247_271_424, f"{HF} bigscience/bloom", 0.01),
    ("mpt", "7b", 6_649_286_656, f"{HF} mosaicml/mpt-7b", 0.01),
    ("falcon", "7b", 6_921_720_704, f"{HF} tiiuae/falcon-7b", 0.01),
    ("falcon", "40b", 41_303_293_952, f"{HF} tiiuae/falcon-40b", 0.01),
    ("llama", "7b", 6_738_415_616, f"{HF} huggyllama/llama-7b (Touvron et al. 2023: 6.7B)", 0.01),
    ("llama", "13b", 13_015_864_320, f"{HF} huggyllama/llama-13b (13.0B)", 0.01),
    ("llama", "33b", 32_528_943_616, f"{HF} huggyllama/llama-30b (32.5B)", 0.01),
    ("llama", "65b", 65_285_660_672, f"{HF} huggyllama/llama-65b (65.2B)", 0.01),
    ("llama", "70b", 68_976_648_192, f"{HF} meta-llama/Llama-2-70b-hf", 0.01),
    # the prefix decoder only changes the attention mask, so it has LLaMA's parameters
    ("prefix_llama", "7b", 6_738_415_616, f"{HF} huggyllama/llama-7b", 0.01),
    ("palm", "8b", 8.63e9, "Chowdhery et al. 2022, Table 1", 0.01),
    ("palm", "62b", 62.50e9, "Chowdhery et al. 2022, Table 1", 0.01),
    ("palm", "540b", 540.35e9, "Chowdhery et al. 2022, Table 1", 0.01),
    ("t5", "small", 60_506_624, f"{HF} t5-small (Raffel et al. 2020: 60M)", 0.01),
    ("t5", "base", 222_903_552, f"{HF} t5-base (220M)", 0.01),
    ("t5", "large", 737_668_096, f"{HF} t5-large", 0.01),
    ("t5", "3b", 2_851_598_336, f"{HF} t5-3b", 0.01),
    ("t5", "11b", 11_307_321_344, f"{HF} t5-11b", 0.01),
    ("t5_v1_1", "small", 76_961_152, f"{HF} google/t5-v1_1-small", 0.01),
    ("t5_v1_1", "base", 247_577_856, f"{HF} google/t5-v1_1-base", 0.01),
    ("t5_v1_1", "large", 783_150_080, f"{HF} google/t5-v1_1-large", 0.01),
    ("t5_v1_1", "xl", 2_849_757_184, f"{HF} google/t5-v1_1-xl", 0.01),
    ("t5_v1_1", "xxl", 11_135_332_352, f"{HF} google/t5-v1_1-xxl", 0.01),
    ("flan_t5", "small", 76_961_152, f"{HF} google/flan-t5-small", 0.01),
    ("flan_t5", "xxl", 11_135_332_352, f"{HF} google/flan-t5-xxl", 0.01),
    ("mt5", "small", 300_176_768, f"{HF} google/mt5-small (Xue et al. 2021: 300M)", 0.01),
    ("mt5", "base", 582_401_280, f"{HF} google/mt5-base (580M)", 0.01),
    ("mt5", "large", 1_229_581_312, f"{HF} google/mt5-large (1.2B)", 0.01),
    ("mt5", "xl", 3_742_619_648, f"{HF} google/mt5-xl (3.7B)", 0.01),
    ("mt5", "xxl", 12_921_057_280, f"{HF} google/mt5-xxl (13B)", 0.01),
    ("umt5", "small", 306_601_984, f"{HF} google/umt5-small", 0.01),
    ("umt5", "base", 592_043_520, f"{HF} google/umt5-base", 0.01),
    ("umt5", "xl", 3_768_356_864, f"{HF} google/umt5-xl", 0.01),
    ("umt5", "xxl", 12_972_531_712, f"{HF} google/umt5-xxl", 0.01),
    # Fedus et al. 2021, Table 9 rounds Switch-Base-128 to 7B and Switch-Large-128 to 26B
    ("switch", "base-8", 619_339_008, f"{HF} google/switch-base-8", 0.01),
    ("switch", "base-16", 1_072_397_568, f"{HF} google/switch-base-16", 0.01),
    ("switch", "base-32", 1_978_514_688, f"{HF} google/switch-base-32", 0.01),
    ("switch", "base-64", 3_790_748_928, f"{HF} google/switch-base-64", 0.01),
    ("switch", "base-128", 7_415_217_408, f"{HF} google/switch-base-128", 0.01),
    ("switch", "large-128", 26_309_291_008, f"{HF} google/switch-large-128", 0.01),
    # BertForPreTraining: encoder, pooler, masked-LM head (and a 1,538-parameter next-sentence head we omit)
    ("bert", "base", 110_106_428, f"{HF} bert-base-uncased (Devlin et al. 2019: 110M)", 0.01),
    ("bert", "large", 336_226_108, f"{HF} bert-large-uncased (340M)", 0.01),
    ("glm", "base", 110e6, "THUDM/GLM README, Pretrained Models", 0.01),
    ("glm", "large", 335e6, "THUDM/GLM README", 0.01),
    ("glm", "410m", 410e6, "THUDM/GLM README", 0.01),
    ("glm", "515m", 515e6, "THUDM/GLM README", 0.01),
    # the README's "10B" is rounded: its published config (48 layers, d_model 4096, vocab 50304) gives 9.88B
    ("glm", "10b", 10e9, "THUDM/GLM README (rounded: its config gives 9.88B)", 0.02),
]


def test_every_full_size_preset_has_a_published_figure():
    full = {(name, size) for name in presets.names() for size in presets.sizes(name) if size != "tiny"}
    covered = {(name, size) for name, size, *_ in PUBLISHED}
    # Flan-T5 shares T5 v1.1's shapes; two of its sizes are checked above.
    assert full - covered == {("flan_t5", s) for s in ("base", "large", "xl")} | {
        ("prefix_llama", s) for s in ("13b", "33b", "65b", "70b")}


@pytest.mark.parametrize(("name", "size", "published", "source", "tolerance"), PUBLISHED,
                         ids=[f"{row[0]}-{row[1]}" for row in PUBLISHED])
def test_full_size_parameter_count_matches_published(name, size, published, source, tolerance):
    with torch.device("meta"):
        model = Model(presets.get(name, size))
    count = model.num_parameters()
    assert abs(count - published) / published <= tolerance, f"{name} {size}: {count:,} vs {published:,.0f} ({source})"


@pytest.mark.parametrize("name", presets.names())
def test_tiny_preset_builds_and_runs_forward(name):
    config = presets.get(name, "tiny")
    torch.manual_seed(0)
    model = Model(config).eval()
    assert 100_000 <= model.num_parameters() <= 5_000_000
    ids = torch.randint(0, config.vocab_size, (2, 12))
    kwargs = {}
    if config.arch == "encoder_decoder":
        kwargs["decoder_input_ids"] = ids[:, :7]
    if config.arch == "prefix_decoder":
        kwargs["prefix_lengths"] = torch.tensor([4, 7])
    if config.position == "glm2d":  # part A positions, block positions 0
        positions = torch.stack([torch.arange(12), torch.zeros(12, dtype=torch.long)])
        kwargs["position_ids"] = positions[None].expand(2, -1, -1)
    with torch.no_grad():
        out = model(ids, **kwargs)
    length = 7 if config.arch == "encoder_decoder" else 12
    assert out.logits.shape == (2, length, config.vocab_size)
    assert torch.isfinite(out.logits).all()
    if config.pooler:
        assert out.pooled.shape == (2, config.d_model)


@pytest.mark.parametrize("name", ["llama", "gpt2", "t5"])
def test_tiny_model_loss_decreases_with_adamw(name):
    config = presets.get(name, "tiny")
    torch.manual_seed(0)
    model = Model(config)
    batch = torch.randint(0, config.vocab_size, (4, 16))
    kwargs = {"decoder_input_ids": model.shift_right(batch)} if config.arch == "encoder_decoder" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(batch, labels=batch, **kwargs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


HF_BACKED = ["bert", "bloom", "falcon", "flan_t5", "gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mpt", "mt5",
             "opt", "pythia", "switch", "t5", "t5_v1_1", "umt5"]


@pytest.mark.parametrize("name", HF_BACKED)
def test_tiny_preset_exported_to_hf_gives_transformers_the_same_logits(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    from llmlab.model.hf import families, save_hf

    config = presets.get(name, "tiny")
    if config.family not in families():
        pytest.skip(f"no Hugging Face adapter for {config.family} yet")
    torch.manual_seed(0)
    model = Model(config).eval()
    save_hf(model, tmp_path / "hf")
    auto = {"encoder": transformers.AutoModelForMaskedLM, "encoder_decoder": transformers.AutoModelForSeq2SeqLM,
            "decoder": transformers.AutoModelForCausalLM}[config.arch]
    reference = auto.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, config.vocab_size, (2, 10))
    kwargs = {"decoder_input_ids": ids[:, :6]} if config.arch == "encoder_decoder" else {}
    with torch.no_grad():
        ours, theirs = model(ids, **kwargs).logits, reference(input_ids=ids, **kwargs).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_families_name_the_hf_model_types():
    expected = {
        "gpt2": "gpt2", "gpt_neo": "gpt_neo", "gptj": "gptj", "gpt_neox": "gpt_neox", "pythia": "gpt_neox",
        "opt": "opt", "bloom": "bloom", "llama": "llama", "falcon": "falcon", "mpt": "mpt", "t5": "t5",
        "t5_v1_1": "t5", "flan_t5": "t5", "mt5": "mt5", "umt5": "umt5", "switch": "switch_transformers",
        "bert": "bert", "gpt3": "gpt3", "palm": "palm", "glm": "glm", "prefix_llama": "prefix_llama",
    }
    assert set(presets.names()) == set(expected)
    for name, family in expected.items():
        assert {presets.get(name, size).family for size in presets.sizes(name)} == {family}, name


def test_architectures_follow_the_papers():
    assert presets.opt(size="350m").norm_placement == "post" and presets.opt(size="350m").embed_proj_dim == 512
    assert presets.opt(size="1.3b").norm_placement == "pre" and presets.opt(size="1.3b").embed_proj_dim is None
    falcon_7b, falcon_40b = presets.falcon(size="7b"), presets.falcon(size="40b")
    assert falcon_7b.kv_heads == 1 and falcon_7b.parallel_residual and falcon_7b.parallel_shared_norm
    assert falcon_40b.kv_heads == 8 and falcon_40b.parallel_residual and not falcon_40b.parallel_shared_norm
    gpt3 = presets.gpt3(size="175b")
    assert [gpt3.layer_kind(i) for i in range(4)] == ["global", "local", "global", "local"] and gpt3.attn_window
    palm = presets.palm(size="540b")
    assert (palm.mlp, palm.parallel_residual, palm.kv_heads, palm.position, palm.tie_embeddings) == (
        "swiglu", True, 1, "rope", True)
    assert not (palm.qkv_bias or palm.out_bias or palm.mlp_bias or palm.norm_bias)
    glm = presets.glm(size="10b")
    assert (glm.arch, glm.position) == ("prefix_decoder", "glm2d")
    bloom = presets.bloom(size="176b")
    assert bloom.position == "alibi" and bloom.embedding_norm
    mpt = presets.mpt(size="7b")
    assert mpt.position == "alibi" and not (mpt.qkv_bias or mpt.out_bias or mpt.mlp_bias or mpt.norm_bias)
    assert presets.llama(size="70b").kv_heads == 8 and presets.llama(size="65b").kv_heads == 64
    assert presets.t5(size="small").head_input_scale == 512 ** -0.5
    assert presets.t5(size="tiny").head_input_scale == 128 ** -0.5
    assert presets.t5(size="xl", version="1.1") == presets.t5_v1_1(size="xl")
    assert presets.umt5(size="small").relative_per_layer and not presets.mt5(size="small").relative_per_layer


def test_get_sizes_names_and_overrides():
    assert presets.get("llama", "7b") == presets.llama(size="7b") == presets.get("llama")
    assert presets.sizes("t5") == ["small", "base", "large", "3b", "11b", "tiny"]
    assert presets.llama(size="7b", max_seq_len=4096).max_seq_len == 4096
    assert presets.get("gpt2", "tiny", vocab_size=300).vocab_size == 300
    tiny_gpt2 = presets.gpt2(size="tiny")
    assert tiny_gpt2.eos_token_id == tiny_gpt2.vocab_size - 1  # GPT-2's 50256 does not fit a tiny vocabulary
    for call, words in [
        (lambda: presets.get("gpt5"), "gpt5"),
        (lambda: presets.llama(size="8b"), "8b"),
        (lambda: presets.llama(size="7b", n_expertz=2), "n_expertz"),
        (lambda: presets.t5(size="small", version="2"), "version"),
        (lambda: presets.gpt2(size="124m", n_heads=5), "n_heads"),
    ]:
        with pytest.raises(ConfigError, match=words):
            call()
