"""Running tasks over a model (survey §7): each task's documents become requests of lm-eval's three kinds
(loglikelihood, loglikelihood_rolling, generate_until), the model answers them, and the answers become scores and
metrics with standard errors.

A model is anything with the three methods of LocalModel (llmlab.evaluate.remote.RemoteModel answers them from an
OpenAI-compatible server). With a cache file, every answered request is appended and flushed at once, so a killed
evaluation resumes without redoing finished requests.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from llmlab.errors import ConfigError
from llmlab.evaluate import answers, metrics
from llmlab.evaluate.metrics import Aggregate
from llmlab.evaluate.tasks import (GenerationOptions, Task, check_templates, doc_choices, doc_gold, doc_target,
                                   load_documents, render)

CACHE_FILE = "requests.jsonl"
PASS_AT_K_CURVE = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


# --- models ----------------------------------------------------------------------------------------------------

def sha256_files(path: str | os.PathLike) -> dict[str, str]:
    """The SHA-256 of a file, or of every file below a directory (by relative path)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    hashes = {}
    for file in files:
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
        hashes[file.name if file == path else str(file.relative_to(path))] = digest.hexdigest()
    return hashes


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class LocalModel:
    """An llmlab model (decoder or encoder-decoder) answering evaluation requests, tokenized as lm-eval's hf model
    tokenizes them; `identity` names its weights for the request cache (default: a hash of its parameters);
    max_length (default: the model's context) bounds what the model reads, prefix_token replaces an empty context
    (default: the BOS id, else the EOS id)."""

    def __init__(self, model, tokenizer=None, batch_size: int = 16, identity: str | None = None,
                 max_length: int | None = None, prefix_token: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        if self.tokenizer is None:
            raise ConfigError("The model has no tokenizer (tokenizer.json); evaluation requests are text.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"--batch-size must be a positive integer, not {batch_size!r}.")
        self.batch_size = batch_size
        self.identity = identity or _parameters_digest(model)
        self.can_generate = model.config.arch != "encoder"
        config = model.config
        self.max_length = int(max_length or config.max_seq_len)
        eos = config.eos_token_id
        self.eot_token = (eos[0] if isinstance(eos, (list, tuple)) else eos) if eos is not None else 0
        if prefix_token is None:
            prefix_token = config.bos_token_id if config.bos_token_id is not None else self.eot_token
        self.prefix_token = prefix_token

    def encode(self, text: str) -> list[int]:
        """Token ids of a text, without special tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split: the context's trailing spaces join the continuation, the whole text is encoded, and the
        continuation is what follows the context's tokens; an empty context is the prefix token (or the
        continuation's first token where that is the prefix token)."""
        if not context:
            ids = self.encode(continuation)
            return (ids[:1], ids[1:]) if ids and ids[0] == self.prefix_token else ([self.prefix_token], ids)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, head = self.encode(context + continuation), self.encode(context)
        return head, whole[len(head):]

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool, int]]:
        """(log p(continuation | context), greedy, continuation tokens) of each (context, continuation)."""
        from llmlab.evaluate.scoring import loglikelihood

        results = loglikelihood(self.model, [self.encode_pair(*pair) for pair in requests], self.batch_size,
                                max_length=self.max_length)
        return [(r.logprob, r.is_greedy, r.tokens) for r in results]

    def loglikelihood_rolling(self, texts: Sequence[str | list[int]]) -> list[tuple[float, int]]:
        """(log p(text), tokens) of each whole text (or token ids), in windows of max_length tokens."""
        from llmlab.evaluate.scoring import loglikelihood_rolling

        ids = [self.encode(text) if isinstance(text, str) else list(text) for text in texts]
        totals = loglikelihood_rolling(self.model, ids, self.prefix_token, self.max_length, batch_size=self.batch_size)
        return [(total, len(row)) for total, row in zip(totals, ids)]

    def generate(self, prompts: Sequence[str], options: GenerationOptions, seed: int = 0) -> list[list[str]]:
        """options.n continuations of each prompt, each cut before the first of options.until; prompts are batched
        longest first (results do not depend on the batch: sample j of every prompt has seed + j)."""
        from llmlab.infer.config import GenerationConfig
        from llmlab.infer.generate import generate

        if not self.can_generate:
            raise ConfigError("An encoder-only model cannot generate text; a generation task needs a decoder.")
        sample = options.temperature > 0
        config = GenerationConfig(max_new_tokens=options.max_new_tokens, do_sample=sample,
                                  temperature=options.temperature if sample else 1.0, stop=options.until,
                                  n=options.n, seed=seed if sample else None)
        keep = max(1, self.max_length - options.max_new_tokens)
        ids = [self.encode(prompt)[-keep:] or [self.prefix_token] for prompt in prompts]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        texts: list[list[str]] = [[] for _ in prompts]
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            result = generate(self.model, [ids[i] for i in batch], config, tokenizer=self.tokenizer).text
            for row, index in enumerate(batch):
                texts[index] = result[row * options.n:(row + 1) * options.n]
        return texts

    def describe(self) -> dict:
        """What results.json records of the model."""
        return {"kind": "local", "arch": self.model.config.arch, "identity": self.identity}


