"""The FastAPI application: OpenAI's /v1 endpoints over an AsyncEngine, /tokenize, /detokenize, /health, /metrics and
the chat page at /."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from llmlab.infer.chat import PLAIN_STOP, ChatTemplate, chat_prompt_ids
from llmlab.infer.generate import resolve_config
from llmlab.infer.serve.errors import RETRY_AFTER_SECONDS, APIError, bad_request, install_error_handlers, logger
from llmlab.infer.serve.metrics import Metrics
from llmlab.infer.serve.middleware import DEFAULT_MAX_BODY_BYTES, GuardMiddleware
from llmlab.infer.serve.params import (Submission, chat_submission, check_token_ids, completion_prompts,
                                 completion_submission)
from llmlab.infer.serve.protocol import (ChatCompletionRequest, ChatMessage, CompletionRequest, DetokenizeRequest,
                                   TokenizeRequest)
from llmlab.infer.serve.responses import Answer, sse
from llmlab.infer.serve.runner import Run, cancel_on_disconnect

CHAT_PAGE = "static/chat.html"
CLIENT_GONE = 499  # nginx's status for a client that closed the connection; nobody reads it


@dataclass(frozen=True)
class ServeSettings:
    """What the server needs besides the engine: the model's name, its context, chat template, key and limits."""

    model_name: str
    max_model_len: int
    chat_template: ChatTemplate | None = None
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def chat_page() -> str:
    """The chat page's HTML (one file, no external resources)."""
    return resources.files("llmlab.infer.serve").joinpath(CHAT_PAGE).read_text(encoding="utf-8")


