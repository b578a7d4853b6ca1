"""`llmlab generate MODEL PROMPT [options]`: continue a prompt with a checkpoint and print the new text.

Decoding follows transformers: the checkpoint's generation_config.json gives the defaults (greedy when it has none
or does not ask to sample), and --temperature T chooses: T > 0 samples at that temperature, T = 0 is greedy."""

from __future__ import annotations

import argparse
import sys

DEFAULT_MAX_NEW_TOKENS = 256
SAMPLING_ONLY = ("top_p", "top_k", "min_p")
NO_PREPACK_HELP = ("on the CPU, keep the linear weights as they are rather than packing a copy of them for a faster "
                   "kernel (llmlab's own, else oneDNN's; it decodes faster and takes twice the memory for them)")


def add_generation_arguments(parser: argparse.ArgumentParser, samples: bool = True) -> None:
    """The decoding options that generate and chat share (with --n and --stop when samples)."""
    parser.add_argument("model", metavar="MODEL", help="an llmlab checkpoint or Hugging Face model directory")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, metavar="N",
                        help=f"most new tokens (default: {DEFAULT_MAX_NEW_TOKENS}, fewer where the context ends)")
    parser.add_argument("--temperature", type=float, metavar="T",
                        help="0: greedy; above 0: sample at that temperature (default: the checkpoint's "
                             "generation_config.json, else greedy)")
    parser.add_argument("--top-p", type=float, metavar="P", help="sample from the smallest set of tokens of mass P")
    parser.add_argument("--top-k", type=int, metavar="K", help="sample from the K most likely tokens (0: all)")
    parser.add_argument("--min-p", type=float, metavar="P",
                        help="drop tokens less likely than P times the most likely one")
    parser.add_argument("--repetition-penalty", type=float, metavar="R",
                        help="divide the scores of tokens already seen by R (1: none)")
    parser.add_argument("--seed", type=int, metavar="S", help="seed of the sampling, for reproducible samples")
    if samples:
        parser.add_argument("--stop", action="append", metavar="STR",
                            help="end the text before this string (repeatable)")
        parser.add_argument("--n", type=int, metavar="N", help="how many samples to print (needs sampling)")
    parser.add_argument("--no-chat-template", action="store_true",
                        help="give the text as it is, not wrapped in the checkpoint's chat template")
    parser.add_argument("--no-prepack", action="store_true", help=NO_PREPACK_HELP)


def load_for_generation(arguments: argparse.Namespace):
    """MODEL, its tokenizer and the GenerationConfig the options give; both are checked before the linear weights
    are prepacked for the CPU (unless --no-prepack), which may first build llmlab's native kernel."""
    import llmlab
    from llmlab.infer.chat import require_tokenizer
    from llmlab.infer.generate import resolve_config
    from llmlab.infer.prepack import prepack

    model = llmlab.load(arguments.model)
    tokenizer = require_tokenizer(model, arguments.model)
    config = resolve_config(model, None, generation_changes(arguments))  # a bad option value: ConfigError
    if not arguments.no_prepack:
        prepack(model)
    return model, tokenizer, config


def generation_changes(arguments: argparse.Namespace) -> dict:
    """The GenerationConfig fields the options set; the others keep the checkpoint's defaults."""
    changes = {"max_new_tokens": arguments.max_new_tokens}
    for name in ("top_p", "top_k", "min_p", "repetition_penalty", "seed", "n"):
        if getattr(arguments, name, None) is not None:
            changes[name] = getattr(arguments, name)
    if getattr(arguments, "stop", None):
        changes["stop"] = tuple(arguments.stop)
    if arguments.temperature is not None:  # as llama.cpp and OpenAI: temperature 0 is greedy
        changes.update(temperature=arguments.temperature, do_sample=arguments.temperature > 0)
    return changes


def note_unused_sampling_options(arguments: argparse.Namespace, config) -> None:
    """Say on stderr (as transformers warns) when sampling options were given but decoding is greedy."""
    given = [f"--{name.replace('_', '-')}" for name in SAMPLING_ONLY if getattr(arguments, name) is not None]
    if given and not config.do_sample:
        verb = "applies" if len(given) == 1 else "apply"
        print(f"note: {', '.join(given)} {verb} only when sampling; add --temperature T with T > 0.", file=sys.stderr)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the generate subcommand."""
    parser = subparsers.add_parser("generate", help="continue a prompt with a model and print the new text",
                                   description=__doc__.split("\n", 1)[1].strip())
    add_generation_arguments(parser)
    parser.add_argument("prompt", metavar="PROMPT", help="the text to continue (a user message with a chat template)")
    parser.add_argument("--stream", action="store_true", help="print the text as it is generated")
    parser.set_defaults(handler=run_generate)


def run_generate(arguments: argparse.Namespace) -> None:
    """Load MODEL, generate for PROMPT and print each sample (streamed with --stream, under a header when --n > 1)."""
    from llmlab.infer.chat import chat_prompt_ids, read_chat_template
    from llmlab.infer.generate import generate, stream

    model, tokenizer, config = load_for_generation(arguments)
    note_unused_sampling_options(arguments, config)
    template = None if arguments.no_chat_template else read_chat_template(arguments.model)
    prompt = (arguments.prompt if template is None
              else chat_prompt_ids(tokenizer, [{"role": "user", "content": arguments.prompt}], template))
    texts = None if arguments.stream else generate(model, prompt, config).text
    for sample in range(config.n):
        if config.n > 1:
            print(f"--- sample {sample + 1} of {config.n} ---")
        if texts is not None:
            print(texts[sample])
            continue
        seed = None if config.seed is None else config.seed + sample  # generate's seeds for n samples
        for piece in stream(model, prompt, config.replace(n=1, seed=seed)):
            print(piece.text, end="", flush=True)
        print()
