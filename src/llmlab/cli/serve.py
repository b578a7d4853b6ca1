"""`llmlab serve MODEL [options]`: serve a checkpoint with OpenAI's API (completions, chat completions, models,
tokenize, metrics) and a chat page at /, until SIGTERM or Ctrl-C, which let running requests finish first.

The API key (--api-key, else $LLMLAB_API_KEY) is required under /v1 as 'Authorization: Bearer KEY'."""

from __future__ import annotations

import argparse

from llmlab.cli.generate import NO_PREPACK_HELP

DEFAULT_PORT = 8000
SERVE_MODULES = ("fastapi", "uvicorn", "prometheus_client")  # the serve extra


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the serve subcommand."""
    parser = subparsers.add_parser("serve", help="serve a model with an OpenAI-compatible API and a chat page",
                                   description=__doc__.split("\n", 1)[1].strip())
    parser.add_argument("model", metavar="MODEL", help="an llmlab checkpoint or Hugging Face model directory")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"the port (default: {DEFAULT_PORT})")
    parser.add_argument("--api-key", metavar="KEY", help="the key clients must send (default: $LLMLAB_API_KEY)")
    parser.add_argument("--served-model-name", metavar="NAME",
                        help="the model's name in the API (default: MODEL as given)")
    parser.add_argument("--max-num-seqs", type=int, default=64, metavar="N",
                        help="most sequences in the running batch (default: 64)")
    parser.add_argument("--max-model-len", type=int, metavar="T",
                        help="most tokens of a prompt plus its reply (default: the model's context)")
    parser.add_argument("--kv-cache-tokens", type=int, metavar="N",
                        help="tokens the paged KV cache holds (default: the engine's choice)")
    parser.add_argument("--max-waiting", type=int, metavar="N",
                        help="most queued requests before new ones are refused with 503 (default: no limit)")
    parser.add_argument("--no-prepack", action="store_true", help=NO_PREPACK_HELP)
    parser.set_defaults(handler=run_serve)


def run_serve(arguments: argparse.Namespace) -> None:
    """Serve MODEL until stopped."""
    import importlib.util

    from llmlab.errors import ConfigError

    missing = [name for name in SERVE_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"llmlab serve needs the serve extra ({', '.join(missing)} missing); "
                          f"install it with `pip install 'llmlab[serve]'`.")
    from llmlab.infer.serve import serve

    serve(arguments.model, host=arguments.host, port=arguments.port, api_key=arguments.api_key,
          served_model_name=arguments.served_model_name, max_num_seqs=arguments.max_num_seqs,
          max_model_len=arguments.max_model_len, kv_cache_tokens=arguments.kv_cache_tokens,
          max_waiting=arguments.max_waiting, prepack_weights=not arguments.no_prepack)
