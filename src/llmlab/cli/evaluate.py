"""`llmlab evaluate MODEL --tasks T1,T2|FILE.yaml [options]` and `llmlab lm-eval ARGS...`: evaluate a model.
Evaluate a checkpoint, or an OpenAI-compatible server given by its URL, on built-in tasks or task YAML files, and
print a table of the metrics with standard errors.

With --out DIR it writes DIR/results.json (metrics, standard errors, the configuration, model and data hashes),
DIR/samples.jsonl (every prompt, output, extracted answer and score), DIR/report.md and plots where they apply; the
answers to requests are kept in DIR/requests.jsonl as they come, so running the same command again resumes a killed
evaluation (or extends it to a larger --limit) without redoing finished requests.

Built-in tasks (data under --data-dir, nothing downloaded): gsm8k, gsm8k_cot, gsm8k_cot_zeroshot, gsm8k_cot_sc,
humaneval, perplexity:PATH.

`llmlab lm-eval ARGS...` runs lm-evaluation-harness's own command line with the model `llmlab` registered."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llmlab.cli.generate import NO_PREPACK_HELP


def _shots(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected shot counts such as 0 or 0,1,5, not {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected shot counts of 0 or more, not {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the evaluate and lm-eval subcommands."""
    parser = subparsers.add_parser("evaluate", help="evaluate a model on tasks (perplexity, multiple choice, "
                                   "GSM8K, HumanEval, YAML tasks)", description=__doc__.split("\n", 1)[1].strip(),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="an llmlab or Hugging Face checkpoint directory, or the URL "
                        "of an OpenAI-compatible server (http://HOST:PORT/v1)")
    parser.add_argument("--tasks", required=True, metavar="T1,T2",
                        help="comma-separated built-in task names, perplexity:PATH, or task YAML files")
    parser.add_argument("--num-fewshot", type=_shots, metavar="K",
                        help="demonstrations per prompt, overriding the tasks' (several, as 0,1,5, plot accuracy "
                             "against shots)")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N documents of each task")
    parser.add_argument("--batch-size", type=int, default=16, metavar="B",
                        help="a forward pass reads at most B x the model's context tokens (default: 16)")
    parser.add_argument("--data-dir", metavar="D", help="where built-in tasks and relative YAML data paths are found")
    parser.add_argument("--out", metavar="DIR", help="write results.json, samples.jsonl, report.md and plots here")
    parser.add_argument("--seed", type=int, default=0, help="seed of demonstration choice, sampling and "
                        "bootstraps (default: 0)")
    parser.add_argument("--samples", type=int, metavar="N",
                        help="samples per problem for humaneval (pass@k) and gsm8k_cot_sc (maj@N)")
    parser.add_argument("--device", default="cpu", help="device of a local model (default: cpu)")
    parser.add_argument("--no-prepack", action="store_true", help=NO_PREPACK_HELP)
    parser.add_argument("--model-name", metavar="NAME", help="the model's name on the server (default: its first)")
    parser.add_argument("--api-key", metavar="KEY", help="the server's API key (default: $OPENAI_API_KEY)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --out name a directory holding other files, and start afresh there")
    parser.set_defaults(handler=run_evaluate)

    parser_class, subparsers._parser_class = subparsers._parser_class, _PassThrough
    try:
        harness = subparsers.add_parser("lm-eval", help="lm-evaluation-harness's command line, with the model "
                                        "'llmlab' registered (llmlab lm-eval --help: its options)", add_help=False)
    finally:
        subparsers._parser_class = parser_class
    harness.set_defaults(handler=run_lm_eval)


class _PassThrough(argparse.ArgumentParser):
    """A subcommand parser that hands every argument on unparsed, options too (lm-eval parses them)."""

    def parse_known_args(self, args=None, namespace=None):
        """The parser's defaults, and every argument as `arguments`."""
        namespace = namespace if namespace is not None else argparse.Namespace()
        for key, value in self._defaults.items():
            setattr(namespace, key, value)
        namespace.arguments = list(args or [])
        return namespace, []


