"""Scaling-law fits: Chinchilla's parametric law (Hoffmann et al. 2022, approaches 1–3) and Kaplan et al. 2020's
power laws, from a table of (params, tokens, loss[, flops]) or from llmlab run directories, with bootstrap errors."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import math
import os
from pathlib import Path

import numpy as np

from llmlab.errors import ConfigError, DataError

LAWS = ("chinchilla", "kaplan")
MIN_POINTS = {"chinchilla": 5, "kaplan": 5}  # more rows than the law has free constants (5 and 4)
COLUMNS = ("params", "tokens", "loss")
HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, appendix D.2
# Hoffmann et al. 2022, appendix D.2: the grid of L-BFGS initialisations
CHINCHILLA_GRID = {"alpha": np.arange(0, 2.01, 0.5), "beta": np.arange(0, 2.01, 0.5), "e": np.arange(-1, 1.01, 0.5),
                   "a": np.arange(0, 25.1, 5), "b": np.arange(0, 25.1, 5)}
# Hoffmann et al. 2022, eq. (10) / appendix D.2: the approach-3 fit to their runs
CHINCHILLA_PUBLISHED = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
# Kaplan et al. 2020, eq. (1.1), (1.2) and Table 2's L(N, D) row (eq. 1.5); N counts non-embedding parameters
KAPLAN_PUBLISHED = {"alpha_N": 0.076, "N_c": 8.8e13, "alpha_D": 0.095, "D_c": 5.4e13,
                    "joint": {"alpha_N": 0.076, "alpha_D": 0.103, "N_c": 6.4e13, "D_c": 1.8e13}}
# Kaplan et al. 2020, Figure 14 (left) / eq. (1.7): N_opt = 1.3e9 · C_min^0.73, C_min in PF-days
KAPLAN_ALLOCATION = {"coefficient": 1.3e9, "exponent": 0.73}
PF_DAY = 1e15 * 24 * 3600  # FLOPs in a petaflop/s-day
FLOPS_PER_PARAMETER_TOKEN = 6  # C ≈ 6·N·D (Kaplan et al. 2020, §2.1)
BUDGET_TOLERANCE = 0.01  # rows whose flops lie within 1% share a compute budget


@dataclasses.dataclass
class Points:
    """Training runs as rows: parameters N, tokens D, final loss, and training FLOPs (nan where not known)."""

    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    flops: np.ndarray

    def __len__(self) -> int:
        return len(self.loss)

    def take(self, index: np.ndarray) -> "Points":
        """The rows at index (a bootstrap resample, a subset)."""
        return Points(self.params[index], self.tokens[index], self.loss[index], self.flops[index])


def _number(value, where: str, column: str) -> float:
    """A positive finite float from a table cell, or a DataError naming where."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {column} is {value!r}, not a number.") from None
    if not math.isfinite(number) or number <= 0:
        raise DataError(f"{where}: {column} is {value!r}, but it must be a positive finite number.")
    return number


def _rows_to_points(rows: list[tuple[str, dict]], source: str) -> Points:
    """Points from (where, record) pairs whose keys include params, tokens, loss and maybe flops."""
    columns = {name: [] for name in (*COLUMNS, "flops")}
    for where, record in rows:
        missing = [name for name in COLUMNS if record.get(name) in (None, "")]
        if missing:
            raise DataError(f"{where} has no {' or '.join(missing)}; each row needs params, tokens and loss "
                            f"(flops optional).")
        for name in COLUMNS:
            columns[name].append(_number(record[name], where, name))
        flops = record.get("flops")
        columns["flops"].append(math.nan if flops in (None, "") else _number(flops, where, "flops"))
    if not rows:
        raise DataError(f"{source} holds no rows.")
    return Points(*(np.array(columns[name], dtype=float) for name in (*COLUMNS, "flops")))


