"""Scaling-law fits against data drawn from known laws, closed forms and the papers' published numbers."""

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from llmlab.cli.main import main
from llmlab.scaling import fit as scaling

TRUE = {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28}


def chinchilla_rows(sizes: int, noise: float = 0.01, seed: int = 0) -> scaling.Points:
    """A sizes × sizes grid of N ∈ [1e7, 1e10], D ∈ [1e8, 1e12] with losses of TRUE times lognormal noise."""
    n, d = (grid.ravel() for grid in np.meshgrid(np.geomspace(1e7, 1e10, sizes), np.geomspace(1e8, 1e12, sizes)))
    clean = TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]  # written out: the reference
    loss = clean * np.exp(np.random.default_rng(seed).normal(0, noise, n.size))
    return scaling.Points(n, d, loss, np.full(n.size, np.nan))


def write_csv(path, rows, header="params,tokens,loss"):
    path.write_text(header + "\n" + "\n".join(",".join(map(str, row)) for row in rows) + "\n")
    return path


def test_the_initialisation_grid_is_hoffmanns():
    starts = np.array(scaling.chinchilla_grid())
    assert starts.shape == (6 * 6 * 5 * 5 * 5, 5)  # (a, b, e, α, β)
    for column, values in zip(starts.T, ([0, 5, 10, 15, 20, 25],) * 2 + ([-1, -0.5, 0, 0.5, 1],)
                              + ([0, 0.5, 1, 1.5, 2],) * 2):
        np.testing.assert_allclose(np.unique(column), values)


def test_chinchilla_fit_recovers_known_coefficients():
    found = scaling.fit_chinchilla(chinchilla_rows(10), top=30)
    assert found["alpha"] == pytest.approx(TRUE["alpha"], rel=0.04)
    assert found["beta"] == pytest.approx(TRUE["beta"], rel=0.04)
    assert found["E"] == pytest.approx(TRUE["E"], rel=0.02)


def test_chinchilla_fit_is_exact_without_noise():
    found = scaling.fit_chinchilla(chinchilla_rows(6, noise=0), top=30)
    for name, value in TRUE.items():
        assert found[name] == pytest.approx(value, rel=1e-3), name


def test_huber_objective_gradient_matches_finite_differences():
    points = chinchilla_rows(4)
    arguments = (np.log(points.params), np.log(points.tokens), np.log(points.loss), 0.05)
    x = np.array([6.0, 6.2, 0.5, 0.36, 0.27])
    _, gradient = scaling._huber_objective(x, *arguments)
    step = 1e-6
    numeric = [(scaling._huber_objective(x + step * unit, *arguments)[0]
                - scaling._huber_objective(x - step * unit, *arguments)[0]) / (2 * step) for unit in np.eye(5)]
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-8)


def test_kaplan_joint_fit_recovers_known_constants():
    true = scaling.KAPLAN_PUBLISHED["joint"]
    n, d = (grid.ravel() for grid in np.meshgrid(np.geomspace(1e6, 1e10, 9), np.geomspace(1e8, 1e12, 9)))
    clean = ((true["N_c"] / n) ** (true["alpha_N"] / true["alpha_D"]) + true["D_c"] / d) ** true["alpha_D"]
    loss = clean * np.exp(np.random.default_rng(1).normal(0, 0.01, n.size))
    found = scaling.fit_kaplan(scaling.Points(n, d, loss, np.full(n.size, np.nan)))["joint"]
    assert found["alpha_N"] == pytest.approx(true["alpha_N"], rel=0.05)
    assert found["alpha_D"] == pytest.approx(true["alpha_D"], rel=0.05)
    assert math.log(found["N_c"]) == pytest.approx(math.log(true["N_c"]), rel=0.03)
    assert math.log(found["D_c"]) == pytest.approx(math.log(true["D_c"]), rel=0.03)


