"""llmlab.infer.generate against transformers' generate on the same weights, and its own guarantees: a batch gives
each prompt's tokens alone, every cache gives the same tokens, seeds reproduce samples, stop strings and streaming."""

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.infer.config import GenerationConfig
from llmlab.infer.generate import generate, stream
from llmlab.model import Model, presets
from llmlab.model.hf import save_hf

transformers = pytest.importorskip("transformers")

# every family with a Hugging Face class, decoders and encoder-decoders
HF_FAMILIES = ["gpt2", "gpt_neo", "gptj", "pythia", "opt", "bloom", "llama", "falcon", "mpt", "t5", "t5_v1_1", "mt5",
               "umt5", "switch"]
OWN_FAMILIES = ["prefix_llama", "palm", "gpt3"]  # presets without a transformers class (prefix decoder, parallel, …)
PROMPTS = [[5, 9, 14], [3, 8, 20, 21, 7, 2, 30], [11, 4, 6, 19, 1]]
VOCAB = 97


def tiny_model(name: str) -> Model:
    """A tiny random model of a family whose logits are peaked enough that greedy choices are not near-ties."""
    torch.manual_seed(0)
    config = presets.get(name, "tiny", vocab_size=VOCAB, init_std=0.2, dropout=0.0)
    return Model(config).eval()


def hf_generate(reference, prompts, new_tokens, pad, eos=None, **options):
    """transformers' generate on the left-padded prompts; returns each row's new tokens (through EOS)."""
    longest = max(map(len, prompts))
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    config = transformers.GenerationConfig(max_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                                           eos_token_id=eos, bos_token_id=None, **options,
                                           decoder_start_token_id=getattr(reference.config, "decoder_start_token_id",
                                                                          None))
    with torch.no_grad():
        out = reference.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    rows = out[:, 1 if reference.config.is_encoder_decoder else longest:].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


def as_transformers(model: Model, tmp_path):
    save_hf(model, tmp_path / "hf")
    auto = transformers.AutoModelForSeq2SeqLM if model.config.arch == "encoder_decoder" else \
        transformers.AutoModelForCausalLM
    return auto.from_pretrained(tmp_path / "hf").eval()


@pytest.mark.parametrize("name", HF_FAMILIES)
def test_greedy_batch_equals_transformers(name, tmp_path):
    model = tiny_model(name)
    reference = as_transformers(model, tmp_path)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    expected = hf_generate(reference, PROMPTS, 10, pad, model.config.eos_token_id)
    for cache in ("dynamic", "static", "ragged", "paged"):
        assert generate(model, PROMPTS, max_new_tokens=10, cache=cache).tokens == expected, cache


@pytest.mark.parametrize("options", [dict(repetition_penalty=1.8), dict(no_repeat_ngram_size=2),
                                     dict(min_new_tokens=6)], ids=["repetition", "no-repeat-2gram", "min-new"])
@pytest.mark.parametrize("name", ["gpt2", "llama", "t5"])
def test_processors_equal_transformers(name, options, tmp_path):
    model = tiny_model(name)
    reference = as_transformers(model, tmp_path)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    eos = None
    if "min_new_tokens" in options:  # an EOS that greedy decoding would pick early, held back until the minimum
        eos = generate(model, PROMPTS[1:2], max_new_tokens=2, ignore_eos=True).tokens[0][1]
    expected = hf_generate(reference, PROMPTS, 10, pad, eos, **options)
    ours = generate(model, PROMPTS, max_new_tokens=10, eos_token_id=eos, ignore_eos=eos is None, **options)
    assert ours.tokens == expected



@pytest.mark.parametrize("cache", ["dynamic", "static", "ragged", "paged"])
@pytest.mark.parametrize("name", HF_FAMILIES + OWN_FAMILIES)
def test_a_batch_gives_each_prompt_its_tokens_alone(name, cache):
    model = tiny_model(name)
    batched = generate(model, PROMPTS, max_new_tokens=8, ignore_eos=True, cache=cache).tokens
    alone = [generate(model, [prompt], max_new_tokens=8, ignore_eos=True, cache="dynamic").tokens[0]
             for prompt in PROMPTS]
    assert batched == alone


def test_seeded_samples_repeat_and_do_not_depend_on_the_batch():
    model = tiny_model("llama")
    options = dict(max_new_tokens=12, do_sample=True, temperature=1.5, top_k=40, seed=7, ignore_eos=True)
    first = generate(model, PROMPTS, **options).tokens
    assert generate(model, PROMPTS, **options).tokens == first
    assert [generate(model, [p], **options).tokens[0] for p in PROMPTS] == first
    assert generate(model, PROMPTS, **{**options, "seed": 8}).tokens != first


