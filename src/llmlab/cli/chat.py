"""`llmlab chat MODEL [options]`: talk with a model in the terminal, each reply streamed as it is generated.

The conversation goes through the checkpoint's chat template (tokenizer_config.json or chat_template.jinja), else a
plain "User: …\\nAssistant:" format; the oldest turns are dropped when it outgrows the model's context."""

from __future__ import annotations

import argparse
import sys

from llmlab.cli.generate import add_generation_arguments, load_for_generation, note_unused_sampling_options
from llmlab.errors import LlmlabError

COMMANDS = ("Commands: /reset clears the conversation, /exit leaves; Ctrl-C stops a reply, "
            "Ctrl-D or Ctrl-C at the prompt leaves.")
PROMPT = "> "


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the chat subcommand."""
    parser = subparsers.add_parser("chat", help="talk with a model in the terminal",
                                   description=__doc__.split("\n", 1)[1].strip())
    add_generation_arguments(parser, samples=False)
    parser.set_defaults(handler=run_chat)


def print_reply(pieces) -> None:
    """Print a reply piece by piece (without its leading blanks); Ctrl-C ends it, keeping what was said so far."""
    started = False
    try:
        for text in pieces:
            text = text if started else text.lstrip()
            started = started or bool(text)
            print(text, end="", flush=True)
    except KeyboardInterrupt:
        pieces.close()  # the partial reply joins the conversation
        print(" [stopped]", end="")
    print(flush=True)


def run_chat(arguments: argparse.Namespace) -> None:
    """Load MODEL and answer each line read from the terminal until /exit, Ctrl-D or Ctrl-C at the prompt."""
    from llmlab.infer.chat import ChatSession, read_chat_template

    model, tokenizer, config = load_for_generation(arguments)
    template = None if arguments.no_chat_template else read_chat_template(arguments.model)
    session = ChatSession(model, template, config, tokenizer=tokenizer)
    note_unused_sampling_options(arguments, session.config)
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  line editing and history for input()
        except ImportError:
            pass
    style = "its chat template" if template is not None else "the plain User:/Assistant: format"
    print(f"Chatting with {arguments.model} in {style}. {COMMANDS}", flush=True)
    noted = False
    while True:
        try:
            text = input(PROMPT).strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if text == "/exit":
            return
        if text == "/reset":
            session.reset()
            print("(conversation cleared)")
        elif text.startswith("/"):
            print(f"unknown command {text.split()[0]}; {COMMANDS}")
        elif text:
            try:
                print_reply(session.reply(text))
            except LlmlabError as error:  # a message too long for the context: say so and keep talking
                print(f"error: {error}", file=sys.stderr)
            if session.dropped_turns and not noted:
                print(f"note: the conversation outgrew the model's context of {model.config.max_seq_len} tokens, "
                      f"so its oldest turns are dropped.", file=sys.stderr)
                noted = True