def _load_model(arguments):
    """The model to evaluate and what results.json records of it (with the SHA-256 of its files)."""
    from llmlab.evaluate.remote import RemoteModel, is_server_url

    if is_server_url(arguments.model):
        api_key = arguments.api_key or os.environ.get("OPENAI_API_KEY")
        return RemoteModel(arguments.model, arguments.model_name, api_key, arguments.batch_size), {}
    import llmlab
    from llmlab.errors import CheckpointError
    from llmlab.evaluate.evaluator import LocalModel, _digest, sha256_files
    from llmlab.infer.prepack import prepack

    if not Path(arguments.model).is_dir():
        raise CheckpointError(f"the model {arguments.model} is neither a checkpoint directory nor a server URL.")
    hashes = {name: digest for name, digest in sha256_files(arguments.model).items()
              if not name.startswith(".") and "/" not in name}
    model = llmlab.load(arguments.model, device=arguments.device)
    if not arguments.no_prepack:
        prepack(model)
    return LocalModel(model, batch_size=arguments.batch_size, identity=_digest(hashes)), hashes


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """The request cache of the output directory: resumed where an earlier evaluation left it; a directory holding
    anything else is refused unless overwrite (which also starts the cache afresh)."""
    from llmlab.errors import ConfigError
    from llmlab.evaluate.evaluator import CACHE_FILE

    cache = out / CACHE_FILE
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory.")
    if overwrite:
        cache.unlink(missing_ok=True)
    elif out.is_dir() and any(out.iterdir()) and not cache.exists():
        raise ConfigError(f"--out {out} already holds files that are not an llmlab evaluation's; choose another "
                          "directory or pass --overwrite.")
    out.mkdir(parents=True, exist_ok=True)
    return cache


def run_evaluate(arguments: argparse.Namespace) -> None:
    """Evaluate MODEL on the tasks, print the table, and write the outputs to --out."""
    from llmlab.evaluate.evaluator import evaluate, sha256_files
    from llmlab.evaluate.report import markdown_table, write_outputs
    from llmlab.evaluate.tasks import resolve_tasks
    from llmlab.errors import ConfigError

    if arguments.batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, not {arguments.batch_size}.")
    tasks = resolve_tasks(arguments.tasks, arguments.data_dir, arguments.samples)
    model, model_hashes = _load_model(arguments)
    cache = _prepare_out(Path(arguments.out), arguments.overwrite) if arguments.out else None
    evaluation = evaluate(model, tasks, num_fewshot=arguments.num_fewshot, limit=arguments.limit,
                          seed=arguments.seed, cache_file=cache, progress=not arguments.no_progress)
    print(markdown_table(evaluation["results"]), end="")
    if arguments.out:
        data = {}
        for task in tasks:
            for source in (task.data, task.fewshot.data):
                if isinstance(source, Path):
                    data.setdefault(task.name, {}).update({str(source / name) if source.is_dir() else str(source):
                                                           digest for name, digest in sha256_files(source).items()})
        extra = {"command": ["llmlab", "evaluate", *sys.argv[2:]] if sys.argv[1:2] == ["evaluate"] else None,
                 "model": {"path": arguments.model, "sha256": model_hashes}, "data_sha256": data,
                 "batch_size": arguments.batch_size}
        written = write_outputs(arguments.out, evaluation, extra)
        print(f"Wrote {', '.join(path.name for path in written)} to {arguments.out}.")


def run_lm_eval(arguments: argparse.Namespace) -> int:
    """lm-eval's command line on the arguments, with llmlab's model registered."""
    from llmlab.errors import ConfigError

    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        raise ConfigError("llmlab lm-eval needs lm-evaluation-harness (pip install lm-eval).") from None
    import llmlab.evaluate  # noqa: F401  registers the model "llmlab"

    saved = sys.argv
    sys.argv = ["lm-eval", *arguments.arguments]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
