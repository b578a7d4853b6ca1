"""Templates and loss masks on hand-worked examples: the rendered text is the literal each format publishes, the
labels cover exactly the reply and its end-of-turn token (also when pad = EOS), never the prompt."""

import pytest
import transformers

import llmlab
from llmlab.adapt.packing import pad
from llmlab.adapt.sft import conversation_example
from llmlab.adapt.templates import Encoder, load_template
from llmlab.errors import ConfigError
from llmlab.objectives.losses import IGNORE_INDEX

# Stanford Alpaca's train.py PROMPT_DICT, written out again as the reference
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n### Instruction:\nSort these.\n\n"
                "### Input:\n3 1 2\n\n### Response:")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                   "request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:")
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"}]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return llmlab.load(tiny_checkpoint)


def encoder(model, name, directory=None):
    template = load_template(name, model.tokenizer, model.config.eos_token_id, directory)
    return Encoder(model.tokenizer, template, model.config.eos_token_id, model.config.bos_token_id)


def ids(model, text):
    return model.tokenizer.encode(text, add_special_tokens=False).ids


def labelled(labels):
    return [label for label in labels if label != IGNORE_INDEX]


@pytest.mark.parametrize("prompt, text", [({"instruction": "Sort these.", "input": "3 1 2"}, ALPACA_INPUT),
                                          ({"instruction": "Add 2 and 3.", "input": ""}, ALPACA_NO_INPUT),
                                          ("Add 2 and 3.", ALPACA_NO_INPUT)])
def test_alpaca_prompts_are_stanford_alpacas_and_only_the_reply_and_eos_are_labelled(model, prompt, text):
    eos = model.config.eos_token_id
    input_ids, labels = encoder(model, "alpaca").encode(prompt, "1 2 3")
    prompt_ids = [model.config.bos_token_id, *ids(model, text)]
    reply = ids(model, "1 2 3") + [eos]
    assert input_ids == prompt_ids + reply
    assert labels == [IGNORE_INDEX] * len(prompt_ids) + reply


def test_chatml_labels_the_last_reply_and_im_end(model):
    input_ids, labels = encoder(model, "chatml").encode(CONVERSATION, "4")
    im_end = model.tokenizer.token_to_id("<|im_end|>")
    expected_prompt = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                       "<|im_start|>assistant\n")
    # the earlier reply is its own piece: the prompt up to it, "hello", <|im_end|>, then the rest
    prompt_ids = [model.config.bos_token_id, *ids(model, expected_prompt), *ids(model, "hello"), im_end,
                  *ids(model, "\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")]
    assert input_ids == prompt_ids + ids(model, "4") + [im_end]
    assert labelled(labels) == ids(model, "4") + [im_end]


def test_sft_labels_every_assistant_turn_of_a_conversation(model):
    enc = encoder(model, "chatml")
    input_ids, labels = conversation_example(enc.encode, CONVERSATION, "4")
    im_end = model.tokenizer.token_to_id("<|im_end|>")
    assert labelled(labels) == ids(model, "hello") + [im_end] + ids(model, "4") + [im_end]
    assert input_ids == enc.encode(CONVERSATION, "4")[0]


def test_llama2_puts_the_system_prompt_in_the_first_instruction(model):
    eos = model.tokenizer.id_to_token(model.config.eos_token_id)
    enc = encoder(model, "llama2")
    expected = (f"{eos}[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhi [/INST] hello{eos}{eos}[INST] 2+2? [/INST] ")
    assert enc.template.render(CONVERSATION) == expected
    input_ids, labels = enc.encode(CONVERSATION, "4")
    assert labelled(labels) == ids(model, "4") + [model.config.eos_token_id]
    assert model.tokenizer.decode(input_ids, skip_special_tokens=False) == expected + "4" + eos


def test_the_checkpoint_template_renders_as_transformers_apply_chat_template(model, tiny_checkpoint):
    reference = transformers.PreTrainedTokenizerFast.from_pretrained(tiny_checkpoint)
    expected = reference.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    enc = encoder(model, "checkpoint", tiny_checkpoint)
    assert enc.template.render(CONVERSATION) == expected
    assert enc.end_of_turn_id == model.tokenizer.token_to_id("<|im_end|>")


def test_pad_equal_to_eos_keeps_the_eos_label(tiny_checkpoint_pad_eos):
    model = llmlab.load(tiny_checkpoint_pad_eos)
    eos = model.config.eos_token_id
    assert model.config.pad_token_id == eos
    enc = encoder(model, "alpaca")
    short, long = enc.encode("Add 2 and 3.", "5"), enc.encode("Sort these numbers.", "1 2 3 4")
    batch = pad([short, long], model.config.pad_token_id)
    row = batch["labels"][0].tolist()
    assert row[len(short[0]) - 1] == eos  # the reply's EOS is labelled though it is the pad id
    assert row[len(short[0]):] == [IGNORE_INDEX] * (len(long[0]) - len(short[0]))  # the padding is not
    assert batch["input_ids"][0, len(short[0]):].eq(eos).all()


def test_a_jinja_file_missing_a_field_names_it(model, tmp_path):
    template = tmp_path / "house.jinja"
    template.write_text("Q: {{ question }}\nA:")
    with pytest.raises(ConfigError, match=r"house\.jinja needs the field 'question'"):
        encoder(model, str(template)).encode("hi", "there")
    template.write_text("{{ instruction }} / {{ input }} =>")
    input_ids, _ = encoder(model, str(template)).encode({"instruction": "Add", "input": "2 3"}, "5")
    assert model.tokenizer.decode(input_ids, skip_special_tokens=False).startswith("<|endoftext|>Add / 2 3 =>5")


def test_alpaca_refuses_chat_messages_naming_instruction(model):
    with pytest.raises(ConfigError, match="alpaca template needs the field 'instruction'"):
        encoder(model, "alpaca").encode(CONVERSATION, "4")


def test_checkpoint_template_without_one_is_refused(model, tmp_path):
    with pytest.raises(ConfigError, match="has no chat template"):
        encoder(model, "checkpoint", tmp_path)
