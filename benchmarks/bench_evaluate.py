"""llmlab's evaluator against lm-evaluation-harness's `hf` model on the same checkpoint (saved for transformers with
save_hf) and the same requests, in one run: a few-shot multiple-choice task (loglikelihood requests) and a perplexity
task (rolling log-likelihoods of whole texts), with requests per second, the ratio, and whether the results are equal.

The data is Shakespeare (../shared/data/tinyshakespeare.txt): a byte-level BPE tokenizer trained on it, questions
"which line comes next?" (a line, its true successor among three other lines) after fixed few-shot demonstrations
(lm-eval's first_n sampler over a train split, as MMLU's dev split), and the play's last lines as perplexity texts.
The model is a random LLaMA-style checkpoint (LLaMA's 32,000-token vocabulary by default).

Both sides answer lm-eval's own request instances (built once, outside the timing): llmlab's LocalModel.loglikelihood
/ loglikelihood_rolling on their arguments against HFLM's. Equal results: every choice's log-likelihood within 1e-4,
identical acc and acc_norm (lm-eval's process_results on its answers, llmlab.evaluate.metrics on llmlab's), each
text's log-likelihood within 1e-6 relative and identical perplexities to 1e-5 relative; llmlab's prompts (its own
few-shot builder, llmlab.evaluate.evaluator.contexts) equal lm-eval's. Each side runs once on a few requests to warm
up, then ROUNDS timed rounds alternating sides; the table gives the median.

    nice python benchmarks/bench_evaluate.py
    python benchmarks/bench_evaluate.py --questions 16 --text-tokens 4000 --rounds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

import llmlab
from llmlab.data.tokenizer import END_OF_TEXT, train_tokenizer
from llmlab.evaluate import metrics
from llmlab.evaluate.evaluator import LocalModel, contexts
from llmlab.infer.prepack import prepack
from llmlab.evaluate.tasks import task_from_dict
from llmlab.model import Model, presets
from llmlab.model.hf import save_hf
from llmlab.scaling.estimate import inference_flops_per_token

SHAKESPEARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"
MC_TASK, PPL_TASK = "bench_mc", "bench_ppl"
TEMPLATE = "Line: {{question}}\nNext line:"
DOCUMENT_TOKENS = 2000


def build(directory: Path, args) -> tuple[Path, Path, list[dict], list[dict], list[str]]:
    """The checkpoint and its HF export, train and test questions, and the perplexity texts."""
    lines = [line.strip() for line in Path(args.shakespeare).read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if len(line) > 20 and not line.endswith(":")]
    tokenizer = train_tokenizer(lines, args.tokenizer_vocab, special_tokens=(END_OF_TEXT,))
    eot = tokenizer.token_to_id(END_OF_TEXT)
    d_ff = (args.d_model * 8 // 3 + 15) // 16 * 16
    config = presets.llama("tiny", vocab_size=max(args.vocab, tokenizer.get_vocab_size()), d_model=args.d_model,
                           n_layers=args.layers, n_heads=args.d_model // 64, n_kv_heads=args.d_model // 64,
                           d_ff=d_ff, max_seq_len=args.context, eos_token_id=eot, bos_token_id=eot, init_std=0.02)
    torch.manual_seed(0)
    model = Model(config)
    model.tokenizer = tokenizer
    llmlab.save(model, directory / "model")
    hf_dir = save_hf(model, directory / "hf")
    rng = random.Random(0)
    half = len(lines) // 2

    def question(index: int) -> dict:
        others = rng.sample(lines[:half], 3)
        answer = rng.randrange(4)
        return {"question": lines[index], "choices": others[:answer] + [lines[index + 1]] + others[answer:],
                "answer": answer}

    train = [question(i) for i in range(5)]
    test = [question(i) for i in rng.sample(range(half, len(lines) - 1), args.questions)]
    ending, tokens = [], 0  # the play's last lines, in documents of about DOCUMENT_TOKENS tokens
    for line in reversed(lines):
        if tokens >= args.text_tokens:
            break
        ending.insert(0, (line, len(tokenizer.encode(line + "\n").ids)))
        tokens += ending[0][1]
    texts, document, size = [], [], 0
    for line, count in ending:
        document.append(line)
        size += count
        if size >= DOCUMENT_TOKENS or line is ending[-1][0]:
            texts.append("\n".join(document))
            document, size = [], 0
    return directory / "model", hf_dir, train, test, texts


def lm_eval_tasks(directory: Path, train: list[dict], test: list[dict], texts: list[str], shots: int) -> Path:
    """The two tasks in lm-eval's YAML."""
    tasks = directory / "lm_eval_tasks"
    tasks.mkdir()
    for name, rows in (("train", train), ("test", test), ("ppl", [{"text": t} for t in texts])):
        (tasks / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    (tasks / f"{MC_TASK}.yaml").write_text(
        f"task: {MC_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    train: {json.dumps(str(tasks / 'train.jsonl'))}\n    test: {json.dumps(str(tasks / 'test.jsonl'))}\n"
        f"output_type: multiple_choice\ntest_split: test\nfewshot_split: train\nnum_fewshot: {shots}\n"
        "fewshot_config:\n  sampler: first_n\n"
        f"doc_to_text: {json.dumps(TEMPLATE)}\ndoc_to_choice: choices\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (tasks / f"{PPL_TASK}.yaml").write_text(
        f"task: {PPL_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {json.dumps(str(tasks / 'ppl.jsonl'))}\n"
        "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shakespeare", default=str(SHAKESPEARE), help="tinyshakespeare.txt")
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--text-tokens", type=int, default=100_000, help="tokens of perplexity text, about")
    parser.add_argument("--tokenizer-vocab", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=32000, help="the model's vocabulary (rows past the "
                        "tokenizer's are never produced by it, as in many published checkpoints)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        checkpoint, hf_dir, train, test, texts = build(directory, args)
        manager = TaskManager(include_path=str(lm_eval_tasks(directory, train, test, texts, args.shots)))
        hf = HFLM(pretrained=str(hf_dir), device=args.device, dtype="float32", batch_size=args.batch_size,
                  max_length=args.context)
        model = llmlab.load(checkpoint, device=args.device)
        ours = LocalModel(model, batch_size=args.batch_size, identity="bench")
        packed_model = llmlab.load(checkpoint, device=args.device)
        prepack(packed_model)  # what llmlab evaluate does on the CPU
        packed = LocalModel(packed_model, batch_size=args.batch_size, identity="bench")
        parameters = model.num_parameters()
        mc_task, mc_requests = lm_eval_requests(MC_TASK, manager)
        ppl_task, ppl_requests = lm_eval_requests(PPL_TASK, manager)
        pairs = [instance.args for instance in mc_requests]
        documents = [instance.args[0] for instance in ppl_requests]
        same_prompts = llmlab_prompts(directory, train, test) == [pairs[i][0] for i in range(0, len(pairs), 4)]
        sides = {("multiple choice", "llmlab"): lambda n: ours.loglikelihood(pairs[:n]),
                 ("multiple choice", "llmlab prepacked"): lambda n: packed.loglikelihood(pairs[:n]),
                 ("multiple choice", "lm-eval hf"): lambda n: hf.loglikelihood(mc_requests[:n], disable_tqdm=True),
                 ("perplexity", "llmlab"): lambda n: ours.loglikelihood_rolling(documents[:n]),
                 ("perplexity", "llmlab prepacked"): lambda n: packed.loglikelihood_rolling(documents[:n]),
                 ("perplexity", "lm-eval hf"): lambda n: hf.loglikelihood_rolling(ppl_requests[:n],
                                                                                    disable_tqdm=True)}
        for run in sides.values():
            run(4)  # warm-up
        times = {key: [] for key in sides}
        answers = {}
        for _ in range(args.rounds):
            for key, run in sides.items():
                start = time.perf_counter()
                answers[key] = run(None)
                times[key].append(time.perf_counter() - start)

    tokens = sum(len(ours.encode(text)) for text in documents)
    checks = {"multiple choice": (mc_equal, mc_task), "perplexity": (ppl_equal, ppl_task)}
    requests = {"multiple choice": len(pairs), "perplexity": len(documents)}
    print("| task | requests | llmlab | llmlab req/s | lm-eval hf req/s | ratio | results equal |")
    print("| --- | ---: | --- | ---: | ---: | ---: | --- |")
    for kind, side in sides:
        if side == "lm-eval hf":
            continue
        equal, task = checks[kind]
        ours_rate = requests[kind] / statistics.median(times[(kind, side)])
        theirs_rate = requests[kind] / statistics.median(times[(kind, "lm-eval hf")])
        print(f"| {kind} | {requests[kind]} | {side} | {ours_rate:.2f} | {theirs_rate:.2f} | "
              f"{ours_rate / theirs_rate:.2f}x | {equal(task, answers[(kind, side)], answers[(kind, 'lm-eval hf')])} |")
    # the perplexity roofline: the forward FLOPs every side must run (the head at every position), against the
    # float32 matrix-multiply rate of this machine for the head's shape (one batch of windows)
    flops = tokens * inference_flops_per_token(parameters - model.embed.tokens.weight.numel() * (
        model.head.weight is not model.embed.tokens.weight), args.layers, args.d_model, args.context // 2)
    rows, vocab = args.batch_size * args.context, model.config.vocab_size
    left, weight = torch.randn(rows, args.d_model), torch.randn(vocab, args.d_model)
    kernels = {"torch.matmul": lambda: left @ weight.T}
    if torch.backends.mkldnn.is_available():
        blocked = torch.ops.mkldnn._reorder_linear_weight(weight)
        kernels["oneDNN blocked"] = lambda: torch.ops.mkldnn._linear_pointwise(left, blocked, None, "none", [], "")
    kernel_rates = ", ".join(f"{name} {2 * rows * args.d_model * vocab / min(timed(run) for _ in range(5)) / 1e9:.0f}"
                             for name, run in kernels.items())
    rates = ", ".join(f"{side} {flops / statistics.median(times[('perplexity', side)]) / 1e9:.0f}"
                      for side in ("llmlab", "llmlab prepacked", "lm-eval hf"))
    print(f"\nperplexity: {flops / 1e12:.2f} TFLOP of forward passes (2N + 4·L·d·T per token, T = context / 2); "
          f"GFLOP/s run: {rates}; the head's product [{rows}×{args.d_model}] × [{args.d_model}×{vocab}] alone on "
          f"this machine, GFLOP/s: {kernel_rates}")
    print(f"\n{args.questions} questions x 4 choices after {args.shots} fixed demonstrations (llmlab's prompts equal "
          f"lm-eval's: {same_prompts}); {len(documents)} texts of {tokens} tokens in all; llama d_model "
          f"{args.d_model}, {args.layers} layers, vocabulary {model.config.vocab_size}, {parameters / 1e6:.1f}M "
          f"parameters, context {args.context}; batch size {args.batch_size}; {args.device}, "
          f"{torch.get_num_threads()} threads; median of {args.rounds} round(s).")


def timed(function) -> float:
    """Seconds one call of function takes."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def lm_eval_requests(name: str, manager) -> tuple:
    """lm-eval's task and its request instances, built once, outside the timing."""
    task = manager.load(name)["tasks"][name]
    task.build_all_requests(rank=0, world_size=1)
    return task, list(task.instances)


def llmlab_prompts(directory: Path, train: list[dict], test: list[dict]) -> list[str]:
    """Each question's prompt as llmlab's evaluator builds it (fixed first demonstrations from the train file)."""
    for name, rows in (("train", train), ("test", test)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = task_from_dict({"name": MC_TASK, "kind": "multiple_choice", "data": "test.jsonl", "choices": "choices",
                           "template": TEMPLATE, "target": "{{answer}}",
                           "fewshot": {"k": len(train), "data": "train.jsonl", "selection": "first"}},
                          "bench", directory)
    return contexts(task, test, len(train), seed=0)


def _per_document(task, instances: list, answers: list) -> list[tuple[dict, list]]:
    """(document, its answers in request order) of lm-eval's instances."""
    documents: dict[int, tuple[dict, list]] = {}
    for instance, answer in zip(instances, answers, strict=True):
        documents.setdefault(instance.doc_id, (instance.doc, []))[1].append(answer)
    return list(documents.values())


def mc_equal(task, ours: list, theirs: list) -> bool:
    """Every choice's log-likelihood within 1e-4 and identical acc and acc_norm: lm-eval's process_results on its
    answers, llmlab.evaluate.metrics.multiple_choice on llmlab's."""
    if not all(abs(a[0] - b[0]) <= 1e-4 for a, b in zip(ours, theirs, strict=True)):
        return False
    reference = [task.process_results(doc, answers) for doc, answers in _per_document(task, task.instances, theirs)]
    got = [metrics.multiple_choice([a[0] for a in answers], doc["choices"], doc["answer"])
           for doc, answers in _per_document(task, task.instances, ours)]
    return all(sum(r[name] for r in reference) == sum(g[name] for g in got) for name in ("acc", "acc_norm"))


def ppl_equal(task, ours: list, theirs: list) -> bool:
    """Each text's log-likelihood within 1e-6 relative; word and byte perplexity and bits per byte (lm-eval's
    aggregation on its answers, llmlab.evaluate.metrics on llmlab's) within 1e-5 relative."""
    if not all(abs(a[0] - b) <= 1e-6 * abs(b) for a, b in zip(ours, theirs, strict=True)):
        return False
    items = [task.process_results(instance.doc, [answer]) for instance, answer in zip(task.instances, theirs)]
    aggregate = task.aggregation()
    texts = [instance.args[0] for instance in task.instances]
    lls, words = sum(a[0] for a in ours), sum(metrics.word_count(t) for t in texts)
    bytes_ = sum(metrics.byte_count(t) for t in texts)
    got = {"word_perplexity": metrics.perplexity(lls, words), "byte_perplexity": metrics.perplexity(lls, bytes_),
           "bits_per_byte": metrics.bits_per_byte(lls, bytes_)}
    return all(math.isclose(got[name], aggregate[name]([item[name] for item in items]), rel_tol=1e-5)
               for name in got)


if __name__ == "__main__":
    main()
