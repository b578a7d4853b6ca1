"""The surveys' model tables (/work/shared/survey-models.md) as data: one Entry per row, one Size per linked preset.

Figures are the surveys' own unless a paper gives another (the `source` then says so). A Size links to a full-size
preset of llmlab.model.presets, with field overrides where the model is a published shape of a family llmlab already
builds (GPT-1 is GPT-2's block post-LN; MT-NLG and Jurassic-1 are GPT-3's at other widths); `reason` explains a
published figure more than 2% from the preset's count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

T, B, M = 1e12, 1e9, 1e6


@dataclass(frozen=True)
class Size:
    """One published size of a model and the preset that builds it (None where no architecture is published)."""

    label: str
    parameters: float | None  # the published figure
    preset: str | None = None
    preset_size: str | None = None
    tokens: float | None = None  # training tokens, where the paper gives a count
    overrides: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why the preset's count differs from `parameters` by more than 2%
    source: str | None = None  # where `parameters` or `tokens` come from when not the survey table


@dataclass(frozen=True)
class Entry:
    """One row of the survey's tables."""

    name: str
    organisation: str
    date: str
    parameters: str  # as the survey writes it
    training_tokens: str  # as the survey writes it
    architecture: str
    open_weights: bool
    family: str
    paper: str
    base_model: str | None = None
    open_note: str | None = None
    kind: str = "base"  # "base" (pre-trained) or "instruction" (instruction-tuned / aligned)
    sizes: tuple[Size, ...] = ()


def _sizes(preset: str, rows, tokens=None, **common) -> tuple[Size, ...]:
    """Sizes of one preset from (label, published, preset size[, reason]) rows."""
    out = []
    for row in rows:
        label, published, size, *rest = row
        reason = rest[0] if rest else None
        out.append(Size(label, published, preset, size, tokens, reason=reason, **common))
    return tuple(out)


GPT1 = dict(vocab_size=40478, max_seq_len=512, norm_placement="post", final_norm=False)
LAMDA = dict(arch="decoder", n_layers=64, d_model=8192, n_heads=128, head_dim=128, d_ff=65536, mlp="geglu",
             vocab_size=32000, max_seq_len=2048)
UL2 = dict(n_layers=32, d_model=4096, n_heads=16, head_dim=256, d_ff=16384)
GLM_130B = dict(n_layers=70, d_model=12288, n_heads=96, d_ff=32768, mlp="geglu", vocab_size=150528,
                position="rope", max_seq_len=2048)
CHATGLM_6B = dict(n_layers=28, d_model=4096, n_heads=32, d_ff=16384, vocab_size=130528, position="rope",
                  max_seq_len=2048)
DENSE = dict(layer_kinds=None, attn_window=None)  # GPT-3's shape without its banded layers
T5_ROUNDED = "Raffel et al. round up; the released checkpoint has exactly the preset's count (Hugging Face)"
T0_ROUNDED = "T0 is T5 v1.1 LM-adapted at XL, whose checkpoint counts 2.85B; '3B' is its rounded name"
MT5_LARGE = "rounded: google/mt5-large counts 1.23B"
BLOOM_1B1 = "rounded: bigscience/bloom-1b1 counts 1.07B"
UL2_ROUNDED = "rounded: UL2's published config (32 + 32 layers, d_model 4096, d_ff 16384) gives 19.6B"

