"""`llmlab scaling fit DATA... --law chinchilla|kaplan`, `llmlab scaling optimal --compute C` and
`llmlab scaling sweep RECIPE.yaml --budgets C1,C2,... --out DIR`: scaling laws."""

from __future__ import annotations

import argparse

DEFAULT_STARTS = 100  # on the shipped synthetic set: the same fit as all 4500 starts, in 1.3 s instead of 108 s


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the scaling subcommand and its fit and optimal subcommands."""
    parser = subparsers.add_parser("scaling", help="fit scaling laws and find compute-optimal model sizes",
                                   description="Scaling laws (Kaplan et al. 2020, Hoffmann et al. 2022).")
    commands = parser.add_subparsers(dest="scaling_command", metavar="SUBCOMMAND", required=True)

    fit = commands.add_parser("fit", help="fit a scaling law to runs",
                              description="Fit Chinchilla's L(N, D) = E + A/N^α + B/D^β (approach 3, and approaches "
                                          "1 and 2 when rows carry flops) or Kaplan's power laws to a CSV or JSONL "
                                          "table with columns params, tokens, loss (flops optional), or to llmlab "
                                          "run directories.")
    fit.add_argument("data", nargs="+", metavar="DATA", help="a CSV or JSONL table, or llmlab run directories")
    fit.add_argument("--law", choices=("chinchilla", "kaplan"), default="chinchilla", help="the law to fit")
    fit.add_argument("--out", metavar="FIT.json", help="write the fit (constants, errors, residuals) here")
    fit.add_argument("--bootstrap", type=int, default=0, metavar="N",
                     help="standard errors over N resamples of the rows (default 0: none)")
    fit.add_argument("--seed", type=int, default=0, help="the bootstrap's random seed (default 0)")
    fit.add_argument("--starts", type=int, default=DEFAULT_STARTS, metavar="K",
                     help=f"run L-BFGS from the K initialisations of Hoffmann et al.'s 4500-point grid with the "
                          f"lowest initial loss (default {DEFAULT_STARTS}; 4500 runs them all, about 100x slower)")
    fit.add_argument("--plot", metavar="PNG", help="draw the fit (IsoFLOP curves, loss surface, frontiers) here")
    fit.add_argument("--overwrite", action="store_true", help="replace --out and --plot if they exist")
    fit.set_defaults(handler=run_fit)

    optimal = commands.add_parser("optimal", help="compute-optimal parameters and tokens for a FLOP budget",
                                  description="Compute-optimal parameters N and tokens D for C training FLOPs "
                                              "(C = 6ND) under a fit (Hoffmann et al.'s published approach-3 "
                                              "constants by default), beside Kaplan et al.'s allocation.")
    optimal.add_argument("--compute", type=float, required=True, metavar="C", help="training FLOPs, e.g. 5.76e23")
    optimal.add_argument("--fit", metavar="FIT.json", help="a fit written by llmlab scaling fit --out")
    optimal.set_defaults(handler=run_optimal)

    from llmlab.cli.pretrain import _OverridesAnywhere

    sweep = commands.add_parser("sweep", help="train an IsoFLOP grid of small models and fit Chinchilla's law",
                                description="For each compute budget C and model size N, pretrain the recipe's model "
                                            "at that size on D = C/(6N) tokens (each a resumable run directory "
                                            "under DIR/runs; a rerun skips finished runs and resumes the others), "
                                            "then fit Chinchilla's law (approaches 1-3) to the held-out losses and "
                                            "write DIR/points.csv, DIR/fit.json and DIR/fit.png.")
    sweep.__class__ = _OverridesAnywhere  # recipe overrides, as llmlab pretrain takes them
    sweep.add_argument("recipe", metavar="RECIPE.yaml", help="the recipe whose model is resized (see recipes/)")
    sweep.add_argument("--budgets", required=True, metavar="C1,C2,...", help="training FLOPs, e.g. 6e10,2e11,6e11")
    sweep.add_argument("--sizes", metavar="S1,S2,...",
                       help="model sizes (WIDTHxLAYERS names of llmlab.scaling.sweep.SIZES, e.g. 32x2,48x2) for every "
                            "budget (default: each budget's sizes with 2 to 200 tokens per parameter)")
    sweep.add_argument("--seeds", metavar="S1,S2,...", help="train every grid point once per seed (default: "
                                                            "the recipe's train.seed)")
    sweep.add_argument("--out", required=True, metavar="DIR", help="the sweep directory (new, or a sweep to resume)")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.add_argument("overrides", nargs="*", metavar="section.field=value", help="recipe fields to override")
    sweep.set_defaults(handler=run_sweep)


def _with_error(name: str, value: float, errors: dict | None) -> str:
    """`name = value ± error`, the error where there is one."""
    error = (errors or {}).get(name)
    return f"  {name:<8} = {value:.4g}" + (f" ± {error:.2g}" if error is not None else "")


def run_fit(arguments: argparse.Namespace) -> None:
    """Fit the law, print its constants (and approaches 1 and 2), and write --out and --plot."""
    from llmlab.errors import ConfigError
    from llmlab.scaling.fit import fit, read_points, write_fit

    if arguments.starts is not None and arguments.starts < 1:
        raise ConfigError(f"--starts is {arguments.starts}; it must be at least 1.")
    for option in ("out", "plot"):
        path = getattr(arguments, option)
        if path is not None and not arguments.overwrite:
            from pathlib import Path

            if Path(path).exists():
                raise ConfigError(f"{path} already exists; choose another --{option} or pass --overwrite.")
    points = read_points(arguments.data)
    result = fit(points, arguments.law, bootstrap=arguments.bootstrap, seed=arguments.seed, top=arguments.starts)
    constants, errors = result["parameters"], result.get("standard_errors")
    print(f"{arguments.law} fit to {result['rows']} rows (rms log residual {result['rms_log_residual']:.4f}):")
    if arguments.law == "chinchilla":
        for name in ("E", "A", "B", "alpha", "beta"):
            print(_with_error(name, constants[name], errors))
        for key in ("approach1", "approach2"):
            found = result[key]
            print(f"{key}: " + (f"N_opt ∝ C^{found['a']:.3f}, D_opt ∝ C^{found['b']:.3f} over "
                                f"{len(found['budgets'])} budgets" if isinstance(found, dict) else found))
    else:
        print("  L(N) = (N_c/N)^alpha_N, L(D) = (D_c/D)^alpha_D:")
        for name in ("alpha_N", "N_c", "alpha_D", "D_c"):
            print(_with_error(name, constants[name], errors))
        print("  joint L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D:")
        for name in ("alpha_N", "alpha_D", "N_c", "D_c"):
            print(_with_error(name, constants["joint"][name], (errors or {}).get("joint")))
    if arguments.out:
        write_fit(result, arguments.out, overwrite=arguments.overwrite)
        print(f"wrote {arguments.out}")
    if arguments.plot:
        from llmlab.scaling.plots import plot_fit

        plot_fit(points, result, arguments.plot, overwrite=arguments.overwrite)
        print(f"wrote {arguments.plot}")


def run_optimal(arguments: argparse.Namespace) -> None:
    """Print the compute-optimal N, D and loss for --compute, and Kaplan's choice."""
    from llmlab.scaling.fit import compute_optimal, read_fit

    result = read_fit(arguments.fit) if arguments.fit else None
    optimum = compute_optimal(arguments.compute, result)
    source = "Hoffmann et al. 2022's published approach-3 fit" if result is None else \
        f"the {optimum['law']} fit in {arguments.fit}"
    kaplan = optimum["kaplan"]
    print(f"compute C = {optimum['compute']:.3g} FLOPs, under {source}:")
    print(f"  parameters N = {optimum['params']:.3g}, tokens D = {optimum['tokens']:.3g} "
          f"({optimum['tokens_per_param']:.1f} tokens per parameter), predicted loss {optimum['loss']:.3f}")
    print(f"Kaplan et al. 2020 (N = 1.3e9 · (C/PF-day)^0.73, Figure 14): N = {kaplan['params']:.3g}, "
          f"D = {kaplan['tokens']:.3g} ({kaplan['tokens'] / kaplan['params']:.1f} tokens per parameter)")