def read_table(path: str | os.PathLike) -> Points:
    """Rows of a CSV (with a header) or JSONL file with columns params, tokens, loss and optionally flops."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not a readable text file ({error.__class__.__name__}).") from None
    if path.suffix.lower() in (".jsonl", ".json") or text.lstrip().startswith("{"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path} line {number} is not a JSON object.") from None
            if not isinstance(record, dict):
                raise DataError(f"{path} line {number} is not a JSON object.")
            rows.append((f"{path} line {number}", record))
        return _rows_to_points(rows, str(path))
    reader = csv.DictReader(text.splitlines())
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise DataError(f"{path} has no {', '.join(missing)} column; its header must name params, tokens and loss "
                        f"(flops optional).")
    rows = [(f"{path} line {number}", {key.strip(): value for key, value in record.items() if key is not None})
            for number, record in enumerate(reader, 2)]
    return _rows_to_points(rows, str(path))


def read_run(run_dir: str | os.PathLike) -> dict:
    """One run directory's final held-out loss, parameters and tokens (flops taken as 6·N·D).

    Parameters come from final/llmlab.json's config (the model built on the meta device); the run keeps no copy
    of its recipe (batch size, sequence length, gradient accumulation, world size), so tokens per step are read
    back from metrics.jsonl as tokens_per_s × step_time_s, and tokens = that × the step of the last eval_loss.
    """
    import torch

    from llmlab.errors import CheckpointError
    from llmlab.model.checkpoint import read_llmlab_config
    from llmlab.model.transformer import Model
    from llmlab.train.plot import read_metrics

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    evaluations = [record for record in records if record.get("eval_loss") is not None]
    if not evaluations:
        raise DataError(f"{run_dir}/metrics.jsonl has no eval_loss; train with train.eval_every set to record the "
                        f"held-out loss.")
    final = evaluations[-1]
    per_step = [round(record["tokens_per_s"] * record["step_time_s"]) for record in records
                if record.get("tokens_per_s") and record.get("step_time_s")]
    if not per_step:
        raise DataError(f"{run_dir}/metrics.jsonl has no tokens_per_s and step_time_s, so its tokens per step "
                        f"cannot be recovered.")
    try:
        config, _ = read_llmlab_config(run_dir / "final")
    except CheckpointError:
        raise DataError(f"{run_dir}/final/llmlab.json is missing or unreadable; pass finished runs.") from None
    with torch.device("meta"):
        params = Model(config).num_parameters()
    tokens = final["step"] * int(np.median(per_step))
    loss = _number(final["eval_loss"], f"{run_dir}/metrics.jsonl step {final['step']}", "eval_loss")
    return {"params": params, "tokens": tokens, "loss": loss, "flops": FLOPS_PER_PARAMETER_TOKEN * params * tokens}


def read_points(sources: list[str | os.PathLike]) -> Points:
    """The rows of every source: CSV or JSONL tables, and llmlab run directories (one row each)."""
    tables, runs = [], []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            runs.append((str(path), read_run(path)))
        elif path.exists():
            tables.append(read_table(path))
        else:
            raise DataError(f"{path} does not exist; pass a CSV or JSONL table or llmlab run directories.")
    if runs:
        tables.append(_rows_to_points(runs, "the run directories"))
    return Points(*(np.concatenate([getattr(table, name) for table in tables])
                    for name in (*COLUMNS, "flops")))


def check_points(points: Points, law: str) -> None:
    """Raise DataError when there are too few rows (or too few distinct sizes) for the law."""
    if law not in LAWS:
        raise ConfigError(f"--law is {law!r}; choose one of {', '.join(LAWS)}.")
    if len(points) < MIN_POINTS[law]:
        raise DataError(f"the {law} law needs at least {MIN_POINTS[law]} rows, but the data has {len(points)}.")
    if len(np.unique(points.params)) < 2 or len(np.unique(points.tokens)) < 2:
        raise DataError(f"the {law} law needs at least two distinct params and two distinct tokens values.")


# ---- Chinchilla, approach 3 -------------------------------------------------------------------------------------

def chinchilla_loss(params, tokens, E, A, B, alpha, beta):
    """L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, eq. 2)."""
    return E + A / np.asarray(params, dtype=float) ** alpha + B / np.asarray(tokens, dtype=float) ** beta


def _huber_objective(x: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, delta: float):
    """Σ Huber_δ(LSE(a − α log N, b − β log D, e) − log L) and its gradient in x = (a, b, e, α, β)."""
    a, b, e, alpha, beta = x
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    exps = np.exp(terms - top)
    total = exps.sum(axis=0)
    residual = top + np.log(total) - log_loss
    small = np.abs(residual) <= delta
    value = np.where(small, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta)).sum()
    slope = np.clip(residual, -delta, delta)
    weights = slope * exps / total  # d value / d term, per row and term
    gradient = np.array([weights[0].sum(), weights[1].sum(), weights[2].sum(),
                         -(weights[0] * log_n).sum(), -(weights[1] * log_d).sum()])
    return value, gradient


def single_threaded_blas():
    """A context in which BLAS runs on one thread: scipy's L-BFGS-B on a few rows is 30× slower when OpenBLAS
    threads contend for busy cores."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _lbfgs(start, log_n, log_d, log_loss, delta):
    """One L-BFGS-B minimisation of the Huber objective from start; returns (value, x)."""
    from scipy.optimize import minimize

    result = minimize(_huber_objective, start, args=(log_n, log_d, log_loss, delta), jac=True, method="L-BFGS-B",
                      options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-12})
    return (result.fun, result.x) if np.all(np.isfinite(result.x)) else (math.inf, result.x)