def test_kaplan_one_variable_laws_recover_published_constants():
    n = np.geomspace(1e6, 1e10, 20)
    noise = np.exp(np.random.default_rng(2).normal(0, 0.01, n.size))
    alpha, n_c = scaling.fit_power_law(n, (8.8e13 / n) ** 0.076 * noise)  # Kaplan et al. 2020, eq. 1.1
    assert alpha == pytest.approx(0.076, rel=0.05)
    assert math.log(n_c) == pytest.approx(math.log(8.8e13), rel=0.03)


def test_compute_optimal_matches_closed_form_and_numerical_minimum():
    constants = {"E": 1.8, "A": 520.0, "B": 1900.0, "alpha": 0.35, "beta": 0.37}
    for compute in (1e19, 5.76e23, 1e26):
        found = scaling.chinchilla_optimal(compute, **constants)
        alpha, beta, a, b = constants["alpha"], constants["beta"], constants["A"], constants["B"]
        g = (alpha * a / (beta * b)) ** (1 / (alpha + beta))
        assert found["params"] == pytest.approx(g * (compute / 6) ** (beta / (alpha + beta)), rel=1e-12)
        assert found["tokens"] == pytest.approx(compute / 6 / found["params"], rel=1e-12)
        along = lambda log_n: 1.8 + a / math.exp(log_n) ** alpha + b / (compute / 6 / math.exp(log_n)) ** beta  # noqa
        numeric = minimize_scalar(along, bounds=(5, 40), method="bounded", options={"xatol": 1e-10})
        assert math.log(found["params"]) == pytest.approx(numeric.x, abs=1e-4)
        assert found["loss"] == pytest.approx(numeric.fun, rel=1e-9)


def test_kaplan_joint_optimum_is_the_numerical_minimum():
    constants = scaling.KAPLAN_PUBLISHED["joint"]
    compute = 1e22
    found = scaling.kaplan_joint_optimal(compute, **constants)
    along = lambda log_n: scaling.kaplan_joint_loss(math.exp(log_n), compute / 6 / math.exp(log_n), **constants)  # noqa
    numeric = minimize_scalar(along, bounds=(5, 40), method="bounded", options={"xatol": 1e-10})
    assert math.log(found["params"]) == pytest.approx(numeric.x, abs=1e-4)


def test_published_chinchilla_fit_at_gophers_budget():
    # Hoffmann et al. 2022: Gopher's budget is 5.76e23 FLOPs; their approach-3 constants (eq. 10) give, by the
    # closed form, 32.2B parameters and 2.98T tokens; approach 1 (their Table 3) gives 67B and 1.5T, and
    # approach 3 is said to favour smaller models: a = 0.46, b = 0.54 (their Table 2), against 0.50/0.50.
    optimum = scaling.compute_optimal(5.76e23)
    assert optimum["params"] == pytest.approx(3.22e10, rel=0.01)
    assert optimum["tokens"] == pytest.approx(2.98e12, rel=0.01)
    assert optimum["params"] < 67e9 and optimum["tokens"] > 1.5e12
    larger = scaling.compute_optimal(5.76e25)
    a = math.log(larger["params"] / optimum["params"]) / math.log(100)
    b = math.log(larger["tokens"] / optimum["tokens"]) / math.log(100)
    assert a == pytest.approx(0.46, abs=0.01) and b == pytest.approx(0.54, abs=0.01)


def test_kaplan_allocation_is_their_figure_14():
    one_pf_day = 1e15 * 86400
    assert scaling.kaplan_allocation(one_pf_day)["params"] == pytest.approx(1.3e9)
    ten = scaling.kaplan_allocation(10 * one_pf_day)
    assert ten["params"] == pytest.approx(1.3e9 * 10**0.73)
    assert ten["tokens"] == pytest.approx(10 * one_pf_day / 6 / ten["params"])


