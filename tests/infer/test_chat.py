"""llmlab.infer.chat: chat templates rendered as transformers' apply_chat_template renders them, the plain format,
and a session that keeps the conversation (also a reply cut short) within the model's context."""

import json

import pytest
import torch

import llmlab.infer.chat as chat
from llmlab.data.tokenizer import END_OF_TEXT, PAD, train_tokenizer
from llmlab.errors import ConfigError
from llmlab.infer.chat import ChatSession, chat_prompt_ids, format_chat, read_chat_template
from llmlab.infer.generate import Piece
from llmlab.model import Model, presets

transformers = pytest.importorskip("transformers")

# The shapes of templates on the Hub: Llama 3 (bos_token, trim), ChatML with a default system message (Qwen),
# Mistral's alternation check (raise_exception, eos_token), and one leaning on trim_blocks / lstrip_blocks, tojson,
# namespace, loop controls and transformers' {% generation %} tag.
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}")
BLOCKS = """{%- set ns = namespace(users=0) %}
{% for message in messages %}
    {% if message.role == "system" %}
<<SYS>>{{ message.content | tojson }}<</SYS>>
    {% elif message.role == "assistant" %}
  {% generation %}{{ message.content }}{% endgeneration %}{{ eos_token }}
    {% else %}
        {% set ns.users = ns.users + 1 %}
[{{ ns.users }}] {{ message.content }}
    {% endif %}
    {% if loop.index > 6 %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}
assistant:
{% endif %}"""
TEMPLATES = {"llama3": LLAMA3, "chatml": CHATML, "mistral": MISTRAL, "blocks": BLOCKS}
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "  What is 2+2? <b>&</b> \"quoted\"  "}, {"role": "assistant", "content": "4."},
     {"role": "user", "content": "And in Ελληνικά? ünïcödé 😀\nnew line"}],
]
SYSTEM = [{"role": "system", "content": "Be brief; use <tags> & \"quotes\"."}, *CONVERSATIONS[1]]
TEXTS = ["The cat sat on the mat.", "User: hello there\nAssistant: hi, how can I help?", "<s>[INST] hi [/INST]</s>",
         "<|im_start|>system\nYou are a helpful assistant.<|im_end|>"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS * 20, 300, special_tokens=(END_OF_TEXT, PAD, "<s>", "</s>", "<|im_start|>",
                                                            "<|im_end|>", "<|eot_id|>"))