ENTRIES: tuple[Entry, ...] = (
    # --- pre-trained base models ---------------------------------------------------------------------------------
    Entry("GPT-1", "OpenAI", "2018-06", "117M", "BooksCorpus", "causal decoder", True, "gpt",
          "Radford et al. 2018, Improving Language Understanding by Generative Pre-Training",
          sizes=(Size("117M", 117 * M, "gpt2", "124m", overrides=GPT1,
                      source="GPT-2's block post-LN, 40,478 BPE tokens, 512 positions"),)),
    Entry("BERT", "Google", "2018-10", "110M / 340M", "3.3B words", "encoder (MLM + NSP)", True, "bert",
          "Devlin et al. 2019, BERT: Pre-training of Deep Bidirectional Transformers",
          sizes=_sizes("bert", [("base", 110 * M, "base"), ("large", 340 * M, "large")], tokens=128 * B,
                       source="tokens: Devlin et al. §A.2, 1M steps × 128,000 tokens")),
    Entry("GPT-2", "OpenAI", "2019-02", "124M–1.5B", "WebText", "causal decoder", True, "gpt2",
          "Radford et al. 2019, Language Models are Unsupervised Multitask Learners",
          sizes=_sizes("gpt2", [("124M", 124 * M, "124m"), ("355M", 355 * M, "355m"), ("774M", 774 * M, "774m"),
                                ("1.5B", 1.542 * B, "1.5b")], source="1.5B: Radford et al. Table 2, 1542M")),
    Entry("T5", "Google", "2019-10", "60M–11B (survey: 13B)", "C4; about 1T for the released models",
          "encoder-decoder, span corruption", True, "t5",
          "Raffel et al. 2020, Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer",
          sizes=_sizes("t5", [("small", 60 * M, "small"), ("base", 220 * M, "base"),
                              ("large", 770 * M, "large", T5_ROUNDED), ("3B", 3 * B, "3b", T5_ROUNDED),
                              ("11B", 11 * B, "11b", T5_ROUNDED)], tokens=1 * T)),
    Entry("mT5", "Google", "2020-10", "300M–13B", "mC4, 101 languages", "encoder-decoder", True, "mt5",
          "Xue et al. 2021, mT5: A Massively Multilingual Pre-trained Text-to-Text Transformer",
          sizes=_sizes("mt5", [("small", 300 * M, "small"), ("base", 580 * M, "base"), ("large", 1.2 * B, "large", MT5_LARGE),
                               ("XL", 3.7 * B, "xl"), ("XXL", 13 * B, "xxl")], tokens=1 * T,
                       source="tokens: Xue et al. §3, 1M steps × 1024 × 1024")),
    Entry("GPT-3", "OpenAI", "2020-05", "125M–175B", "300B",
          "causal decoder, alternating dense / locally banded sparse attention", False, "gpt3",
          "Brown et al. 2020, Language Models are Few-Shot Learners",
          sizes=_sizes("gpt3", [("125M", 125 * M, "125m"), ("350M", 350 * M, "350m"), ("760M", 760 * M, "760m"),
                                ("1.3B", 1.3 * B, "1.3b"), ("2.7B", 2.7 * B, "2.7b"), ("6.7B", 6.7 * B, "6.7b"),
                                ("13B", 13 * B, "13b"), ("175B", 175 * B, "175b")], tokens=300 * B)),
    Entry("GPT-Neo", "EleutherAI", "2021-03", "125M–2.7B", "the Pile", "causal decoder, local/global layers", True,
          "gpt_neo", "Black et al. 2021, GPT-Neo (EleutherAI model cards)",
          sizes=(Size("125M", 125 * M, "gpt_neo", "125m", 300 * B, source="tokens: model card"),
                 Size("1.3B", 1.3 * B, "gpt_neo", "1.3b", 380 * B, source="tokens: model card"),
                 Size("2.7B", 2.7 * B, "gpt_neo", "2.7b", 420 * B, source="tokens: model card"))),
    Entry("GPT-J", "EleutherAI", "2021-06", "6B", "the Pile, 402B", "causal decoder, parallel attention+MLP, partial RoPE",
          True, "gptj", "Wang & Komatsuzaki 2021, GPT-J-6B",
          sizes=(Size("6B", 6.053 * B, "gptj", "6b", 402 * B, source="model card: 6,053,381,344"),)),
    Entry("LaMDA", "Google", "2021-05", "137B", "2.81T SentencePiece tokens (1.56T words)", "causal decoder", False,
          "lamda", "Thoppilan et al. 2022, LaMDA: Language Models for Dialog Applications",
          sizes=(Size("137B", 137 * B, "t5_v1_1", "xxl", 2.81 * T, overrides=LAMDA,
                      source="shape: Thoppilan et al. §3 (64 layers, d_model 8192, gated GELU, T5 relative bias)"),)),
    Entry("Jurassic-1", "AI21", "2021-08", "178B", "300B", "causal decoder", False, "jurassic",
          "Lieber et al. 2021, Jurassic-1: Technical Details and Evaluation",
          sizes=(Size("Jumbo", 178 * B, "gpt3", "175b", 300 * B,
                      overrides=dict(n_layers=76, d_model=13824, n_heads=96, d_ff=4 * 13824, vocab_size=256000,
                                     **DENSE), source="shape: Lieber et al. Table 1"),)),
    Entry("MT-NLG", "Microsoft, NVIDIA", "2021-10", "530B", "270B", "causal decoder", False, "mt_nlg",
          "Smith et al. 2022, Using DeepSpeed and Megatron to Train Megatron-Turing NLG 530B",
          sizes=(Size("530B", 530 * B, "gpt3", "175b", 270 * B,
                      overrides=dict(n_layers=105, d_model=20480, n_heads=128, d_ff=4 * 20480, **DENSE),
                      source="shape: Smith et al. §3"),)),
    Entry("ERNIE 3.0 Titan", "Baidu", "2021-12", "260B", "300B", "multi-task", False, "ernie",
          "Wang et al. 2021, ERNIE 3.0 Titan", sizes=(Size("260B", 260 * B, tokens=300 * B),)),
    Entry("Gopher", "DeepMind", "2021-12", "280B", "300B", "causal decoder (RMSNorm, relative positions)", False,
          "gopher", "Rae et al. 2021, Scaling Language Models: Methods, Analysis & Insights from Training Gopher",
          sizes=(Size("280B", 280 * B, tokens=300 * B),)),  # Transformer-XL relative positions: no llmlab preset
    Entry("Chinchilla", "DeepMind", "2022-04", "70B", "1.4T", "causal decoder", False, "chinchilla",
          "Hoffmann et al. 2022, Training Compute-Optimal Large Language Models",
          sizes=(Size("70B", 70 * B, tokens=1.4 * T),)),  # Gopher's architecture: no llmlab preset
    Entry("PaLM", "Google", "2022-04", "8B / 62B / 540B", "780B",
          "causal decoder, SwiGLU, parallel layers, multi-query, RoPE, no biases", False, "palm",
          "Chowdhery et al. 2022, PaLM: Scaling Language Modeling with Pathways",
          sizes=_sizes("palm", [("8B", 8.63 * B, "8b"), ("62B", 62.50 * B, "62b"), ("540B", 540.35 * B, "540b")],
                       tokens=780 * B, source="parameters: Chowdhery et al. Table 1")),
    Entry("GPT-NeoX-20B", "EleutherAI", "2022-04", "20B", "the Pile", "causal decoder, RoPE, parallel attention+MLP",
          True, "gpt_neox", "Black et al. 2022, GPT-NeoX-20B: An Open-Source Autoregressive Language Model",
          sizes=(Size("20B", 20.55 * B, "gpt_neox", "20b", 472 * B,
                      source="Black et al.: 20,554,567,680 parameters; 150,000 steps × 3.15M tokens"),)),
    Entry("OPT", "Meta", "2022-05", "125M–175B", "180B", "causal decoder (350M post-LN)", True, "opt",
          "Zhang et al. 2022, OPT: Open Pre-trained Transformer Language Models", open_note="175B on request",
          sizes=_sizes("opt", [("125M", 125 * M, "125m"), ("350M", 331 * M, "350m"), ("1.3B", 1.3 * B, "1.3b"),
                               ("2.7B", 2.7 * B, "2.7b"), ("6.7B", 6.7 * B, "6.7b"), ("13B", 13 * B, "13b"),
                               ("30B", 30 * B, "30b"), ("66B", 66 * B, "66b"), ("175B", 175 * B, "175b")],
                       tokens=180 * B, source="350M: the facebook/opt-350m checkpoint counts 331M")),
    Entry("UL2", "Google", "2022-05", "20B", "C4, 1T", "encoder-decoder, mixture of denoisers", True, "ul2",
          "Tay et al. 2022, UL2: Unifying Language Learning Paradigms",
          sizes=(Size("20B", 20 * B, "t5_v1_1", "xxl", 1 * T, overrides=UL2, reason=UL2_ROUNDED),)),
    Entry("BLOOM", "BigScience", "2022-07", "560M–176B", "366B, 46 languages + 13 programming languages",
          "causal decoder, ALiBi, embedding LayerNorm", True, "bloom",
          "BigScience 2022, BLOOM: A 176B-Parameter Open-Access Multilingual Language Model",
          sizes=_sizes("bloom", [("560M", 560 * M, "560m"), ("1.1B", 1.1 * B, "1b1", BLOOM_1B1), ("1.7B", 1.7 * B, "1b7"),
                                 ("3B", 3 * B, "3b"), ("7.1B", 7.1 * B, "7b1"), ("176B", 176 * B, "176b")],
                       tokens=366 * B)),
    Entry("GLM-130B", "Tsinghua", "2022-08", "130B", "400B (Chinese, English)",
          "GLM blank infilling (bidirectional prefix)", True, "glm",
          "Zeng et al. 2022, GLM-130B: An Open Bilingual Pre-trained Model",
          sizes=(Size("130B", 130 * B, "glm", "10b", 400 * B, overrides=GLM_130B,
                      source="shape: Zeng et al. (70 layers, d_model 12288, GeGLU, RoPE)"),)),
    Entry("Switch Transformer", "Google", "2021-01", "up to 1.6T", "C4", "encoder-decoder, top-1 mixture of experts",
          True, "switch", "Fedus et al. 2021, Switch Transformers: Scaling to Trillion Parameter Models",
          sizes=(*_sizes("switch", [("base-8", 619.3 * M, "base-8"), ("base-16", 1.072 * B, "base-16"),
                                    ("base-32", 1.979 * B, "base-32"), ("base-64", 3.791 * B, "base-64"),
                                    ("base-128", 7.4 * B, "base-128"), ("large-128", 26.3 * B, "large-128")],
                         source="Fedus et al. Table 9 (base-128, large-128); google/switch-base-* checkpoints"),
                 Size("C-2048", 1.571 * T, source="Fedus et al. Table 9: no preset"))),
    Entry("ST-MoE", "Google", "2022-02", "269B (32B active)", "", "encoder-decoder MoE, router z-loss", False,
          "st_moe", "Zoph et al. 2022, ST-MoE: Designing Stable and Transferable Sparse Expert Models",
          sizes=(Size("32B", 269 * B),)),
    Entry("Falcon", "TII", "2023-05", "7B / 40B", "1.5T / 1T RefinedWeb", "causal decoder, multi-query / grouped, parallel",
          True, "falcon", "Almazrouei et al. 2023, The Falcon Series of Open Language Models",
          sizes=(Size("7B", 7 * B, "falcon", "7b", 1.5 * T), Size("40B", 40 * B, "falcon", "40b", 1 * T,
                                                            reason="rounded: tiiuae/falcon-40b counts 41.3B"))),
    Entry("LLaMA", "Meta", "2023-02", "7B / 13B / 33B / 65B", "1.0T (7B, 13B), 1.4T (33B, 65B)",
          "causal decoder, RMSNorm, SwiGLU, RoPE", True, "llama",
          "Touvron et al. 2023a, LLaMA: Open and Efficient Foundation Language Models",
          sizes=(Size("7B", 6.7 * B, "llama", "7b", 1 * T), Size("13B", 13.0 * B, "llama", "13b", 1 * T),
                 Size("33B", 32.5 * B, "llama", "33b", 1.4 * T), Size("65B", 65.2 * B, "llama", "65b", 1.4 * T))),
    Entry("Llama 2", "Meta", "2023-07", "7B / 13B / 70B", "2T", "as LLaMA, grouped-query attention at 70B", True,
          "llama", "Touvron et al. 2023b, Llama 2: Open Foundation and Fine-Tuned Chat Models",
          sizes=(Size("7B", 7 * B, "llama", "7b", 2 * T, overrides=dict(max_seq_len=4096),
                      reason="rounded: LLaMA-7B's shape, 6.74B (meta-llama/Llama-2-7b-hf)"),
                 Size("13B", 13 * B, "llama", "13b", 2 * T, overrides=dict(max_seq_len=4096)),
                 Size("70B", 70 * B, "llama", "70b", 2 * T))),
    Entry("PanGu-α", "Huawei", "2021-04", "2.6B–200B", "Chinese", "causal decoder", True, "pangu",
          "Zeng et al. 2021, PanGu-α: Large-scale Autoregressive Pretrained Chinese Language Models",
          open_note="partly (2.6B and 13B)", sizes=(Size("2.6B", 2.6 * B), Size("13B", 13 * B),
                                                    Size("200B", 200 * B))),
    Entry("CodeGen", "Salesforce", "2022-03", "350M–16B", "the Pile, BigQuery, BigPython", "causal decoder", True,
          "codegen", "Nijkamp et al. 2023, CodeGen: An Open Large Language Model for Code",
          sizes=(Size("350M", 350 * M, "gptj", "6b", overrides=dict(n_layers=20, d_model=1024, n_heads=16, d_ff=4096,
                                                                     vocab_size=51200, rope_fraction=0.5),
                      source="GPT-J's block (Salesforce/codegen-350M config)"),
                 Size("16B", 16 * B, "gptj", "6b", overrides=dict(n_layers=34, d_model=6144, n_heads=24, d_ff=4 * 6144,
                                                                   vocab_size=51200, rope_fraction=0.25),
                      source="GPT-J's block (Salesforce/codegen-16B config)"))),
    # --- instruction-tuned and aligned models ---------------------------------------------------------------------
    Entry("InstructGPT / GPT-3.5 (text-davinci-002/003)", "OpenAI", "2022-01 / 2022-11", "175B", "", "causal decoder",
          False, "gpt3", "Ouyang et al. 2022, Training language models to follow instructions with human feedback",
          base_model="GPT-3 (SFT, RLHF with PPO)", kind="instruction",
          sizes=(Size("175B", 175 * B, "gpt3", "175b"),)),
    Entry("FLAN", "Google", "2021-09", "137B", "", "causal decoder", False, "lamda",
          "Wei et al. 2022, Finetuned Language Models Are Zero-Shot Learners",
          base_model="LaMDA-PT, 60+ datasets as instructions", kind="instruction",
          sizes=(Size("137B", 137 * B, "t5_v1_1", "xxl", overrides=LAMDA),)),
    Entry("T0", "BigScience", "2021-10", "3B / 11B (survey: 13B)", "", "encoder-decoder", True, "t5",
          "Sanh et al. 2022, Multitask Prompted Training Enables Zero-Shot Task Generalization",
          base_model="T5 (LM-adapted), P3 prompts", kind="instruction",
          sizes=(Size("3B", 3 * B, "t5_v1_1", "xl", reason=T0_ROUNDED), Size("11B", 11 * B, "t5_v1_1", "xxl"))),
    Entry("Flan-T5", "Google", "2022-10", "80M–11B", "", "encoder-decoder", True, "t5",
          "Chung et al. 2022, Scaling Instruction-Finetuned Language Models", base_model="T5, 1,836 tasks",
          kind="instruction",
          sizes=_sizes("flan_t5", [("small", 80 * M, "small", "rounded: google/flan-t5-small counts 77.0M"),
                                   ("base", 250 * M, "base"), ("large", 780 * M, "large"),
                                   ("XL", 3 * B, "xl", "rounded: google/flan-t5-xl counts 2.85B"),
                                   ("XXL", 11 * B, "xxl")])),
    Entry("Flan-PaLM", "Google", "2022-10", "540B", "", "causal decoder", False, "palm",
          "Chung et al. 2022, Scaling Instruction-Finetuned Language Models", base_model="PaLM", kind="instruction",
          sizes=(Size("540B", 540.35 * B, "palm", "540b"),)),
    Entry("Flan-UL2", "Google", "2023-03", "20B", "", "encoder-decoder", True, "ul2",
          "Tay et al. 2023, Flan-UL2 (Google model release)", base_model="UL2", kind="instruction",
          sizes=(Size("20B", 20 * B, "t5_v1_1", "xxl", overrides=UL2, reason=UL2_ROUNDED),)),
    Entry("BLOOMZ", "BigScience", "2022-11", "560M–176B", "", "causal decoder", True, "bloom",
          "Muennighoff et al. 2023, Crosslingual Generalization through Multitask Finetuning", base_model="BLOOM, xP3",
          kind="instruction",
          sizes=_sizes("bloom", [("560M", 560 * M, "560m"), ("1.1B", 1.1 * B, "1b1", BLOOM_1B1), ("1.7B", 1.7 * B, "1b7"),
                                 ("3B", 3 * B, "3b"), ("7.1B", 7.1 * B, "7b1"), ("176B", 176 * B, "176b")])),
    Entry("mT0", "BigScience", "2022-11", "300M–13B", "", "encoder-decoder", True, "mt5",
          "Muennighoff et al. 2023, Crosslingual Generalization through Multitask Finetuning", base_model="mT5, xP3",
          kind="instruction",
          sizes=_sizes("mt5", [("small", 300 * M, "small"), ("base", 580 * M, "base"), ("large", 1.2 * B, "large", MT5_LARGE),
                               ("XL", 3.7 * B, "xl"), ("XXL", 13 * B, "xxl")])),
    Entry("OPT-IML", "Meta", "2022-12", "30B / 175B", "", "causal decoder", True, "opt",
          "Iyer et al. 2022, OPT-IML: Scaling Language Model Instruction Meta Learning",
          base_model="OPT, 2,000 tasks, pretraining data mixed in", kind="instruction",
          sizes=(Size("30B", 30 * B, "opt", "30b"), Size("175B", 175 * B, "opt", "175b"))),
    Entry("ChatGPT", "OpenAI", "2022-11", "undisclosed", "", "", False, "gpt", "OpenAI 2022, Introducing ChatGPT",
          base_model="GPT-3.5, RLHF", kind="instruction"),
    Entry("Alpaca", "Stanford", "2023-03", "7B", "", "causal decoder", True, "llama",
          "Taori et al. 2023, Stanford Alpaca", kind="instruction",
          base_model="LLaMA-7B, 52K self-instruct examples from text-davinci-003",
          sizes=(Size("7B", 6.7 * B, "llama", "7b"),)),
    Entry("Vicuna, WizardLM, Orca, Dolly, Platypus", "various", "2023", "7B–70B", "", "causal decoder", True, "llama",
          "Chiang et al. 2023 (Vicuna); Xu et al. 2023 (WizardLM); Mukherjee et al. 2023 (Orca); Conover et al. 2023 "
          "(Dolly); Lee et al. 2023 (Platypus)", base_model="LLaMA / Llama 2 / Pythia fine-tunes", kind="instruction",
          sizes=(Size("7B", 6.7 * B, "llama", "7b"), Size("13B", 13.0 * B, "llama", "13b"),
                 Size("70B", 70 * B, "llama", "70b"))),
    Entry("ChatGLM", "Tsinghua", "2023-03", "6B / 130B", "", "GLM", True, "glm", "Zeng et al. 2023, ChatGLM-6B",
          base_model="GLM", open_note="6B", kind="instruction",
          sizes=(Size("6B", 6.2 * B, "glm", "10b", overrides=CHATGLM_6B, source="THUDM/chatglm-6b config"),
                 Size("130B", 130 * B, "glm", "10b", overrides=GLM_130B))),
    Entry("GPT-4", "OpenAI", "2023-03", "undisclosed", "", "multimodal", False, "gpt", "OpenAI 2023, GPT-4 Technical Report",
          base_model="multimodal", kind="instruction"),
    Entry("ERNIE Bot, Bard, 讯飞星火 (Spark), 通义千问 (Qwen)", "Baidu, Google, iFlytek, Alibaba", "2023", "", "", "", False,
          "chat", "vendors' announcements", open_note="Qwen yes", kind="instruction"),
)

ALSO_NAMED = ("RoBERTa", "ALBERT", "ELECTRA", "DeBERTa", "DistilBERT", "SpanBERT", "XLNet", "Transformer-XL",
              "Longformer", "BART", "MASS", "UniLM", "Pegasus", "ERNIE", "RoFormer (RoPE)", "RWKV (an RNN)",
              "Mamba (a state-space model)", "phi-1", "Qwen", "MOSS", "BELLE", "Baichuan-style Chinese models",
              "ELMo", "ULMFiT", "word2vec (pre-transformer)")

PUBLIC_APIS = {  # survey §3.1
    "GPT-3": ("ada", "babbage (≈1B)", "curie (≈6.7B)", "davinci (175B)", "text-ada-001", "text-babbage-001",
              "text-curie-001"),
    "Codex": ("code-cushman-001 (12B)", "code-davinci-002"),
    "GPT-3.5": ("code-davinci-002", "text-davinci-002", "text-davinci-003", "gpt-3.5-turbo-0301"),
    "GPT-4": ("gpt-4", "gpt-4-0314", "gpt-4-32k", "gpt-4-32k-0314"),
}
