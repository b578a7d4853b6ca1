"""`llmlab generate` prints what llmlab.infer.generate gives for the same options, and `llmlab chat` keeps the
conversation, driven through stdin and (where tmux is installed) through a terminal as a person would."""

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest
import torch

import llmlab
import llmlab.infer.chat as chat
from tests.cli_run import run_cli
from llmlab.data.tokenizer import END_OF_TEXT, PAD, train_tokenizer
from llmlab.infer.generate import Piece, generate
from llmlab.model import Model, presets

TEXTS = ["The cat sat on the mat.", "User: hello there\nAssistant: hi, how can I help?", "The dog ran in the park.",
         "<|im_start|>user\nhi<|im_end|>"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' "
          "+ '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def word_tokenizer():
    """A word-level tokenizer of a few words: a random model's text is printable (no control bytes for a terminal)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = [END_OF_TEXT, PAD, "[UNK]", *sorted(set(" ".join(TEXTS).replace("\n", " ").split()))]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens([END_OF_TEXT, PAD])
    return tokenizer


def save_tiny_model(directory, words=False, **overrides):
    """A tiny random LLaMA with a byte-level BPE tokenizer (or a word-level one), saved with llmlab.save."""
    tokenizer = word_tokenizer() if words else train_tokenizer(TEXTS * 20, 300, special_tokens=(
        END_OF_TEXT, PAD, "<|im_start|>", "<|im_end|>"))
    eot = tokenizer.token_to_id(END_OF_TEXT)
    fields = {"eos_token_id": eot, "bos_token_id": eot, "pad_token_id": tokenizer.token_to_id(PAD), **overrides}
    config = presets.llama("tiny", vocab_size=tokenizer.get_vocab_size(), init_std=0.2, **fields)
    torch.manual_seed(0)
    model = Model(config)
    model.tokenizer = tokenizer
    llmlab.save(model, directory)
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("generate") / "model")


@pytest.fixture(scope="module")
def model(checkpoint):
    return llmlab.load(checkpoint)




OPTIONS = [
    ([], {}),
    (["--temperature", "0"], {}),
    (["--temperature", "0.9", "--seed", "3"], {"do_sample": True, "temperature": 0.9, "seed": 3}),
    (["--temperature", "1.3", "--top-k", "20", "--top-p", "0.9", "--min-p", "0.05", "--seed", "7",
      "--repetition-penalty", "1.2"],
     {"do_sample": True, "temperature": 1.3, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "seed": 7,
      "repetition_penalty": 1.2}),
    (["--stop", "a", "--stop", "e"], {"stop": ("a", "e")}),
]


@pytest.mark.parametrize("options, fields", OPTIONS)
@pytest.mark.parametrize("streamed", [False, True])
def test_generate_prints_what_the_library_generates(checkpoint, model, capsys, options, fields, streamed):
    expected = generate(model, "The cat", max_new_tokens=24, **fields).text[0]
    code, out, _ = run_cli(["generate", str(checkpoint), "The cat", "--max-new-tokens", "24", *options,
                        *(["--stream"] if streamed else [])], capsys)
    assert code == 0 and out == expected + "\n"


@pytest.mark.parametrize("streamed", [False, True])
def test_several_samples_are_printed_under_headers(checkpoint, model, capsys, streamed):
    expected = generate(model, "The cat", max_new_tokens=12, do_sample=True, temperature=1.0, seed=5, n=3).text
    code, out, _ = run_cli(["generate", str(checkpoint), "The cat", "--max-new-tokens", "12", "--temperature", "1",
                        "--seed", "5", "--n", "3", *(["--stream"] if streamed else [])], capsys)
    assert code == 0
    assert out == "".join(f"--- sample {k + 1} of 3 ---\n{text}\n" for k, text in enumerate(expected))


def test_generate_wraps_the_prompt_in_the_chat_template(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    directory = save_tiny_model(tmp_path / "model")
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "eos_token": "<|im_end|>"}))
    model = llmlab.load(directory)
    reference = transformers.PreTrainedTokenizerFast(tokenizer_object=model.tokenizer, chat_template=CHATML)
    ids = reference.apply_chat_template([{"role": "user", "content": "The cat"}], add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    code, out, _ = run_cli(["generate", str(directory), "The cat", "--max-new-tokens", "10"], capsys)
    assert code == 0 and out == generate(model, ids, max_new_tokens=10).text[0] + "\n"
    code, out, _ = run_cli(["generate", str(directory), "The cat", "--max-new-tokens", "10", "--no-chat-template"],
                           capsys)
    assert code == 0 and out == generate(model, "The cat", max_new_tokens=10).text[0] + "\n"


@pytest.mark.parametrize("options, named", [
    (["--top-p", "1.5"], "top_p"),
    (["--temperature", "-1"], "temperature"),
    (["--max-new-tokens", "0"], "max_new_tokens"),
    (["--n", "2"], "n (2)"),
    (["--top-k", "-3", "--temperature", "1"], "top_k"),
    (["--repetition-penalty", "0"], "repetition_penalty"),
])
def test_bad_option_values_exit_2_with_one_line(checkpoint, capsys, options, named):
    code, out, err = run_cli(["generate", str(checkpoint), "The cat", *options], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and named in err


def test_a_model_without_tokenizer_is_one_sentence(tmp_path, capsys):
    llmlab.save(Model(presets.llama("tiny")), tmp_path / "bare")
    for command in ("generate", "chat"):
        code, out, err = run_cli([command, str(tmp_path / "bare"), *(["hi"] if command == "generate" else [])], capsys)
        assert code == 2 and out == ""
        assert err == f"error: {tmp_path / 'bare'} has no tokenizer.json, which is needed to turn text into tokens " \
                      f"and back.\n"


def test_sampling_options_without_sampling_get_a_note(checkpoint, capsys):
    code, _, err = run_cli(["generate", str(checkpoint), "The cat", "--max-new-tokens", "2", "--top-p", "0.5"], capsys)
    assert code == 0 and err == "note: --top-p applies only when sampling; add --temperature T with T > 0.\n"


def chat_through_stdin(arguments, lines, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    return run_cli(["chat", *arguments], capsys)


def test_chat_keeps_the_conversation(checkpoint, monkeypatch, capsys):
    prompts = []

    def fake_stream(model, ids, config, tokenizer):  # records what the model is given
        prompts.append(tokenizer.decode(ids, skip_special_tokens=False))
        yield from (Piece(text) for text in (" Hi", f" number {len(prompts)}."))

    monkeypatch.setattr(chat, "stream", fake_stream)
    code, out, err = chat_through_stdin([str(checkpoint)], ["hello there", "", "The cat", "/reset", "The dog", "/exit",
                                                            "never read"], monkeypatch, capsys)
    assert code == 0 and err == ""
    assert prompts == ["User: hello there\nAssistant:",
                       "User: hello there\nAssistant: Hi number 1.\nUser: The cat\nAssistant:",
                       "User: The dog\nAssistant:"]
    lines = out.splitlines()
    assert lines[0].startswith("Chatting with") and "/reset" in lines[0] and "/exit" in lines[0]
    assert lines[1:] == ["> Hi number 1.", "> > Hi number 2.", "> (conversation cleared)", "> Hi number 3.", "> "]


def test_chat_with_the_model_through_stdin_until_end_of_file(checkpoint):
    lines = "hello there\nThe cat\n/nonsense\n"
    result = subprocess.run([sys.executable, "-m", "llmlab", "chat", str(checkpoint), "--max-new-tokens", "8"],
                            input=lines, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.count("> ") == 4 and "unknown command /nonsense" in result.stdout
    assert result.stdout.endswith("> \n")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_chat_in_a_terminal(tmp_path):
    """As a person: a message and its reply, Ctrl-C in the middle of a long reply, then Ctrl-D leaves."""
    directory = save_tiny_model(tmp_path / "model", words=True, max_seq_len=4096, eos_token_id=None)  # long replies
    session = "chat"
    socket = f"llmlab-chat-test-{os.getpid()}-{time.monotonic_ns()}"  # a tmux server of its own
    python_path = shlex.quote(os.pathsep.join(sys.path))
    command = (f"PYTHONPATH={python_path} {shlex.quote(sys.executable)} -m llmlab chat {shlex.quote(str(directory))} "
               f"--max-new-tokens 4000 --temperature 1 --seed 0; echo EXIT=$?; sleep 60")

    def tmux(*arguments):
        return subprocess.run(["tmux", "-L", socket, *arguments], capture_output=True, text=True, check=True).stdout

    def wait_for(predicate, timeout=120):
        deadline, screen = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            screen = tmux("capture-pane", "-p", "-t", session, "-S", "-200")
            if predicate(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"the terminal never showed what was expected:\n{screen}")

    tmux("new-session", "-d", "-s", session, "-x", "200", "-y", "50", command)
    try:
        wait_for(lambda screen: "Chatting with" in screen and screen.rstrip().endswith(">"))
        tmux("send-keys", "-t", session, "hello there", "Enter")
        wait_for(lambda screen: "> hello there" in screen and len(screen.split("> hello there")[1].strip()) > 20)
        tmux("send-keys", "-t", session, "C-c")
        screen = wait_for(lambda screen: "[stopped]" in screen and screen.rstrip().endswith(">"))
        assert "Traceback" not in screen and "EXIT=" not in screen  # still chatting
        tmux("send-keys", "-t", session, "C-d")
        screen = wait_for(lambda screen: "EXIT=" in screen)
        assert "EXIT=0" in screen and "Traceback" not in screen
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