def run_sweep(arguments: argparse.Namespace) -> None:
    """Train the grid, fit it, and print the fitted law and its compute-optimal exponents beside the papers'."""
    from llmlab.scaling.sweep import FIT_FILE, PLOT_FILE, POINTS_FILE, parse_budgets, parse_seeds, parse_sizes, sweep
    from llmlab.train.recipe import load_recipe

    budgets = parse_budgets(arguments.budgets)
    sizes = parse_sizes(arguments.sizes) if arguments.sizes is not None else None
    seeds = parse_seeds(arguments.seeds) if arguments.seeds is not None else None
    recipe = load_recipe(arguments.recipe, arguments.overrides)
    result = sweep(recipe, budgets, arguments.out, sizes, seeds, progress=not arguments.no_progress)
    constants = result["parameters"]
    print(f"chinchilla fit to {result['rows']} runs (rms log residual {result['rms_log_residual']:.4f}):")
    for name in ("E", "A", "B", "alpha", "beta"):
        print(_with_error(name, constants[name], None))
    exponent = constants["beta"] / (constants["alpha"] + constants["beta"])
    print(f"approach3: N_opt ∝ C^{exponent:.3f}, D_opt ∝ C^{1 - exponent:.3f}")
    for key in ("approach1", "approach2"):
        found = result[key]
        print(f"{key}: " + (f"N_opt ∝ C^{found['a']:.3f}, D_opt ∝ C^{found['b']:.3f} over "
                            f"{len(found['budgets'])} budgets" if isinstance(found, dict) else found))
    print("published: Hoffmann et al. 2022 N_opt ∝ C^0.50 (approaches 1, 2; 0.46 approach 3), "
          "Kaplan et al. 2020 N_opt ∝ C^0.73")
    for name in (POINTS_FILE, FIT_FILE, PLOT_FILE):
        print(f"wrote {arguments.out}/{name}")
