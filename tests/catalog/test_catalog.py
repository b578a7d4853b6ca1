"""The catalogue: every row of the surveys' tables, parameter counts against published figures, the computed columns
against hand-computed values, and `llmlab catalog`."""

import json

import pytest

from llmlab import catalog
from tests.cli_run import run_cli
from tests.model.test_presets import PUBLISHED

# the model column of each table in the survey (survey-models.md), in its order
SURVEY_ROWS = [
    "GPT-1", "BERT", "GPT-2", "T5", "mT5", "GPT-3", "GPT-Neo", "GPT-J", "LaMDA", "Jurassic-1", "MT-NLG",
    "ERNIE 3.0 Titan", "Gopher", "Chinchilla", "PaLM", "GPT-NeoX-20B", "OPT", "UL2", "BLOOM", "GLM-130B",
    "Switch Transformer", "ST-MoE", "Falcon", "LLaMA", "Llama 2", "PanGu-α", "CodeGen",
    "InstructGPT / GPT-3.5 (text-davinci-002/003)", "FLAN", "T0", "Flan-T5", "Flan-PaLM", "Flan-UL2", "BLOOMZ", "mT0",
    "OPT-IML", "ChatGPT", "Alpaca", "Vicuna, WizardLM, Orca, Dolly, Platypus", "ChatGLM", "GPT-4",
    "ERNIE Bot, Bard, 讯飞星火 (Spark), 通义千问 (Qwen)",
]
CLOSED = {"GPT-3", "LaMDA", "Jurassic-1", "MT-NLG", "ERNIE 3.0 Titan", "Gopher", "Chinchilla", "PaLM", "ST-MoE",
          "InstructGPT / GPT-3.5 (text-davinci-002/003)", "FLAN", "Flan-PaLM", "ChatGPT", "GPT-4",
          "ERNIE Bot, Bard, 讯飞星火 (Spark), 通义千问 (Qwen)"}  # of that last row only Qwen is open (a note)


@pytest.fixture(scope="module")
def rows():
    return catalog.rows()


def test_every_survey_row_is_in_the_catalogue():
    assert [entry.name for entry in catalog.ENTRIES] == SURVEY_ROWS
    for entry in catalog.ENTRIES:
        assert entry.organisation and entry.date and entry.paper and entry.kind in ("base", "instruction")
    assert {e.name for e in catalog.ENTRIES if not e.open_weights} == CLOSED


@pytest.mark.parametrize(("name", "size", "exact"), [
    ("GPT-2", "124M", 124_439_808), ("LLaMA", "7B", 6_738_415_616), ("BLOOM", "560M", 559_214_592),
    ("GPT-NeoX-20B", "20B", 20_554_567_680), ("Falcon", "7B", 6_921_720_704), ("Llama 2", "70B", 68_976_648_192),
])
def test_computed_parameters_equal_the_released_checkpoints(rows, name, size, exact):
    row = next(r for r in rows if r["model"] == name and r["size"] == size)
    assert row["parameters"] == exact


def test_computed_parameters_match_the_published_table_of_test_presets(rows):
    published = {(name, size): (count, tolerance) for name, size, count, _, tolerance in PUBLISHED}
    checked = 0
    for row in rows:
        if row["preset"] and not row.get("overrides"):
            name, size = row["preset"].split(":")
            key = ("t5_v1_1", size) if (name, size) not in published and name == "flan_t5" else (name, size)
            count, tolerance = published[key]
            assert abs(row["parameters"] - count) / count <= tolerance, row["model"]
            checked += 1
    assert checked > 60


def test_every_linked_size_is_within_two_percent_of_its_published_figure_or_says_why(rows):
    for row in rows:
        if row["preset"] and row["parameters_published"]:
            assert abs(row["deviation"]) <= catalog.TOLERANCE or row["reason"], (row["model"], row["size"])
            if row["reason"]:
                assert abs(row["deviation"]) <= 0.06, (row["model"], row["size"])  # a rounding, not another model


def test_published_shapes_built_with_overrides_give_the_papers_counts(rows):
    expected = {("GPT-1", "117M"): 117e6, ("MT-NLG", "530B"): 530e9, ("Jurassic-1", "Jumbo"): 178e9,
                ("LaMDA", "137B"): 137e9, ("GLM-130B", "130B"): 130e9, ("ChatGLM", "6B"): 6.2e9}
    for (name, size), count in expected.items():
        row = next(r for r in rows if r["model"] == name and r["size"] == size)
        assert abs(row["parameters"] / count - 1) <= 0.015, (name, row["parameters"])


def test_computed_columns_by_hand(rows):
    row = next(r for r in rows if r["model"] == "LLaMA" and r["size"] == "7B")
    n = 6_738_415_616
    assert row["compute_6nd"] == 6 * n * 1e12
    # 6N + 12·L·d·T per token with L = 32, d = 4096, T = 2048
    assert row["compute_with_attention"] == (6 * n + 12 * 32 * 4096 * 2048) * 1e12
    assert row["tokens_per_parameter"] == pytest.approx(1e12 / n)
    assert row["chinchilla_tokens"] == 20 * n
    assert row["weights_bytes_bf16"] == 2 * n
    assert row["kv_cache_bytes_per_token_bf16"] == 2 * 32 * 32 * 128 * 2  # k and v, layers, heads, width, bytes
    gqa = next(r for r in rows if r["model"] == "Llama 2" and r["size"] == "70B")
    assert gqa["kv_cache_bytes_per_token_bf16"] == 2 * 80 * 8 * 128 * 2  # eight key/value heads
    mqa = next(r for r in rows if r["model"] == "Falcon" and r["size"] == "7B")
    assert mqa["kv_cache_bytes_per_token_bf16"] == 2 * 32 * 1 * 64 * 2  # one key/value head
    switch = next(r for r in rows if r["model"] == "Switch Transformer" and r["size"] == "base-8")
    assert switch["active_parameters"] < switch["parameters"]  # one expert of eight runs per token




def test_cli_prints_a_markdown_table(capsys):
    code, out, _ = run_cli(["catalog", "--family", "bloom"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("| model | size |") and lines[1].startswith("|---|")
    assert sum(line.startswith("| BLOOM |") for line in lines) == 6
    assert sum(line.startswith("| BLOOMZ |") for line in lines) == 6
    assert "| 559M |" in out


def test_cli_json_open_only(capsys):
    code, out, _ = run_cli(["catalog", "--open", "--format", "json"], capsys)
    data = json.loads(out)
    assert code == 0 and data and all(row["open_weights"] for row in data)
    names = {row["model"] for row in data}
    assert "LLaMA" in names and not names & CLOSED


def test_cli_family_matches_a_preset_name(capsys):
    code, out, _ = run_cli(["catalog", "--family", "llama", "--format", "json"], capsys)
    names = {row["model"] for row in json.loads(out)}
    assert code == 0 and {"LLaMA", "Llama 2", "Alpaca"} <= names and "OPT" not in names


def test_cli_unknown_family_is_one_sentence(capsys):
    code, _, err = run_cli(["catalog", "--family", "nosuch"], capsys)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1 and "'nosuch'" in err