def test_n_samples_share_a_prefill_and_follow_their_seeds():
    model = tiny_model("gpt2")
    options = dict(max_new_tokens=10, do_sample=True, seed=3, ignore_eos=True)
    both = generate(model, PROMPTS[:2], n=3, **options).tokens
    assert len(both) == 6 and len({tuple(t) for t in both[:3]}) > 1
    assert generate(model, PROMPTS[1:2], n=3, **options).tokens == both[3:]


def test_logprobs_are_the_models_log_softmax():
    model = tiny_model("llama")
    result = generate(model, PROMPTS[:1], max_new_tokens=5, ignore_eos=True, logprobs=3)
    sequence = torch.tensor([PROMPTS[0] + result.tokens[0]])
    with torch.no_grad():
        logprobs = model(sequence).logits[0].log_softmax(-1)
    start = len(PROMPTS[0]) - 1
    for step, token in enumerate(result.tokens[0]):
        assert result.logprobs[0][step] == pytest.approx(logprobs[start + step, token].item(), abs=1e-5)
        top = logprobs[start + step].topk(3)
        assert list(result.top_logprobs[0][step]) == top.indices.tolist()


def test_eos_stops_a_row_and_says_why():
    model = tiny_model("gpt2")
    free = generate(model, PROMPTS, max_new_tokens=8, ignore_eos=True).tokens
    eos = free[0][3]
    result = generate(model, PROMPTS, max_new_tokens=8, eos_token_id=eos)
    assert result.tokens[0] == free[0][: free[0].index(eos) + 1] and result.finish_reasons[0] == "stop"
    for row in (1, 2):
        if eos not in free[row]:
            assert result.tokens[row] == free[row] and result.finish_reasons[row] == "length"


@pytest.fixture(scope="module")
def text_model():
    """A tiny llama with a byte-level BPE trained on a few sentences, so prompts and stop strings are text."""
    from llmlab.data.tokenizer import train_tokenizer

    text = ["The cat sat on the mat. The dog ran to the park; éclair ☕ 汉字. " * 3, "Once upon a time, there was"]
    tokenizer = train_tokenizer(text * 20, 300, "byte_bpe")
    torch.manual_seed(1)
    model = Model(presets.llama("tiny", vocab_size=tokenizer.get_vocab_size(), init_std=0.2)).eval()
    model.tokenizer = tokenizer
    return model


def test_stop_strings_end_the_text_and_the_tokens(text_model):
    free = generate(text_model, "The cat", max_new_tokens=24, ignore_eos=True)
    text = free.text[0]
    stop = text[5:8]  # three characters that will appear, wherever the token boundaries fall
    result = generate(text_model, "The cat", max_new_tokens=24, ignore_eos=True, stop=[stop, "never seen"])
    assert result.text[0] == text[: text.index(stop)] and result.finish_reasons[0] == "stop"
    assert free.tokens[0][: len(result.tokens[0])] == result.tokens[0]
    decoded = text_model.tokenizer.decode(result.tokens[0])
    assert stop in decoded and stop not in text_model.tokenizer.decode(result.tokens[0][:-1])
    kept = generate(text_model, "The cat", max_new_tokens=24, ignore_eos=True, stop=[stop],
                    include_stop_str_in_output=True)
    assert kept.text[0] == text[: text.index(stop) + len(stop)]


def test_stop_strings_end_where_transformers_ends(text_model, tmp_path):
    text = generate(text_model, "The cat", max_new_tokens=24, ignore_eos=True).text[0]
    stops = [text[9:12], text[15:17]]
    save_hf(text_model, tmp_path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=text_model.tokenizer)
    ids = torch.tensor([text_model.tokenizer.encode("The cat").ids])
    with torch.no_grad():
        out = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                 do_sample=False, stop_strings=stops, tokenizer=tokenizer, eos_token_id=None,
                                 pad_token_id=0)
    ours = generate(text_model, "The cat", max_new_tokens=24, ignore_eos=True, stop=stops)
    assert ours.tokens[0] == out[0, ids.shape[1]:].tolist() and ours.finish_reasons == ["stop"]


def test_stream_pieces_join_to_the_generated_text(text_model):
    options = dict(max_new_tokens=20, ignore_eos=True)
    pieces = list(stream(text_model, "Once upon", **options))
    assert "".join(piece.text for piece in pieces) == generate(text_model, "Once upon", **options).text[0]
    assert [piece.finish_reason for piece in pieces] == [None] * 19 + ["length"]
    stop = generate(text_model, "Once upon", **options).text[0][4:6]
    pieces = list(stream(text_model, "Once upon", stop=[stop], **options))
    assert "".join(p.text for p in pieces) == generate(text_model, "Once upon", stop=[stop], **options).text[0]
    assert pieces[-1].finish_reason == "stop"