def test_bootstrap_errors_shrink_with_more_data_and_follow_the_seed():
    few = scaling.fit(chinchilla_rows(5), bootstrap=30, seed=3, top=5)
    many = scaling.fit(chinchilla_rows(12), bootstrap=30, seed=3, top=5)
    for name in ("E", "alpha", "beta"):
        assert many["standard_errors"][name] < few["standard_errors"][name], name
    again = scaling.fit(chinchilla_rows(5), bootstrap=30, seed=3, top=5)
    assert again["standard_errors"] == few["standard_errors"]


def isoflop_rows(sizes_per_budget: int = 15) -> scaling.Points:
    """Noiseless IsoFLOP profiles of TRUE: per budget C, sizes bracketing the optimum, D = C/(6N)."""
    rows = []
    for compute in np.geomspace(1e18, 1e22, 5):
        centre = scaling.chinchilla_optimal(compute, **TRUE)["params"]
        for n in np.geomspace(centre / 10, centre * 10, sizes_per_budget):
            d = compute / 6 / n
            rows.append((n, d, TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"], compute))
    return scaling.Points(*map(np.array, zip(*rows)))


def test_approaches_1_and_2_find_the_frontier_exponent():
    found = scaling.isoflop_approaches(isoflop_rows())
    expected = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])  # Hoffmann et al. 2022, eq. 4
    assert found["approach1"]["a"] == pytest.approx(expected, abs=0.03)
    assert found["approach2"]["a"] == pytest.approx(expected, abs=0.02)
    assert found["approach2"]["b"] == pytest.approx(1 - expected, abs=0.02)
    assert len(found["approach1"]["budgets"]) == 5


def test_approaches_need_flops():
    found = scaling.isoflop_approaches(chinchilla_rows(5))
    assert isinstance(found["approach1"], str) and isinstance(found["approach2"], str)


def test_cli_fit_writes_the_fit_and_plot_and_optimal_reads_it(tmp_path, capsys):
    rows = isoflop_rows(5)
    data = write_csv(tmp_path / "runs.csv", zip(rows.params, rows.tokens, rows.flops, rows.loss),
                     "params,tokens,flops,loss")
    out, plot = tmp_path / "fit.json", tmp_path / "fit.png"
    assert main(["scaling", "fit", str(data), "--starts", "20", "--bootstrap", "5", "--out", str(out),
                 "--plot", str(plot)]) == 0
    result = json.loads(out.read_text())
    assert set(TRUE) <= set(result["parameters"]) and set(TRUE) <= set(result["standard_errors"])
    assert len(result["residuals"]) == len(rows) and isinstance(result["approach2"], dict)
    assert result["parameters"]["alpha"] == pytest.approx(TRUE["alpha"], rel=0.02)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["scaling", "fit", str(data), "--starts", "2", "--out", str(out)]) == 2  # no --overwrite
    capsys.readouterr()
    assert main(["scaling", "optimal", "--compute", "1e21", "--fit", str(out)]) == 0
    printed = capsys.readouterr().out
    expected = scaling.chinchilla_optimal(1e21, **{name: result["parameters"][name] for name in TRUE})
    assert f"{expected['params']:.3g}" in printed and "Kaplan" in printed


def test_cli_kaplan_fit(tmp_path):
    n, d = (grid.ravel() for grid in np.meshgrid(np.geomspace(1e6, 1e9, 4), np.geomspace(1e8, 1e11, 4)))
    loss = scaling.kaplan_joint_loss(n, d, **scaling.KAPLAN_PUBLISHED["joint"])
    data = tmp_path / "runs.jsonl"
    data.write_text("".join(json.dumps({"params": a, "tokens": b, "loss": c}) + "\n" for a, b, c in zip(n, d, loss)))
    assert main(["scaling", "fit", str(data), "--law", "kaplan", "--out", str(tmp_path / "k.json")]) == 0
    joint = json.loads((tmp_path / "k.json").read_text())["parameters"]["joint"]
    assert joint["alpha_D"] == pytest.approx(0.103, rel=1e-3)


