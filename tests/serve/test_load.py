"""A bounded load test of `llmlab serve` on loopback: 64 concurrent streaming clients send 1,000 requests of mixed
lengths; each completes with the right finish reason and token count, the KV block pool empties, and a second
identical round leaves the server's resident memory where the first left it."""

import asyncio
import random
import time
from pathlib import Path

import pytest

from tests.serve.servers import API_KEY, cli_server, get, tiny_checkpoint

openai = pytest.importorskip("openai")
pytest.importorskip("llmlab.infer.engine", reason="llmlab serve runs on llmlab.infer.engine")

CLIENTS = 64
REQUESTS = 1000
MEMORY_SLACK = 1.05  # the second round may use 5% more memory (allocator noise), no more


def requests(seed: int, vocab: int) -> list[tuple[list[int], int]]:
    """REQUESTS (prompt ids, max_tokens) of mixed lengths, the same for a seed."""
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randint(1, 48))], rng.randint(1, 16)) for _ in range(REQUESTS)]


async def one_round(base: str, work) -> list[tuple[str, int, int]]:
    """Send every request as a stream with at most CLIENTS at once: (finish reason, tokens, max_tokens) of each."""
    gate = asyncio.Semaphore(CLIENTS)

    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=300) as client:
        async def ask(prompt, max_tokens):
            async with gate:
                stream = await client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens,
                                                         temperature=0, stream=True,
                                                         stream_options={"include_usage": True})
                reasons, usage = [], None
                async for chunk in stream:
                    reasons += [choice.finish_reason for choice in chunk.choices if choice.finish_reason]
                    usage = chunk.usage or usage
                return reasons[0] if len(reasons) == 1 else reasons, usage.completion_tokens, max_tokens

        return await asyncio.gather(*(ask(prompt, max_tokens) for prompt, max_tokens in work))


def metric(base: str, name: str) -> float:
    text = get(base, "/metrics")[1].decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def resident_bytes(pid: int) -> int:
    """The process's resident memory (VmRSS) in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads resident memory from /proc")
def test_a_thousand_streams_complete_and_leave_nothing_behind(tmp_path):
    import llmlab

    checkpoint = tiny_checkpoint(tmp_path / "model")
    vocab = llmlab.load(checkpoint).config.vocab_size
    with cli_server(checkpoint, "--served-model-name", "tiny", "--max-num-seqs", str(CLIENTS),
                    "--api-key", API_KEY) as (base, process):
        work, memory = requests(0, vocab), []
        for _ in range(2):
            started = time.monotonic()
            results = asyncio.run(one_round(base, work))
            for reason, tokens, max_tokens in results:
                assert reason in ("stop", "length"), reason
                assert tokens == max_tokens if reason == "length" else 1 <= tokens <= max_tokens
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (metric(base, "llmlab_kv_blocks_used")
                                                   or metric(base, "llmlab_requests_running")):
                time.sleep(0.1)
            assert metric(base, "llmlab_kv_blocks_used") == 0 and metric(base, "llmlab_requests_running") == 0
            memory.append(resident_bytes(process.pid))
            print(f"round of {REQUESTS} requests: {time.monotonic() - started:.1f} s, "
                  f"resident {memory[-1] / 2**20:.0f} MiB")
        assert memory[1] <= memory[0] * MEMORY_SLACK, memory