def chinchilla_grid() -> list[np.ndarray]:
    """The initialisations (a, b, e, α, β) of Hoffmann et al.'s appendix D.2 grid: 6 · 6 · 5 · 5 · 5 = 4500."""
    grid = CHINCHILLA_GRID
    return [np.array(start, dtype=float) for start in
            itertools.product(grid["a"], grid["b"], grid["e"], grid["alpha"], grid["beta"])]


def fit_chinchilla(points: Points, delta: float = HUBER_DELTA, starts: list[np.ndarray] | None = None,
                   top: int | None = None) -> dict:
    """Chinchilla's approach 3: E, A, B, α, β minimising the Huber loss of log L by L-BFGS from each of a grid of
    starting points, keeping the best (Hoffmann et al. 2022, appendix D.2; starts default to that grid; with top,
    only the top starts of lowest initial objective are run)."""
    log_n, log_d, log_loss = np.log(points.params), np.log(points.tokens), np.log(points.loss)
    starts = chinchilla_grid() if starts is None else starts
    if top is not None and top < len(starts):
        initial = [_huber_objective(start, log_n, log_d, log_loss, delta)[0] for start in starts]
        starts = [starts[index] for index in np.argsort(initial, kind="stable")[:top]]
    best_value, best = math.inf, None
    with single_threaded_blas():
        for start in starts:
            value, x = _lbfgs(start, log_n, log_d, log_loss, delta)
            if value < best_value:
                best_value, best = value, x
    a, b, e, alpha, beta = best
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": float(alpha),
            "beta": float(beta)}


def _chinchilla_start(fitted: dict) -> np.ndarray:
    """The (a, b, e, α, β) of a fitted Chinchilla law, to start L-BFGS from."""
    return np.array([np.log(fitted["A"]), np.log(fitted["B"]), np.log(fitted["E"]), fitted["alpha"], fitted["beta"]])


# ---- Kaplan -------------------------------------------------------------------------------------------------------