def test_cli_optimal_defaults_to_the_published_fit(capsys):
    assert main(["scaling", "optimal", "--compute", "5.76e23"]) == 0
    printed = capsys.readouterr().out
    assert "3.22e+10" in printed and "2.98e+12" in printed


def test_run_directories_give_parameters_and_tokens(tmp_path):
    import torch

    from llmlab.model import Model, ModelConfig
    from llmlab.model.checkpoint import save_llmlab

    losses = []
    for index, d_model in enumerate((32, 64, 48, 96, 80)):
        run = tmp_path / f"run{index}"
        run.mkdir()
        model = Model(ModelConfig(vocab_size=61, d_model=d_model, n_layers=2, n_heads=4, d_ff=2 * d_model,
                                  max_seq_len=32))
        save_llmlab(model, run / "final", metadata={"step": 40})
        batch, seq_len, step_time = 4, 32, 0.37
        records = [{"step": step, "loss": 3.0, "tokens_per_s": batch * seq_len / step_time, "step_time_s": step_time}
                   for step in (10, 20, 30, 40)] + [{"step": 30, "eval_loss": 3.5 - index / 10}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
        losses.append((sum(p.numel() for p in model.parameters()), 30 * batch * seq_len, 3.5 - index / 10))
    points = scaling.read_points([tmp_path / f"run{index}" for index in range(5)])
    np.testing.assert_array_equal(points.params, [row[0] for row in losses])
    np.testing.assert_array_equal(points.tokens, [row[1] for row in losses])
    np.testing.assert_allclose(points.loss, [row[2] for row in losses])
    np.testing.assert_allclose(points.flops, 6 * points.params * points.tokens)
    del torch


def test_run_directory_without_held_out_loss(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n")
    assert main(["scaling", "fit", str(tmp_path)]) == 2
    assert "eval_loss" in capsys.readouterr().err


@pytest.mark.parametrize("content, name, said", [
    ("params,tokens\n1e7,1e9\n", "runs.csv", "no loss column"),
    ("params,tokens,loss\n1e7,1e9,3.0\n-1e7,1e9,3.0\n", "runs.csv", "positive"),
    ("params,tokens,loss\n1e7,1e9,3.0\n1e7,1e9,abc\n", "runs.csv", "not a number"),
    ("".join(f"{10 ** (7 + i)},{10 ** (9 + i)},{3 - i / 10}\n" for i in range(4)), "runs.csv", "no params"),
    ("params,tokens,loss\n" + "".join(f"{10 ** (7 + i)},{10 ** (9 + i)},{3 - i / 10}\n" for i in range(4)),
     "runs.csv", "at least 5 rows"),
    ('{"params": 1e7, "tokens": 1e9}\n', "runs.jsonl", "has no loss"),
    ('{"params": 1e7, "tokens": 1e9, "loss": 3}\nnot json\n', "runs.jsonl", "not a JSON object"),
    (b"\xff\xfe\x00binary", "runs.csv", "not a readable text file"),
])
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys, content, name, said):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["scaling", "fit", str(path)]) == 2
    error = capsys.readouterr().err
    assert said in error and error.startswith("error: ") and error.count("\n") == 1 and "Traceback" not in error


@pytest.mark.parametrize("arguments, said", [
    (["scaling", "fit", "/nonexistent/runs.csv"], "does not exist"),
    (["scaling", "optimal", "--compute", "-5"], "positive"),
    (["scaling", "optimal", "--compute", "1e21", "--fit", "/nonexistent/fit.json"], "not a readable JSON fit"),
])
def test_bad_arguments_exit_2(capsys, arguments, said):
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert said in error and error.count("\n") == 1


def test_a_fit_file_without_constants_is_refused(tmp_path, capsys):
    bad = tmp_path / "fit.json"
    bad.write_text(json.dumps({"law": "chinchilla", "parameters": {"E": 1.7}}))
    assert main(["scaling", "optimal", "--compute", "1e21", "--fit", str(bad)]) == 2
    assert "lacks the chinchilla constants" in capsys.readouterr().err
