"""Serving a checkpoint with uvicorn: load it, build the engine, and on SIGTERM or Ctrl-C stop admitting requests,
let the running ones finish, then exit."""

from __future__ import annotations

import os
import signal

from llmlab.errors import ConfigError
from llmlab.infer.serve.app import ServeSettings, create_app

API_KEY_VARIABLE = "LLMLAB_API_KEY"


def _draining_server(config, service):
    """A uvicorn server that, on the first exit signal, turns new requests away (503) while running ones finish."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            service.draining = True
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", [])
            if sig == signal.SIGTERM and sig in captured:  # uvicorn re-raises it after draining; a drained exit is 0
                captured.remove(sig)

    return DrainingServer(config)


def serve(model_path: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          served_model_name: str | None = None, max_num_seqs: int = 64, max_model_len: int | None = None,
          kv_cache_tokens: int | None = None, max_waiting: int | None = None, prepack_weights: bool = True,
          log_level: str = "info") -> None:
    """Serve the checkpoint at model_path with OpenAI's API until SIGTERM or Ctrl-C (the key defaults to
    $LLMLAB_API_KEY); on the CPU, prepack_weights packs the linear weights for faster kernels (llmlab.infer.prepack)."""
    import uvicorn

    import llmlab
    from llmlab.infer.chat import read_chat_template, require_tokenizer
    from llmlab.infer.engine import AsyncEngine, Engine
    from llmlab.infer.prepack import prepack

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, not {port}.")
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_VARIABLE) or None
    model = llmlab.load(model_path)
    tokenizer = require_tokenizer(model, model_path)
    if prepack_weights:
        prepack(model)
    engine = Engine(model, tokenizer, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                    kv_cache_tokens=kv_cache_tokens, max_waiting=max_waiting)
    name = served_model_name or str(model_path)
    settings = ServeSettings(name, engine.max_model_len, read_chat_template(model_path), api_key)
    app = create_app(AsyncEngine(engine), settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=None)
    print(f"Serving {model_path} as '{name}' at http://{host}:{port}/v1 (chat page: http://{host}:{port}/)"
          f"{', API key required' if api_key else ''}.", flush=True)
    _draining_server(config, app.state.service).run()