def fit_power_law(x: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    """(α, x_c) of L = (x_c/x)^α by least squares in log space: log L = α log x_c − α log x."""
    slope, intercept = np.polyfit(np.log(x), np.log(loss), 1)
    alpha = -slope
    return float(alpha), float(np.exp(intercept / alpha)) if alpha != 0 else math.inf


def kaplan_joint_loss(params, tokens, alpha_N, alpha_D, N_c, D_c):
    """L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D (Kaplan et al. 2020, eq. 1.5)."""
    return ((N_c / np.asarray(params, dtype=float)) ** (alpha_N / alpha_D) + D_c / np.asarray(tokens, dtype=float)) \
        ** alpha_D


def _kaplan_log_residuals(x, log_n, log_d, log_loss):
    """log L(N, D) − log L for x = (α_N, α_D, log N_c, log D_c), by logaddexp."""
    alpha_n, alpha_d, log_nc, log_dc = x
    return alpha_d * np.logaddexp(alpha_n / alpha_d * (log_nc - log_n), log_dc - log_d) - log_loss


def _lowest(keys: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each distinct key, the lowest loss among its rows."""
    unique = np.unique(keys)
    return unique, np.array([loss[keys == key].min() for key in unique])


def fit_kaplan(points: Points, start: dict | None = None) -> dict:
    """Kaplan et al. 2020's laws fitted in log space: L(N) on each size's lowest loss, L(D) on each token count's
    lowest loss, and the joint L(N, D) by least squares on log L (started from the two one-variable fits)."""
    from scipy.optimize import least_squares

    alpha_n, n_c = fit_power_law(*_lowest(points.params, points.loss))
    alpha_d, d_c = fit_power_law(*_lowest(points.tokens, points.loss))
    if start is None:
        guesses = [(alpha_n, alpha_d, np.log(n_c), np.log(d_c)) if min(alpha_n, alpha_d) > 0 else None,
                   tuple(KAPLAN_PUBLISHED["joint"][key] if key.startswith("alpha") else np.log(
                       KAPLAN_PUBLISHED["joint"][key]) for key in ("alpha_N", "alpha_D", "N_c", "D_c"))]
    else:
        guesses = [(start["alpha_N"], start["alpha_D"], np.log(start["N_c"]), np.log(start["D_c"]))]
    log_n, log_d, log_loss = np.log(points.params), np.log(points.tokens), np.log(points.loss)
    best = None
    for guess in filter(None, guesses):
        result = least_squares(_kaplan_log_residuals, guess, args=(log_n, log_d, log_loss),
                               bounds=([1e-6, 1e-6, -np.inf, -np.inf], np.inf), method="trf", x_scale="jac",
                               xtol=1e-14, ftol=1e-14, gtol=1e-14, max_nfev=10000)
        if best is None or result.cost < best.cost:
            best = result
    joint_alpha_n, joint_alpha_d, log_nc, log_dc = best.x
    return {"alpha_N": alpha_n, "N_c": n_c, "alpha_D": alpha_d, "D_c": d_c,
            "joint": {"alpha_N": float(joint_alpha_n), "alpha_D": float(joint_alpha_d), "N_c": float(np.exp(log_nc)),
                      "D_c": float(np.exp(log_dc))}}


# ---- Chinchilla, approaches 1 and 2 --------------------------------------------------------------------------------

def compute_budgets(points: Points) -> list[np.ndarray]:
    """Indices of the rows sharing each compute budget (flops within 1% of the budget's smallest), smallest first."""
    known = np.flatnonzero(np.isfinite(points.flops))
    groups = []
    for index in known[np.argsort(points.flops[known], kind="stable")]:
        if groups and points.flops[index] <= points.flops[groups[-1][0]] * (1 + BUDGET_TOLERANCE):
            groups[-1].append(index)
        else:
            groups.append([index])
    return [np.array(group) for group in groups]


def _frontier_power_laws(budgets: list[dict]) -> dict:
    """N_opt = k_N·C^a and D_opt = k_D·C^b fitted in log space to per-budget optima."""
    flops = np.array([budget["flops"] for budget in budgets])
    a, log_kn = np.polyfit(np.log(flops), np.log([budget["params"] for budget in budgets]), 1)
    b, log_kd = np.polyfit(np.log(flops), np.log([budget["tokens"] for budget in budgets]), 1)
    return {"a": float(a), "b": float(b), "N_coefficient": float(np.exp(log_kn)), "D_coefficient": float(np.exp(log_kd)),
            "budgets": budgets}


def _parabola_vertex(x: np.ndarray, loss: np.ndarray) -> float | None:
    """The x minimising a parabola fitted to (x, loss), or None when it opens downwards or lies outside x's range."""
    curvature, slope, _ = np.polyfit(x, loss, 2)
    if curvature <= 0:
        return None
    vertex = -slope / (2 * curvature)
    return float(vertex) if x.min() <= vertex <= x.max() else None


def isoflop_approaches(points: Points) -> dict:
    """Chinchilla's approaches 1 (the lowest loss per compute budget) and 2 (the vertex of a parabola in log N, and
    one in log D, per IsoFLOP budget) with the power laws through their optima; a reason instead where the data
    does not allow it (rows need flops; approach 1 two sizes per budget, approach 2 three, both two budgets)."""
    first, second = [], []
    for group in compute_budgets(points):
        params, tokens, loss = points.params[group], points.tokens[group], points.loss[group]
        flops = float(np.exp(np.log(points.flops[group]).mean()))
        if len(np.unique(params)) >= 2:
            best = int(np.argmin(loss))
            first.append({"flops": flops, "params": float(params[best]), "tokens": float(tokens[best]),
                          "loss": float(loss[best])})
        if len(np.unique(params)) >= 3 and len(np.unique(tokens)) >= 3:
            log_n, log_d = _parabola_vertex(np.log(params), loss), _parabola_vertex(np.log(tokens), loss)
            if log_n is not None and log_d is not None:
                second.append({"flops": flops, "params": float(np.exp(log_n)), "tokens": float(np.exp(log_d))})
    return {"approach1": _frontier_power_laws(first) if len(first) >= 2 else
            "needs rows with flops and at least two sizes in each of at least two compute budgets",
            "approach2": _frontier_power_laws(second) if len(second) >= 2 else
            "needs rows with flops and at least two compute budgets whose three or more sizes bracket a minimum"}


# ---- fitting with errors --------------------------------------------------------------------------------------------

def predict(result: dict, params, tokens) -> np.ndarray:
    """A fit's predicted loss at (N, D): Chinchilla's law, or Kaplan's joint law."""
    constants = result["parameters"]
    if result["law"] == "chinchilla":
        return chinchilla_loss(params, tokens, **constants)
    return kaplan_joint_loss(params, tokens, **constants["joint"])


def _flatten(constants: dict, prefix: str = "") -> dict:
    """{"joint": {"alpha_N": x}} → {"joint.alpha_N": x}."""
    flat = {}
    for key, value in constants.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _unflatten(flat: dict) -> dict:
    """The inverse of _flatten."""
    nested = {}
    for key, value in flat.items():
        *outer, last = key.split(".")
        target = nested
        for part in outer:
            target = target.setdefault(part, {})
        target[last] = value
    return nested


def fit(points: Points, law: str = "chinchilla", bootstrap: int = 0, seed: int = 0, top: int | None = None) -> dict:
    """Fit the law to points; with bootstrap > 0, standard errors over that many resamples of the rows (a seeded
    numpy Generator; each resample is fitted from the full data's optimum). Returns what FIT.json holds."""
    try:
        import scipy  # noqa: F401
    except ImportError:
        raise ConfigError("scaling-law fits need the scipy package (pip install scipy).") from None
    check_points(points, law)
    if bootstrap < 0:
        raise ConfigError(f"--bootstrap is {bootstrap}; it must be 0 (no standard errors) or a positive count.")
    if law == "chinchilla":
        constants = fit_chinchilla(points, top=top)
        refit = lambda sample: fit_chinchilla(sample, starts=[_chinchilla_start(constants)])  # noqa: E731
    else:
        constants = fit_kaplan(points)
        refit = lambda sample: fit_kaplan(sample, start=constants["joint"])  # noqa: E731
    result = {"law": law, "parameters": constants}
    log_residuals = np.log(points.loss) - np.log(predict(result, points.params, points.tokens))
    result.update(rows=len(points), residuals=[float(value) for value in log_residuals],
                  rms_log_residual=float(np.sqrt(np.mean(log_residuals**2))))
    if bootstrap:
        generator = np.random.default_rng(seed)
        with single_threaded_blas():
            samples = [_flatten(refit(points.take(generator.integers(0, len(points), len(points)))))
                       for _ in range(bootstrap)]
        errors = {key: float(np.std([sample[key] for sample in samples], ddof=1)) for key in samples[0]}
        result["standard_errors"] = _unflatten(errors)
        result["bootstrap"] = {"samples": bootstrap, "seed": seed}
    if law == "chinchilla":
        result["huber_delta"] = HUBER_DELTA
        result.update(isoflop_approaches(points))
    return result


def write_fit(result: dict, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a fit as JSON to out, atomically; refuse to replace an existing file unless overwrite."""
    from llmlab.data.shards import atomic_path

    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another --out or pass --overwrite.")
    with atomic_path(out) as staging:
        staging.write_text(json.dumps(result, indent=2) + "\n")
    return out


def read_fit(path: str | os.PathLike) -> dict:
    """A fit written by write_fit (llmlab scaling fit --out)."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path} is not a readable JSON fit ({error.__class__.__name__}).") from None
    needed = {"chinchilla": CHINCHILLA_PUBLISHED, "kaplan": {"joint": None}}
    if not isinstance(result, dict) or result.get("law") not in needed or not isinstance(result.get("parameters"),
                                                                                          dict):
        raise DataError(f"{path} is not a fit written by llmlab scaling fit (no law and parameters).")
    constants = result["parameters"]
    keys = CHINCHILLA_PUBLISHED if result["law"] == "chinchilla" else KAPLAN_PUBLISHED["joint"]
    source = constants if result["law"] == "chinchilla" else constants.get("joint", {})
    if not isinstance(source, dict) or any(not isinstance(source.get(key), (int, float)) for key in keys):
        raise DataError(f"{path} lacks the {result['law']} constants {', '.join(keys)}.")
    return result


# ---- compute-optimal allocation -------------------------------------------------------------------------------------

def chinchilla_optimal(compute: float, E: float, A: float, B: float, alpha: float, beta: float) -> dict:
    """N_opt = G·(C/6)^(β/(α+β)), G = (αA/(βB))^(1/(α+β)), D_opt = (C/6)/N_opt (Hoffmann et al. 2022, eq. 4 with
    C = 6ND), and the loss the law predicts there."""
    g = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    params = g * (compute / FLOPS_PER_PARAMETER_TOKEN) ** (beta / (alpha + beta))
    tokens = compute / FLOPS_PER_PARAMETER_TOKEN / params
    return {"params": params, "tokens": tokens, "loss": float(chinchilla_loss(params, tokens, E, A, B, alpha, beta))}


def kaplan_joint_optimal(compute: float, alpha_N: float, alpha_D: float, N_c: float, D_c: float) -> dict:
    """The N minimising Kaplan's joint L(N, D) under C = 6ND: N_opt = (p·N_c^p·C/(6·D_c))^(1/(p+1)), p = α_N/α_D."""
    p = alpha_N / alpha_D
    params = (p * N_c**p * compute / (FLOPS_PER_PARAMETER_TOKEN * D_c)) ** (1 / (p + 1))
    tokens = compute / FLOPS_PER_PARAMETER_TOKEN / params
    return {"params": params, "tokens": tokens,
            "loss": float(kaplan_joint_loss(params, tokens, alpha_N, alpha_D, N_c, D_c))}


def kaplan_allocation(compute: float) -> dict:
    """What Kaplan et al. 2020 would train with C FLOPs: N = 1.3e9·(C/PF-day)^0.73 (their Figure 14, eq. 1.7,
    C_min in PF-days, N non-embedding) and D = C/(6N)."""
    params = KAPLAN_ALLOCATION["coefficient"] * (compute / PF_DAY) ** KAPLAN_ALLOCATION["exponent"]
    return {"params": params, "tokens": compute / FLOPS_PER_PARAMETER_TOKEN / params}


def compute_optimal(compute: float, result: dict | None = None) -> dict:
    """Compute-optimal params, tokens and loss for C FLOPs under a fit (Hoffmann et al.'s published approach-3
    constants by default), beside Kaplan et al.'s allocation."""
    if not (isinstance(compute, (int, float)) and math.isfinite(compute) and compute > 0):
        raise ConfigError(f"--compute is {compute!r}; it must be a positive number of FLOPs such as 5.76e23.")
    if result is None:
        result = {"law": "chinchilla", "parameters": CHINCHILLA_PUBLISHED, "published": True}
    constants = result["parameters"]
    optimum = chinchilla_optimal(compute, **{key: constants[key] for key in CHINCHILLA_PUBLISHED}) \
        if result["law"] == "chinchilla" else kaplan_joint_optimal(compute, **constants["joint"])
    return {"compute": compute, "law": result["law"], "published": bool(result.get("published")), **optimum,
            "tokens_per_param": optimum["tokens"] / optimum["params"], "kaplan": kaplan_allocation(compute)}
