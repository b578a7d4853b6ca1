"""llmlab's evaluator against lm-evaluation-harness's `hf` model on the same checkpoint (saved for transformers with
save_hf) and the same tasks, in one run: a multiple-choice task (loglikelihood requests) and a perplexity task
(rolling log-likelihoods of whole texts), with requests per second, the ratio, and whether the results are equal
(identical acc / acc_norm, per-request log-likelihoods within 1e-4; perplexities within 1e-5 relative).

The results come from a whole evaluation on each side (llmlab.evaluate.evaluate, lm_eval.simple_evaluate); the
timing is of the models answering the same requests (lm-eval's, built once): llmlab's LocalModel.loglikelihood /
loglikelihood_rolling against HFLM's, prompts and metrics left out on both sides. Each side runs once to warm up,
then ROUNDS timed rounds alternating sides; the table gives the median.

    OMP_NUM_THREADS=2 python benchmarks/bench_evaluate.py
    python benchmarks/bench_evaluate.py --questions 8 --texts 4 --rounds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

import llmlab
from llmlab.data.tokenizer import END_OF_TEXT, train_tokenizer
from llmlab.evaluate.evaluator import LocalModel, evaluate
from llmlab.evaluate.tasks import builtin_task, task_from_dict
from llmlab.model import Model, presets
from llmlab.model.hf import save_hf

WORDS = ("the cat dog sat ran on in to a park mat house tree bird sang quickly slowly under over big small red "
         "green river hill child ate apple bread walked saw found lost old new").split()
MC_TASK, PPL_TASK = "bench_mc", "bench_ppl"


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def build(directory: Path, args) -> tuple[Path, Path, list[dict], list[str]]:
    """A random LLaMA-style checkpoint with a byte-level BPE tokenizer, its HF export, MC questions and texts."""
    rng = random.Random(0)
    corpus = [sentence(rng, 12) for _ in range(400)]
    tokenizer = train_tokenizer(corpus, 512, special_tokens=(END_OF_TEXT,))
    eot = tokenizer.token_to_id(END_OF_TEXT)
    config = presets.llama("tiny", vocab_size=tokenizer.get_vocab_size(), d_model=args.d_model, n_layers=args.layers,
                           n_heads=args.d_model // 32, n_kv_heads=args.d_model // 32, d_ff=args.d_model * 4,
                           max_seq_len=args.context, eos_token_id=eot, bos_token_id=eot, init_std=0.05)
    torch.manual_seed(0)
    model = Model(config)
    model.tokenizer = tokenizer
    llmlab.save(model, directory / "model")
    hf_dir = save_hf(model, directory / "hf")
    questions = [{"question": sentence(rng, 10), "answer": rng.randrange(args.choices),
                  "choices": [sentence(rng, rng.randint(2, 8)) for _ in range(args.choices)]}
                 for _ in range(args.questions)]
    texts = [" ".join(sentence(rng, 12) for _ in range(args.text_sentences)) for _ in range(args.texts)]
    return directory / "model", hf_dir, questions, texts


def lm_eval_tasks(directory: Path, questions: list[dict], texts: list[str]) -> Path:
    """The two tasks in lm-eval's YAML."""
    tasks = directory / "lm_eval_tasks"
    tasks.mkdir()
    (tasks / "mc.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (tasks / "ppl.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

    def source(name):
        return f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(tasks / name))}\n"

    (tasks / f"{MC_TASK}.yaml").write_text(
        f"task: {MC_TASK}\n{source('mc.jsonl')}output_type: multiple_choice\ntest_split: test\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
        "doc_to_choice: choices\ndoc_to_target: answer\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (tasks / f"{PPL_TASK}.yaml").write_text(
        f"task: {PPL_TASK}\n{source('ppl.jsonl')}output_type: loglikelihood_rolling\ntest_split: test\n"
        "doc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--choices", type=int, default=4)
    parser.add_argument("--texts", type=int, default=40)
    parser.add_argument("--text-sentences", type=int, default=20, help="sentences per perplexity text")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        checkpoint, hf_dir, questions, texts = build(directory, args)
        manager = TaskManager(include_path=str(lm_eval_tasks(directory, questions, texts)))
        hf = HFLM(pretrained=str(hf_dir), device=args.device, dtype="float32", batch_size=args.batch_size,
                  max_length=args.context)
        ours = LocalModel(llmlab.load(checkpoint, device=args.device), batch_size=args.batch_size)
        (directory / "mc.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
        (directory / "ppl.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        mc = task_from_dict({"name": MC_TASK, "kind": "multiple_choice", "data": "mc.jsonl", "choices": "choices",
                             "template": "Question: {{question}}\nAnswer:", "target": "{{answer}}"}, "bench", directory)
        ppl = builtin_task(f"perplexity:{directory / 'ppl.jsonl'}")

        def run_lm_eval(task):
            return lm_eval.simple_evaluate(model=hf, tasks=[task], task_manager=manager, log_samples=True,
                                           bootstrap_iters=0, batch_size=args.batch_size)

        outputs = {("multiple choice", "llmlab"): evaluate(ours, [mc]),
                   ("multiple choice", "lm-eval hf"): run_lm_eval(MC_TASK),
                   ("perplexity", "llmlab"): evaluate(ours, [ppl]),
                   ("perplexity", "lm-eval hf"): run_lm_eval(PPL_TASK)}
        mc_requests, ppl_requests = lm_eval_requests(MC_TASK, manager), lm_eval_requests(PPL_TASK, manager)
        # the same requests (lm-eval's, as text) answered by each model
        pairs = [instance.args for instance in mc_requests]
        documents = [instance.args[0] for instance in ppl_requests]
        sides = {("multiple choice", "llmlab"): lambda: ours.loglikelihood(pairs),
                 ("multiple choice", "lm-eval hf"): lambda: hf.loglikelihood(mc_requests, disable_tqdm=True),
                 ("perplexity", "llmlab"): lambda: ours.loglikelihood_rolling(documents),
                 ("perplexity", "lm-eval hf"): lambda: hf.loglikelihood_rolling(ppl_requests, disable_tqdm=True)}
        times = {key: [] for key in sides}
        for round_ in range(args.rounds + 1):
            for key, run in sides.items():
                start = time.perf_counter()
                run()
                if round_:  # round 0 warms up
                    times[key].append(time.perf_counter() - start)

    requests = {"multiple choice": sum(len(q["choices"]) for q in questions), "perplexity": len(texts)}
    equal = {"multiple choice": mc_equal(outputs[("multiple choice", "llmlab")],
                                         outputs[("multiple choice", "lm-eval hf")]),
             "perplexity": ppl_equal(outputs[("perplexity", "llmlab")], outputs[("perplexity", "lm-eval hf")])}
    print("| task | requests | llmlab req/s | lm-eval hf req/s | ratio | results equal |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for kind in ("multiple choice", "perplexity"):
        ours_rate = requests[kind] / statistics.median(times[(kind, "llmlab")])
        theirs_rate = requests[kind] / statistics.median(times[(kind, "lm-eval hf")])
        print(f"| {kind} | {requests[kind]} | {ours_rate:.1f} | {theirs_rate:.1f} | {ours_rate / theirs_rate:.2f}x | "
              f"{equal[kind]} |")
    print(f"\n{args.questions} questions x {args.choices} choices, {args.texts} texts; llama d_model {args.d_model}, "
          f"{args.layers} layers, context {args.context}; batch size {args.batch_size}; {args.device}; "
          f"median of {args.rounds} rounds of answering the task's requests; results from whole evaluations.")


def lm_eval_requests(name: str, manager) -> list:
    """lm-eval's request instances of one task, built once, outside the timing."""
    task = manager.load(name)["tasks"][name]
    task.build_all_requests(rank=0, world_size=1)
    return [instance for instance in task.instances]


def mc_equal(ours: dict, theirs: dict) -> bool:
    """Identical acc and acc_norm, and every choice's log-likelihood within 1e-4."""
    metrics, reference = ours["results"][MC_TASK]["metrics"], theirs["results"][MC_TASK]
    same = all(metrics[name]["value"] == reference[f"{name},none"] for name in ("acc", "acc_norm"))
    expected = {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in theirs["samples"][MC_TASK]}
    return same and all(all(abs(a - b) <= 1e-4 for a, b in zip(s["loglikelihoods"], expected[s["doc_id"]], strict=True))
                        for s in ours["samples"][MC_TASK])


def ppl_equal(ours: dict, theirs: dict) -> bool:
    """Word and byte perplexity and bits per byte within 1e-5 relative."""
    metrics, reference = ours["results"]["perplexity"]["metrics"], theirs["results"][PPL_TASK]
    return all(abs(metrics[name]["value"] - reference[f"{name},none"]) <= 1e-5 * abs(reference[f"{name},none"])
               for name in ("word_perplexity", "byte_perplexity", "bits_per_byte"))


if __name__ == "__main__":
    main()