def test_stream_with_a_draft_model_gives_the_targets_pieces(text_model):
    torch.manual_seed(2)
    draft = Model(presets.llama("tiny", vocab_size=text_model.config.vocab_size, n_layers=1, init_std=0.2)).eval()
    options = dict(max_new_tokens=20, ignore_eos=True)
    plain = list(stream(text_model, "Once upon", **options))
    speculated = list(stream(text_model, "Once upon", draft_model=draft, speculate_k=3, **options))
    assert [(p.text, p.token_ids, p.finish_reason) for p in speculated] == \
        [(p.text, p.token_ids, p.finish_reason) for p in plain]
    stop = "".join(p.text for p in plain)[4:6]
    pieces = list(stream(text_model, "Once upon", draft_model=draft, stop=[stop], **options))
    assert "".join(p.text for p in pieces) == generate(text_model, "Once upon", stop=[stop], **options).text[0]
    assert pieces[-1].finish_reason == "stop"
    with pytest.raises(ConfigError, match="paged"):
        list(stream(text_model, "Once upon", draft_model=draft, cache="paged", **options))


def test_the_context_length_ends_generation_with_length():
    model = Model(presets.gpt2("tiny", vocab_size=VOCAB, max_seq_len=12)).eval()
    result = generate(model, PROMPTS[1:2], max_new_tokens=20, ignore_eos=True)
    assert len(result.tokens[0]) == 12 - 7 and result.finish_reasons == ["length"]


@pytest.mark.parametrize(("call", "words"), [
    (lambda m: generate(m, [[]]), ["Prompt 0", "empty"]),
    (lambda m: generate(m, []), ["at least one prompt"]),
    (lambda m: generate(m, [list(range(1, 40))]), ["39 tokens", "max_seq_len"]),
    (lambda m: generate(m, [[1, 2]], temperature=-1.0), ["temperature"]),
    (lambda m: generate(m, [[1, 2]], do_sample=True, top_p=0.0), ["top_p"]),
    (lambda m: generate(m, [[1, 2]], do_sample=True, top_p=1.5), ["top_p"]),
    (lambda m: generate(m, [[1, 2]], num_beams=2, do_sample=True), ["num_beams"]),
    (lambda m: generate(m, "text without a tokenizer"), ["tokenizer"]),
    (lambda m: generate(m, [[1, 500]]), ["token id 500"]),
    (lambda m: generate(Model(presets.bert("tiny", vocab_size=VOCAB)), [[1, 2]]), ["encoder-only"]),
])
def test_bad_requests_are_one_sentence(call, words):
    model = Model(presets.gpt2("tiny", vocab_size=VOCAB, max_seq_len=32)).eval()
    with pytest.raises(ConfigError) as error:
        call(model)
    message = str(error.value)
    assert message.endswith(".") and "\n" not in message and all(word in message for word in words), message


def test_generation_config_from_the_checkpoint_is_the_default(tmp_path):
    model = tiny_model("gpt2")
    model.generation_config = GenerationConfig(max_new_tokens=3)
    assert len(generate(model, PROMPTS[:1], ignore_eos=True).tokens[0]) == 3


def glm_reference(model, part_a, mask_position, tokens, steps):
    """Greedy blank infilling by full recomputation, positions built by the GLM objective's own example builder."""
    from llmlab.objectives.glm import blank_infilling_example

    span = []
    text = torch.tensor(part_a[:mask_position] + part_a[mask_position + 1:])
    for _ in range(steps):
        filled = torch.cat([text[:mask_position], torch.tensor(span, dtype=torch.long), text[mask_position:]])
        example = blank_infilling_example(filled, [(mask_position, len(span))] if span else [], [0] if span else [],
                                          part_a[mask_position], tokens.sop, tokens.eop)
        ids, positions = example["input_ids"][:-1], example["position_ids"][:, :-1]
        if not span:  # no span yet: part A, then [sop] at the mask token's position
            ids = torch.tensor(part_a + [tokens.sop])
            positions = torch.tensor([list(range(len(part_a))) + [mask_position], [0] * len(part_a) + [1]])
        with torch.no_grad():
            logits = model(ids[None], position_ids=positions[None],
                           prefix_lengths=torch.tensor([len(part_a)])).logits[0, -1]
        span.append(int(logits.argmax()))
        if span[-1] == tokens.eop:
            break
    return span


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_glm_fills_the_blank_with_2d_positions(cache):
    from llmlab.infer.generate import BlankTokens

    torch.manual_seed(0)
    model = Model(presets.glm("tiny", vocab_size=VOCAB, init_std=0.2)).eval()
    tokens = BlankTokens(masks=(90, 91, 92), sop=93, eop=94)
    prompts = [[5, 9, 90, 14, 15], [3, 8, 20, 21, 92], [11, 91, 6]]
    result = generate(model, prompts, max_new_tokens=6, blank_tokens=tokens, cache=cache)
    for prompt, got in zip(prompts, result.tokens):
        position = next(i for i, t in enumerate(prompt) if t in tokens.masks)
        assert got == glm_reference(model, prompt, position, tokens, 6)
    with pytest.raises(ConfigError, match="exactly one"):
        generate(model, [[5, 9, 14]], blank_tokens=tokens)
