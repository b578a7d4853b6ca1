"""llmlab plot: the curves of several runs on shared axes, drawn from their metrics.jsonl."""

import json
import sys

import pytest

from llmlab.cli.main import main
from llmlab.errors import ConfigError, DataError
from llmlab.train.plot import DPI, FIGURE_INCHES, plot_runs

image = pytest.importorskip("matplotlib.image")


def fake_run(directory, scale: float) -> list[dict]:
    """A run directory whose metrics.jsonl has the Trainer's records: steps, evaluations and a sample."""
    records = []
    for step in range(10, 110, 10):
        records.append({"step": step, "loss": scale * 5 / step ** 0.5, "lr": 1e-3 * min(1, step / 30),
                        "tokens_per_s": 1000 * scale + step, "grad_norm": 1.0})
        if step % 50 == 0:
            records.append({"step": step, "eval_loss": scale * 6 / step ** 0.5})
    records.append({"step": 100, "sample": "The end"})
    directory.mkdir()
    lines = [json.dumps(record) for record in records]
    (directory / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 11')  # the last line cut by a kill
    return records


def test_two_runs_are_drawn_from_their_metrics(tmp_path):
    runs = {"small": fake_run(tmp_path / "small", 1.0), "large": fake_run(tmp_path / "large", 0.8)}
    out = tmp_path / "curves.png"
    figure = plot_runs([tmp_path / "small", tmp_path / "large"], out)
    pixels = image.imread(out)
    assert pixels.shape[:2] == (FIGURE_INCHES[1] * DPI, FIGURE_INCHES[0] * DPI)
    assert [panel.get_title() for panel in figure.axes] == ["training loss", "held-out loss", "learning rate",
                                                             "tokens/s"]
    for panel, key in zip(figure.axes, ("loss", "eval_loss", "lr", "tokens_per_s")):
        lines = panel.get_lines()
        assert [line.get_label() for line in lines] == list(runs)
        assert len({line.get_color() for line in lines}) == 2
        for line, records in zip(lines, runs.values()):
            assert list(line.get_xdata()) == [record["step"] for record in records if key in record]
            assert list(line.get_ydata()) == [record[key] for record in records if key in record]
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()] == ["small", "large"]


def test_the_cli_writes_the_image_and_refuses_to_overwrite_it(tmp_path, capsys):
    fake_run(tmp_path / "run", 1.0)
    out = tmp_path / "curves.png"
    assert main(["plot", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert main(["plot", str(tmp_path / "run"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "run"), "--out", str(out), "--overwrite"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["curves.png", "run"]  # no temporary left


@pytest.mark.parametrize("contents", [None, "", '{"step": 3'])
def test_a_run_without_metrics_is_a_one_sentence_error(tmp_path, contents):
    (tmp_path / "run").mkdir()
    if contents is not None:
        (tmp_path / "run" / "metrics.jsonl").write_text(contents)
    with pytest.raises(DataError, match="metrics.jsonl"):
        plot_runs([tmp_path / "run"], tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch):
    fake_run(tmp_path / "run", 1.0)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ConfigError, match=r"pip install 'llmlab\[plot\]'"):
        plot_runs([tmp_path / "run"], tmp_path / "curves.png")
