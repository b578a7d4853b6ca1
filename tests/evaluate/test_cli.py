"""`llmlab evaluate` end to end: the files it writes (results with hashes of the model and data, every sample, the
report, the shots plot), resuming from its request cache, refusing a directory it did not write, the one-sentence
errors of bad input (exit 2), and `llmlab lm-eval` as lm-eval's own command line with the llmlab model."""

import hashlib
import json

import pytest
import torch

import llmlab
from llmlab.model import Model, presets
from tests.cli.test_generate_cli import save_tiny_model, word_tokenizer
from tests.cli_run import run_cli
from tests.evaluate.test_evaluator import QUESTIONS, mc_task_file


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("cli") / "model")


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_evaluate_writes_results_samples_report_and_the_shots_plot(checkpoint, tmp_path, capsys):
    task = mc_task_file(tmp_path / "task")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["evaluate", str(checkpoint), "--tasks", str(task), "--num-fewshot", "0,1",
                                    "--out", str(out), "--no-progress", "--batch-size", "4"], capsys)
    assert code == 0, stderr
    assert "| tiny_mc | 1 | acc |" in stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"tiny_mc (0-shot)", "tiny_mc (1-shot)"}
    for result in results["results"].values():
        assert set(result["metrics"]) == {"acc", "acc_norm", "acc_norm_bytes"}
        assert all(metric["n"] == len(QUESTIONS) and metric["stderr"] is not None
                   for metric in result["metrics"].values())
    assert results["model"]["sha256"]["model.safetensors"] == sha256(checkpoint / "model.safetensors")
    data = task.parent / "questions.jsonl"
    assert results["data_sha256"]["tiny_mc"] == {str(data.resolve()): sha256(data)}
    assert results["config"]["num_fewshot"] == [0, 1] and results["batch_size"] == 4
    assert results["config"]["tasks"][0]["template"] == "Question: {{question}}\nAnswer:"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * len(QUESTIONS)
    one_shot = [s for s in samples if s["task"] == "tiny_mc (1-shot)"]
    assert all(s["prompt"].count("Question:") == 2 and len(s["loglikelihoods"]) == len(s["choices"])
               for s in one_shot)
    report = (out / "report.md").read_text()
    assert report.splitlines()[0] == "| task | shots | metric | value | ± stderr | n |"
    assert len(report.splitlines()) == 2 + 2 * 3
    assert (out / "accuracy_vs_shots.png").read_bytes()[:4] == b"\x89PNG"


def test_a_rerun_resumes_from_the_request_cache(checkpoint, tmp_path, capsys):
    task = mc_task_file(tmp_path / "task")
    out = tmp_path / "out"
    arguments = ["evaluate", str(checkpoint), "--tasks", str(task), "--out", str(out), "--no-progress"]
    assert run_cli(arguments + ["--limit", "2"], capsys)[0] == 0
    answered = len((out / "requests.jsonl").read_text().splitlines())
    assert answered == sum(len(choices) for _, choices, _ in QUESTIONS[:2])
    assert run_cli(arguments, capsys)[0] == 0  # the rest only: each request is answered once
    assert len((out / "requests.jsonl").read_text().splitlines()) == sum(len(c) for _, c, _ in QUESTIONS)
    assert json.loads((out / "results.json").read_text())["results"]["tiny_mc"]["documents"] == len(QUESTIONS)


def test_a_directory_it_did_not_write_is_refused_without_overwrite(checkpoint, tmp_path, capsys):
    task = mc_task_file(tmp_path / "task")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    arguments = ["evaluate", str(checkpoint), "--tasks", str(task), "--out", str(out), "--no-progress"]
    code, _, stderr = run_cli(arguments, capsys)
    assert code == 2 and "--overwrite" in stderr and stderr.count("\n") == 1
    assert run_cli(arguments + ["--overwrite"], capsys)[0] == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "results.json").exists()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    model = Model(presets.bert("tiny", vocab_size=tokenizer.get_vocab_size()))
    model.tokenizer = tokenizer
    directory = tmp_path_factory.mktemp("encoder") / "bert"
    llmlab.save(model, directory)
    return directory


def test_bad_input_is_one_sentence_and_exit_2(checkpoint, encoder, tmp_path, capsys):
    task = mc_task_file(tmp_path / "task")
    unknown_field = tmp_path / "task" / "unknown.yaml"
    unknown_field.write_text(task.read_text() + "shots: 3\n")
    missing_variable = tmp_path / "task" / "missing.yaml"
    missing_variable.write_text(task.read_text().replace("{{question}}", "{{query}}"))
    missing_data = tmp_path / "task" / "nodata.yaml"
    missing_data.write_text(task.read_text().replace("questions.jsonl", "absent.jsonl"))
    generation = tmp_path / "task" / "generate.yaml"
    generation.write_text("name: gen\nkind: generation\ndata: questions.jsonl\ntemplate: \"{{question}}\"\n"
                          "target: \"{{label}}\"\n")
    cases = [
        ([str(checkpoint), "--tasks", "mmlu"], "there is no task 'mmlu'"),
        ([str(checkpoint), "--tasks", str(unknown_field)], "unknown field 'shots'"),
        ([str(checkpoint), "--tasks", str(missing_variable)], "uses 'query'"),
        ([str(checkpoint), "--tasks", str(missing_data)], "absent.jsonl"),
        ([str(encoder), "--tasks", str(generation)], "encoder-only model cannot generate"),
        ([str(tmp_path / "nothing"), "--tasks", str(task)], "neither a checkpoint directory nor a server URL"),
        ([str(checkpoint), "--tasks", str(task), "--limit", "0"], "--limit"),
        (["http://127.0.0.1:9", "--tasks", str(task)], "cannot be reached"),
    ]
    for arguments, words in cases:
        code, _, stderr = run_cli(["evaluate", *arguments, "--no-progress"], capsys)
        assert code == 2, (arguments, stderr)
        assert stderr.startswith("error: ") and words in stderr and stderr.count("\n") == 1, stderr


def test_lm_eval_runs_lm_eval_s_command_line_with_the_llmlab_model(checkpoint, tmp_path, monkeypatch, capsys):
    pytest.importorskip("lm_eval")
    from tests.serve.test_lm_eval import TASK, task_directory

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    tasks_dir = task_directory(tmp_path / "tasks")
    code, stdout, stderr = run_cli(["lm-eval", "run", "--model", "llmlab", "--model_args", f"pretrained={checkpoint}",
                                    "--tasks", TASK, "--include_path", str(tasks_dir), "--limit", "3",
                                    "--batch_size", "4", "--device", "cpu"], capsys)
    assert code == 0, stderr
    assert TASK in stdout and "acc_norm" in stdout


def test_lm_eval_falls_back_to_the_cpu_where_cuda_is_absent(checkpoint, tmp_path, monkeypatch, capsys):
    """lm-eval's command line asks for cuda:0 unless told otherwise; without CUDA the model warns, runs on the CPU."""
    pytest.importorskip("lm_eval")
    from tests.serve.test_lm_eval import TASK, task_directory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    tasks_dir = task_directory(tmp_path / "tasks")
    with pytest.warns(UserWarning, match="Device 'cuda:0' is not available"):
        code, stdout, stderr = run_cli(["lm-eval", "run", "--model", "llmlab", "--model_args",
                                        f"pretrained={checkpoint}", "--tasks", TASK, "--include_path",
                                        str(tasks_dir), "--limit", "2", "--batch_size", "4"], capsys)
    assert code == 0, stderr
    assert TASK in stdout and "acc_norm" in stdout