class Service:
    """The endpoints' work, over one AsyncEngine and its model's tokenizer."""

    def __init__(self, async_engine, settings: ServeSettings):
        self.async_engine, self.settings = async_engine, settings
        engine = async_engine.engine
        self.tokenizer, self.model = engine.tokenizer, engine.model
        self.vocab_size = self.model.config.vocab_size
        self.base = resolve_config(self.model, None, {})  # the checkpoint's defaults and EOS ids
        self.checkpoint_defaults = getattr(self.model, "generation_config", None) is not None
        self.max_num_seqs = getattr(engine, "max_num_seqs", None)
        self.metrics = Metrics(engine)
        self.created = int(time.time())
        self.draining = False

    def admit(self, model: str | None) -> None:
        """Refuse a request while shutting down (503) or for another model than the one served (404)."""
        if self.draining:
            raise APIError(503, "The server is shutting down and takes no new requests.", code="shutting_down",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if model is not None and model != self.settings.model_name:
            raise APIError(404, f"The model '{model}' does not exist; this server serves "
                                f"'{self.settings.model_name}'.", "model", "model_not_found")

    def fits(self, submission: Submission) -> Submission:
        """Refuse more samples per prompt than the engine runs at once."""
        if self.max_num_seqs is not None and submission.config.n > self.max_num_seqs:
            raise bad_request(f"n={submission.config.n} samples exceed the server's max_num_seqs of "
                              f"{self.max_num_seqs}.", "n")
        return submission

    def model_card(self) -> dict:
        """The served model as /v1/models lists it."""
        return {"id": self.settings.model_name, "object": "model", "created": self.created, "owned_by": "llmlab",
                "root": self.settings.model_name, "max_model_len": self.settings.max_model_len}

    def conversation_ids(self, messages: list[ChatMessage]) -> list[int]:
        """The prompt of a conversation: the checkpoint's chat template, else the plain format."""
        plain = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
        ids = chat_prompt_ids(self.tokenizer, plain, self.settings.chat_template)
        check_token_ids(ids, self.vocab_size, "conversation")
        return ids

    def completion(self, body: CompletionRequest) -> tuple[Submission, Answer]:
        """The engine submission and the answer builder of a completion request."""
        self.admit(body.model)
        prompts, texts = completion_prompts(body.prompt, self.tokenizer, self.vocab_size)
        submission = self.fits(completion_submission(body, prompts, self.base, self.checkpoint_defaults,
                                                     self.settings.max_model_len))
        return submission, Answer(submission, self.settings.model_name, self.tokenizer, chat=False, echo=body.echo,
                                  prompt_texts=texts, logprobs=body.logprobs is not None)

    def chat(self, body: ChatCompletionRequest) -> tuple[Submission, Answer]:
        """The engine submission and the answer builder of a chat completion request."""
        self.admit(body.model)
        prompt = self.conversation_ids(body.messages)
        extra_stop = PLAIN_STOP if self.settings.chat_template is None else ()
        submission = self.fits(chat_submission(body, prompt, self.base, self.checkpoint_defaults,
                                               self.settings.max_model_len, extra_stop))
        return submission, Answer(submission, self.settings.model_name, self.tokenizer, chat=True,
                                  logprobs=body.logprobs)

    async def respond(self, request, submission: Submission, answer: Answer, stream: bool, include_usage: bool):
        """Run a submission: the whole answer as JSON, or a stream of server-sent events ending in [DONE]."""
        run = Run(self.async_engine, submission, answer.id)
        if not stream:
            finals = await cancel_on_disconnect(request, run_whole(run))
            if finals is None:
                return Response(status_code=CLIENT_GONE)
            for output in finals:
                self.metrics.observe(output)
            return JSONResponse(answer.whole(finals))
        if await cancel_on_disconnect(request, started(run)) is None:  # a refusal is raised here, as JSON
            return Response(status_code=CLIENT_GONE)

        async def events():
            try:
                async for index, output in run.outputs():
                    if output.finished:
                        self.metrics.observe(output)
                    for event in answer.chunks(index, output, include_usage):
                        yield event
            except Exception as error:  # a bug, after the stream began: said in the stream
                logger.exception("the engine failed during a stream")
                yield sse(APIError(500, f"The server failed during the stream ({type(error).__name__}).").body())
            for event in answer.last_chunks(include_usage):
                yield event

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def run_whole(run: Run) -> list:
    """Start a run and wait for every prompt's last output."""
    await run.start()
    return await run.finals()


async def started(run: Run) -> bool:
    """Start a run; True once every prompt is running."""
    await run.start()
    return True


def create_app(async_engine, settings: ServeSettings):
    """The FastAPI application serving async_engine's model; its lifespan starts the engine and, at shutdown, lets
    the running requests finish (drain)."""
    service = Service(async_engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await async_engine.start()
        try:
            yield
        finally:
            service.draining = True
            await async_engine.shutdown(drain=True)

    app = FastAPI(title="llmlab", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes)

    def include_usage(body) -> bool:
        return body.stream_options is not None and body.stream_options.include_usage

    @app.get("/health")
    async def health():
        """200 while serving, 503 while shutting down."""
        if service.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        """The one served model."""
        return {"object": "list", "data": [service.model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        """The served model by name (404 for another)."""
        service.admit(name)
        return service.model_card()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        """OpenAI's (legacy) completions."""
        submission, answer = service.completion(body)
        return await service.respond(request, submission, answer, body.stream, include_usage(body))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        """OpenAI's chat completions."""
        submission, answer = service.chat(body)
        return await service.respond(request, submission, answer, body.stream, include_usage(body))

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        """A prompt or a conversation as token ids."""
        service.admit(body.model)
        if body.messages is not None:
            if not body.messages:
                raise bad_request("The field 'messages' must hold at least one message.", "messages")
            ids = service.conversation_ids(body.messages)
        elif body.prompt is not None:
            ids = service.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens).ids
        else:
            raise bad_request("The request needs a 'prompt' or 'messages'.", "prompt")
        return {"count": len(ids), "max_model_len": settings.max_model_len, "tokens": ids}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        """Token ids as text."""
        service.admit(body.model)
        bad = next((token for token in body.tokens if not 0 <= token < service.vocab_size), None)
        if bad is not None:
            raise bad_request(f"The field 'tokens' holds token id {bad}, outside the vocabulary of "
                              f"{service.vocab_size} tokens.", "tokens")
        return {"prompt": service.tokenizer.decode(body.tokens, skip_special_tokens=False)}

    @app.get("/metrics")
    async def metrics():
        """Prometheus metrics."""
        content, media_type = service.metrics.text()
        return Response(content, media_type=media_type)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        """The chat page."""
        return HTMLResponse(chat_page())

    return app