def _parameters_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# --- requests, cached ------------------------------------------------------------------------------------------

class Requests:
    """The model's answers to requests, from the cache file where it holds them; new answers are appended and
    flushed chunk by chunk, so that a killed run loses at most one chunk."""

    def __init__(self, model, cache_file: str | os.PathLike | None = None, progress: bool = False, chunk: int = 64):
        self.model, self.progress, self.chunk = model, progress, chunk
        self.answers: dict[str, object] = {}
        self.handle = None
        if cache_file is not None:
            cache_file = Path(cache_file)
            text = cache_file.read_text(encoding="utf-8") if cache_file.exists() else ""
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                    self.answers[entry["key"]] = entry["answer"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill
            self.handle = open(cache_file, "a", encoding="utf-8")
            if text and not text.endswith("\n"):
                self.handle.write("\n")  # after a line cut short, new answers start on a line of their own

    def close(self) -> None:
        """Close the cache file."""
        if self.handle is not None:
            self.handle.close()

    def _run(self, kind: str, items: list, compute: Callable[[list], list], desc: str) -> list:
        from tqdm.auto import tqdm

        keys = [_digest([self.model.identity, kind, item]) for item in items]
        missing = sorted({key: i for i, key in enumerate(keys) if key not in self.answers}.values())
        with tqdm(total=len(items), initial=len(items) - len(missing), desc=desc, unit="request",
                  disable=not self.progress) as bar:
            for start in range(0, len(missing), self.chunk):
                batch = missing[start:start + self.chunk]
                for index, answer in zip(batch, compute([items[i] for i in batch])):
                    answer = json.loads(json.dumps(answer))  # as the cache gives it back: lists, not tuples
                    self.answers[keys[index]] = answer
                    if self.handle is not None:
                        self.handle.write(json.dumps({"key": keys[index], "answer": answer}) + "\n")
                if self.handle is not None:
                    self.handle.flush()
                    os.fsync(self.handle.fileno())
                bar.update(len(batch))
        return [self.answers[key] for key in keys]

    def loglikelihood(self, pairs: list[tuple[str, str]], desc: str = "loglikelihood") -> list:
        """[logprob, greedy, tokens] of each (context, continuation)."""
        return self._run("loglikelihood", [list(p) for p in pairs], self.model.loglikelihood, desc)

    def loglikelihood_rolling(self, texts: list, desc: str = "perplexity") -> list:
        """[logprob, tokens] of each text."""
        return self._run("loglikelihood_rolling", texts, self.model.loglikelihood_rolling, desc)

    def generate(self, prompts: list[str], options: GenerationOptions, seed: int, desc: str = "generate") -> list:
        """options.n texts per prompt."""
        settings = [options.max_new_tokens, list(options.until), options.temperature, options.n, seed]
        return self._run("generate", [[prompt, settings] for prompt in prompts],
                         lambda items: self.model.generate([item[0] for item in items], options, seed), desc)


# --- prompts ---------------------------------------------------------------------------------------------------

TARGET_FIELD = "llmlab_target"  # a demonstration's target text, added to a copy of its document


def _demonstration(task: Task, doc: dict) -> dict:
    """A copy of a document with its target text (a choice's text for multiple choice) under TARGET_FIELD."""
    if task.kind == "multiple_choice":
        choices = doc_choices(task, doc)
        target = choices[doc_gold(task, doc, choices)]
    else:
        target = doc_target(task, doc)
        target = target[0] if isinstance(target, list) else target
    return {**doc, TARGET_FIELD: target}


def contexts(task: Task, docs: list[dict], k: int, seed: int) -> list[str]:
    """Each document's prompt: the description, k demonstrations and the query, in lm-eval's plain-text layout
    (llmlab.infer.prompting.build_prompt), the demonstrations chosen as task.fewshot says."""
    from llmlab.infer.prompting import DemonstrationPool, PromptTemplate, build_prompt

    template = PromptTemplate(task.template, "{{" + TARGET_FIELD + "}}", task.target_delimiter,
                              task.fewshot_delimiter)
    if k == 0:
        return [build_prompt(task.description, [], doc, template, instruction_delimiter="") for doc in docs]
    own = task.fewshot.data is None and task.fewshot.split is None  # the task's own documents, the query excluded
    pool_docs = docs if own else load_documents(task.fewshot.data or task.data, task.fewshot.split, task.source)
    pool = DemonstrationPool([_demonstration(task, doc) for doc in pool_docs],
                             text=lambda record: render(task.template, record), encoder=task.fewshot.encoder)
    prompts = []
    for index, doc in enumerate(docs):
        chosen = pool.select(doc, k, task.fewshot.selection, seed, task.fewshot.order,
                             exclude=(index,) if own else ())
        prompts.append(build_prompt(task.description, chosen, doc, template, instruction_delimiter=""))
    return prompts


# --- tasks -----------------------------------------------------------------------------------------------------

def run_task(requests: Requests, task: Task, docs: list[dict], k: int, seed: int = 0
             ) -> tuple[dict[str, Aggregate], list[dict]]:
    """The metrics of one task at k shots and a record per document (prompt, outputs, answers, scores)."""
    check_templates(task, docs)
    if task.kind == "perplexity":
        return _perplexity(requests, task, docs)
    prompts = contexts(task, docs, k, seed)
    runner = {"multiple_choice": _multiple_choice, "loglikelihood": _loglikelihood, "generation": _generation}
    return runner[task.kind](requests, task, docs, prompts, seed)


def _mean_metrics(samples: list[dict], names: Sequence[str]) -> dict[str, Aggregate]:
    return {name: metrics.mean_stderr([sample["scores"][name] for sample in samples]) for name in names}


def _multiple_choice(requests, task, docs, prompts, seed):
    choices = [doc_choices(task, doc) for doc in docs]
    pairs = [(prompt, task.target_delimiter + choice) for prompt, options in zip(prompts, choices)
             for choice in options]
    answers_ = iter(requests.loglikelihood(pairs, f"{task.name} loglikelihood"))
    samples = []
    for doc_id, (doc, prompt, options) in enumerate(zip(docs, prompts, choices)):
        gold = doc_gold(task, doc, options)
        lls = [next(answers_)[0] for _ in options]
        samples.append({"doc_id": doc_id, "prompt": prompt, "choices": options, "gold": gold, "loglikelihoods": lls,
                        "scores": metrics.multiple_choice(lls, options, gold)})
    return _mean_metrics(samples, task.metrics), samples


def _loglikelihood(requests, task, docs, prompts, seed):
    targets = [doc_target(task, doc) for doc in docs]
    targets = [t[0] if isinstance(t, list) else t for t in targets]
    results = requests.loglikelihood([(p, task.target_delimiter + t) for p, t in zip(prompts, targets)],
                                     f"{task.name} loglikelihood")
    samples = [{"doc_id": i, "prompt": p, "target": t, "loglikelihood": ll, "scores": {"acc": float(greedy)}}
               for i, (p, t, (ll, greedy, _)) in enumerate(zip(prompts, targets, results))]
    values = {}
    if "acc" in task.metrics:
        values["acc"] = metrics.mean_stderr([s["scores"]["acc"] for s in samples])
    if "perplexity" in task.metrics:  # lm-eval's: exp of minus the mean log-likelihood per document
        values["perplexity"] = metrics.corpus_perplexity([s["loglikelihood"] for s in samples], [1] * len(samples),
                                                         seed=seed)
    return values, samples


def _perplexity(requests, task, docs):
    texts = [doc["tokens"] if "tokens" in doc else render(task.template, doc) for doc in docs]
    results = requests.loglikelihood_rolling(texts, f"{task.name} perplexity")
    decode = getattr(getattr(requests.model, "tokenizer", None), "decode", None)
    samples = []
    for doc_id, (text, (ll, tokens)) in enumerate(zip(texts, results)):
        if not isinstance(text, str):  # a shard's document: words and bytes of its decoded text
            if decode is None:
                raise ConfigError(f"perplexity over the token shards of {task.data} needs a local model's tokenizer.")
            text = decode(text)
        samples.append({"doc_id": doc_id, "loglikelihood": ll, "tokens": tokens, "words": metrics.word_count(text),
                        "bytes": metrics.byte_count(text)})
    lls = [s["loglikelihood"] for s in samples]
    counts = {"perplexity": "tokens", "word_perplexity": "words", "byte_perplexity": "bytes"}
    values = {}
    for name in task.metrics:
        if name == "bits_per_byte":
            values[name] = metrics.corpus_bits_per_byte(lls, [s["bytes"] for s in samples])
        else:
            values[name] = metrics.corpus_perplexity(lls, [s[counts[name]] for s in samples])
    return values, samples


def _gsm8k_answers(task: Task, output: str) -> dict[str, str]:
    """The strict and flexible answers of one output."""
    strict = answers.extract_cot_strict(output) if task.answer == "gsm8k_cot" else answers.extract_strict(output)
    return {"strict-match": strict, "flexible-extract": answers.extract_flexible(output)}


def _generation(requests, task, docs, prompts, seed):
    outputs = requests.generate(prompts, task.generation, seed, f"{task.name} generate")
    finals = None
    if task.zeroshot_cot:  # Kojima et al.'s stage 2: the reasoning, then the trigger that asks for the answer
        from llmlab.infer.prompting import zero_shot_cot_answer_prompt

        second = [zero_shot_cot_answer_prompt(prompt, texts[0]) for prompt, texts in zip(prompts, outputs)]
        options = GenerationOptions(max_new_tokens=32, until=task.generation.until)
        finals = [texts[0] for texts in requests.generate(second, options, seed, f"{task.name} answer")]
    if task.pass_at():
        return _pass_at_k(task, docs, prompts, outputs)
    samples = []
    for doc_id, (doc, prompt, texts) in enumerate(zip(docs, prompts, outputs)):
        references = doc_target(task, doc)
        sample = {"doc_id": doc_id, "prompt": prompt, "target": references, "outputs": texts, "scores": {}}
        if finals is not None:
            sample["answer"] = finals[doc_id]
        if task.answer in ("gsm8k", "gsm8k_cot"):
            extracted = [_gsm8k_answers(task, text) for text in texts]
            if finals is not None:  # lm-eval's strict rule on the reasoning, the flexible one on the answer
                extracted[0]["flexible-extract"] = answers.extract_flexible(finals[doc_id])
            sample["extracted"] = extracted
            for rule in ("strict-match", "flexible-extract"):
                if task.vote:
                    from llmlab.infer.prompting import majority_vote

                    voted = majority_vote([e[rule] for e in extracted if e[rule] != answers.INVALID])
                    sample["scores"][f"maj@{len(texts)},{rule}"] = answers.answers_match(voted or answers.INVALID,
                                                                                         references)
                else:
                    sample["scores"][f"exact_match,{rule}"] = answers.answers_match(extracted[0][rule], references)
        else:
            sample["scores"] = _text_scores(task, texts[0], references)
        samples.append(sample)
    names = list(samples[0]["scores"]) if samples else []
    values = _mean_metrics(samples, [n for n in names if n not in ("bleu", "chrf")])
    hypotheses = [s["outputs"][0] for s in samples]
    references = [s["target"] if isinstance(s["target"], list) else [s["target"]] for s in samples]
    for name, corpus in (("bleu", metrics.corpus_bleu), ("chrf", metrics.corpus_chrf)):
        if name in task.metrics:
            values[name] = corpus(hypotheses, references, seed=seed)
    return values, samples


def _text_scores(task: Task, output: str, references) -> dict[str, float]:
    """Per-document scores of a free-text answer (BLEU and chrF are corpus metrics, computed apart)."""
    references = [references] if isinstance(references, str) else references
    options = dict(task.normalize)
    if options.pop("strip", False):
        output, references = output.strip(), [ref.strip() for ref in references]
    if options.pop("squad", False):
        output, references = metrics.squad_normalize(output), [metrics.squad_normalize(r) for r in references]
    scores = {}
    if "exact_match" in task.metrics:
        scores["exact_match"] = metrics.exact_match(output, references, **options)
    if "f1" in task.metrics:
        scores["f1"] = metrics.token_f1(output, references)
    rouges = [name for name in metrics.ROUGE_TYPES if name in task.metrics]
    if rouges:
        scores.update({name: value for name, value in metrics.rouge(output, references).items() if name in rouges})
    return scores


def _pass_at_k(task, docs, prompts, outputs):
    """Execute every sample of every problem (HumanEval's program) and estimate pass@k."""
    from llmlab.evaluate.execution import evaluate_samples

    problems = {str(doc.get("task_id", i)): doc for i, doc in enumerate(docs)}
    ids = list(problems)
    flat = [{"task_id": ids[i], "completion": text} for i, texts in enumerate(outputs) for text in texts]
    results = evaluate_samples(problems, flat)
    passed = iter(result.passed for result in results)
    samples = []
    for doc_id, (prompt, texts) in enumerate(zip(prompts, outputs)):
        correct = [next(passed) for _ in texts]
        samples.append({"doc_id": doc_id, "task_id": ids[doc_id], "prompt": prompt, "outputs": texts,
                        "passed": correct, "scores": {}})
    n = min(len(texts) for texts in outputs)
    values = {}
    curve = {k for k in PASS_AT_K_CURVE if k <= n} | {n}  # for the plot of pass@k against k
    for k in sorted(set(task.pass_at()) | curve):
        if k > n:
            raise ConfigError(f"task {task.name} asks for pass@{k} but generates {n} samples per problem "
                              f"(raise generation.n).")
        values[f"pass@{k}"] = metrics.mean_pass_at_k([len(s["passed"]) for s in samples],
                                                     [sum(s["passed"]) for s in samples], k)
        for sample in samples:
            sample["scores"][f"pass@{k}"] = metrics.pass_at_k(len(sample["passed"]), sum(sample["passed"]), k)
    return values, samples


# --- everything ------------------------------------------------------------------------------------------------

def evaluate(model, tasks: Sequence[Task], *, num_fewshot: Sequence[int] | None = None, limit: int | None = None,
             seed: int = 0, cache_file: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """Run every task (at every shot count of num_fewshot, else the task's own) over the first `limit` documents;
    returns {"results": {label: {...metrics}}, "samples": {label: [...]}, "config": ...}."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be a positive integer, not {limit}.")
    requests = Requests(model, cache_file, progress)
    results, samples, started = {}, {}, time.time()
    try:
        for task in tasks:
            if task.kind == "generation" and not model.can_generate:
                raise ConfigError(f"task {task.name} generates text, but an encoder-only model cannot generate; "
                                  "evaluate a decoder or encoder-decoder.")
            docs = load_documents(task.data, task.split, task.source)[:limit]
            shots = [0] if task.kind == "perplexity" else list(num_fewshot or [task.fewshot.k])
            for k in shots:
                label = task.name if len(shots) == 1 else f"{task.name} ({k}-shot)"
                values, records = run_task(requests, task, docs, k, seed)
                results[label] = {"task": task.name, "num_fewshot": k, "documents": len(docs),
                                  "metrics": {name: _as_dict(value) for name, value in values.items()}}
                samples[label] = records
    finally:
        requests.close()
    return {"results": results, "samples": samples, "seconds": time.time() - started,
            "config": {"tasks": [task.describe() for task in tasks], "num_fewshot": list(num_fewshot or []) or None,
                       "limit": limit, "seed": seed, "model": model.describe()}}


def _as_dict(value: Aggregate) -> dict:
    stderr = None if math.isnan(value.stderr) else value.stderr
    return {"value": value.value, "stderr": stderr, "n": value.n, "method": value.method}
