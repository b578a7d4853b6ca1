"""The OpenAI-compatible server (survey §6): /v1/completions, /v1/chat/completions, /v1/models, /tokenize,
/detokenize, /health, /metrics and a chat page at /, over the continuous-batching engine (llmlab.infer.engine).

    llmlab serve runs/demo --port 8000        # or, in Python:
    app = create_app(AsyncEngine(Engine(model)), ServeSettings("demo", model.config.max_seq_len))

Needs the serve extra: pip install 'llmlab[serve]'."""

from llmlab.infer.serve.app import ServeSettings, create_app
from llmlab.infer.serve.server import serve

__all__ = ["ServeSettings", "create_app", "serve"]