def hf_tokenizer(tokenizer, template):
    """transformers' fast tokenizer over the same tokenizer.json, with the template and the special tokens."""
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, chat_template=template, **SPECIAL)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("messages", [*CONVERSATIONS, SYSTEM], ids=["one", "three", "system"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_format_chat_equals_transformers_apply_chat_template(tokenizer, name, messages, add_generation_prompt):
    reference = hf_tokenizer(tokenizer, TEMPLATES[name])
    if name == "mistral" and messages[0]["role"] == "system":
        with pytest.raises(Exception, match="must alternate"):
            reference.apply_chat_template(messages, tokenize=False)
        with pytest.raises(ConfigError, match="must alternate"):
            format_chat(messages, TEMPLATES[name], SPECIAL)
        return
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert format_chat(messages, TEMPLATES[name], SPECIAL, add_generation_prompt) == expected


@pytest.mark.parametrize("name", ["llama3", "chatml", "mistral"])
def test_a_saved_template_is_read_back_and_tokenized_as_transformers_does(tokenizer, name, tmp_path):
    reference = hf_tokenizer(tokenizer, TEMPLATES[name])
    reference.save_pretrained(tmp_path)  # chat_template.jinja beside tokenizer_config.json
    template = read_chat_template(tmp_path)
    assert template.template == TEMPLATES[name]
    assert template.special_tokens["bos_token"] == "<s>" and template.special_tokens["eos_token"] == "</s>"
    expected = reference.apply_chat_template(CONVERSATIONS[1], add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert chat_prompt_ids(tokenizer, CONVERSATIONS[1], template) == list(expected)


def test_the_template_inside_tokenizer_config_and_its_named_form(tmp_path):
    config = {"bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>", "chat_template": CHATML}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert read_chat_template(tmp_path) == chat.ChatTemplate(CHATML, SPECIAL)
    config["chat_template"] = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": LLAMA3}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert read_chat_template(tmp_path).template == LLAMA3
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert read_chat_template(tmp_path) is None
    assert read_chat_template(tmp_path / "missing") is None


def test_a_template_that_does_not_parse_is_a_config_error():
    with pytest.raises(ConfigError, match="does not parse"):
        format_chat(CONVERSATIONS[0], "{% for message in messages %}{{ message.content }}")


def test_the_sandbox_refuses_what_transformers_refuses():
    with pytest.raises(Exception):
        format_chat(CONVERSATIONS[0], "{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}")


def test_the_plain_format():
    assert chat.plain_prompt(CONVERSATIONS[1][:2] + [{"role": "user", "content": "Next"}]) == \
        "User:   What is 2+2? <b>&</b> \"quoted\"  \nAssistant: 4.\nUser: Next\nAssistant:"


def tiny_chat_model(tokenizer, **overrides):
    torch.manual_seed(0)
    eot = tokenizer.token_to_id(END_OF_TEXT)
    config = presets.llama("tiny", vocab_size=tokenizer.get_vocab_size(), eos_token_id=eot, bos_token_id=eot,
                           pad_token_id=tokenizer.token_to_id(PAD), init_std=0.2, **overrides)
    model = Model(config).eval()
    model.tokenizer = tokenizer
    return model


def recording_stream(monkeypatch):
    """Replace the session's stream by one that records each prompt (as text) and replies "reply <k>"."""
    prompts = []

    def fake_stream(model, ids, config, tokenizer):
        prompts.append(tokenizer.decode(ids, skip_special_tokens=False))
        yield from (Piece(text) for text in (" reply", f" {len(prompts)}"))

    monkeypatch.setattr(chat, "stream", fake_stream)
    return prompts


def test_the_session_keeps_the_conversation(tokenizer, monkeypatch):
    prompts = recording_stream(monkeypatch)
    session = ChatSession(tiny_chat_model(tokenizer), max_new_tokens=8)
    assert session.config.stop == ("\nUser:",)
    assert "".join(session.reply("hello there")) == " reply 1"
    assert "".join(session.reply("The cat")) == " reply 2"
    assert prompts == ["User: hello there\nAssistant:",
                       "User: hello there\nAssistant: reply 1\nUser: The cat\nAssistant:"]
    session.reset()
    list(session.reply("hi"))
    assert prompts[-1] == "User: hi\nAssistant:"


def test_the_session_renders_the_chat_template(tokenizer, monkeypatch):
    prompts = recording_stream(monkeypatch)
    template = chat.ChatTemplate(CHATML, SPECIAL)
    session = ChatSession(tiny_chat_model(tokenizer), template, max_new_tokens=8)
    assert session.config.stop == ()
    list(session.reply("hello there"))
    list(session.reply("The cat"))
    expected = hf_tokenizer(tokenizer, CHATML).apply_chat_template(
        [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "reply 1"},
         {"role": "user", "content": "The cat"}], tokenize=False, add_generation_prompt=True)
    assert prompts[-1] == expected


def test_a_reply_cut_short_stays_in_the_conversation(tokenizer):
    model = tiny_chat_model(tokenizer)
    session = ChatSession(model, max_new_tokens=40, ignore_eos=True)
    reply = session.reply("hello there")
    said = [next(reply) for _ in range(5)]
    reply.close()  # what the chat command does on Ctrl-C
    assert session.messages == [{"role": "user", "content": "hello there"},
                                {"role": "assistant", "content": "".join(said).strip()}]
    full = "".join(ChatSession(model, max_new_tokens=40, ignore_eos=True).reply("hello there"))
    assert full.startswith("".join(said))


def test_the_oldest_turns_are_dropped_when_the_context_is_full(tokenizer, monkeypatch):
    prompts = recording_stream(monkeypatch)
    model = tiny_chat_model(tokenizer, max_seq_len=64)
    session = ChatSession(model, max_new_tokens=16)  # prompts may take 64 - 16 tokens
    messages = [f"The cat sat on the mat number {k}." for k in range(6)]
    for message in messages:
        list(session.reply(message))
        assert len(tokenizer.encode(prompts[-1]).ids) <= 48
        assert prompts[-1].endswith(f"User: {message}\nAssistant:")
    assert session.dropped_turns > 0
    assert messages[0] not in prompts[-1] and session.messages[-2]["content"] == messages[-1]
    kept = list(session.messages)
    with pytest.raises(ConfigError, match="context holds 64"):
        list(session.reply("The cat sat on the mat. " * 20))
    assert session.messages == kept


def test_a_session_needs_a_tokenizer_and_one_sequence(tokenizer):
    model = tiny_chat_model(tokenizer)
    model.tokenizer = None
    with pytest.raises(ConfigError, match="tokenizer"):
        ChatSession(model)
    with pytest.raises(ConfigError, match="n=1"):
        ChatSession(tiny_chat_model(tokenizer), n=2, do_sample=True)
