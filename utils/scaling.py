"""Neural scaling laws: Kaplan et al. (2020), Hoffmann et al. (2022, "Chinchilla") and its replication by
Besiroglu et al. (2024), in both directions (budget -> model size, tokens and loss; model size and tokens -> FLOPs
and loss), plus the tools of a small-scale IsoFLOP sweep: planning it, reading each budget's optimum off a parabola
(Hoffmann et al.'s approach 2), and fitting the parametric law (their approach 3) from many starts, with bootstrap
uncertainty.

Written for book chapters 2 and 3 (notebook 02; chapter 9 uses it to decide how long to train). Losses are in
nats per token; N counts parameters, D training tokens, C training FLOPs with C = 6ND. Needs numpy, scipy and
threadpoolctl (a dependency of scikit-learn).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

PETAFLOP_DAY = 1e15 * 24 * 3600  # FLOPs in one PF-day, Kaplan et al.'s compute unit

# Kaplan et al. (2020), "Scaling Laws for Neural Language Models", section 1.2 and table 5 (non-embedding N,
# WebText2 tokenized with GPT-2's BPE).
KAPLAN_N_C, KAPLAN_ALPHA_N = 8.8e13, 0.076  # L(N) = (N_c / N)^alpha_N
KAPLAN_D_C, KAPLAN_ALPHA_D = 5.4e13, 0.095  # L(D) = (D_c / D)^alpha_D
KAPLAN_C_C, KAPLAN_ALPHA_C = 3.1e8, 0.050  # L(C_min) = (C_c / C_min)^alpha_C, C in PF-days


@dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta. Defaults: Hoffmann et al. (2022), approach 3, equation 10
    (E = 1.69, A = 406.4, B = 410.7, alpha = 0.34, beta = 0.28), fitted on MassiveText."""

    E: float = 1.69
    A: float = 406.4
    B: float = 410.7
    alpha: float = 0.34
    beta: float = 0.28

    def loss(self, parameters: float | np.ndarray, tokens: float | np.ndarray) -> float | np.ndarray:
        """Predicted loss (nats/token) of a model with `parameters` trained on `tokens`."""
        return self.E + self.A / np.power(parameters, self.alpha) + self.B / np.power(tokens, self.beta)

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        """(N, D) minimising the loss under the budget 6ND = `flops` (Hoffmann et al., 2022, equation 4):
        N = G (C/6)^a, D = (C/6)^b / G with a = beta/(alpha+beta), b = alpha/(alpha+beta),
        G = (alpha A / (beta B))^(1/(alpha+beta))."""
        if flops <= 0:
            raise ValueError(f"flops must be positive, got {flops}")
        total = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / total)
        return g * (flops / 6) ** (self.beta / total), (flops / 6) ** (self.alpha / total) / g


CHINCHILLA = ChinchillaLaw()
# Besiroglu, Erdil, Barnett and You (2024), "Chinchilla Scaling: A replication attempt" (arXiv:2404.10102): approach 3
# re-fitted to the runs they reconstructed from Hoffmann et al.'s figure 4 (standard errors 0.03, 124.58, 1293.23, 0.02,
# 0.02). Its optimum puts about 20 tokens on each parameter, as Hoffmann et al.'s approaches 1 and 2 do.
BESIROGLU = ChinchillaLaw(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
CHINCHILLA_TOKENS_PER_PARAMETER = 20  # Hoffmann et al. (2022), table 3: ~20 tokens per parameter at the optimum
KAPLAN_N_OPT, KAPLAN_N_OPT_EXPONENT = 1.3e9, 0.73  # Kaplan et al. (2020), section 6.1: N = 1.3e9 C_min^0.73, PF-days


def budget_plan(flops: float, law: ChinchillaLaw = CHINCHILLA) -> dict[str, float]:
    """Budget -> compute-optimal parameters, tokens, tokens per parameter and predicted loss."""
    n, d = law.compute_optimal(flops)
    return {"flops": flops, "parameters": n, "tokens": d, "tokens_per_parameter": d / n, "loss": float(law.loss(n, d))}


def run_plan(parameters: float, tokens: float, law: ChinchillaLaw = CHINCHILLA) -> dict[str, float]:
    """(N, D) -> training FLOPs (6ND), predicted loss, and how the tokens compare with the 20-per-parameter rule."""
    return {
        "flops": 6.0 * parameters * tokens,
        "loss": float(law.loss(parameters, tokens)),
        "tokens_per_parameter": tokens / parameters,
        "rule_tokens": CHINCHILLA_TOKENS_PER_PARAMETER * parameters,
    }


def kaplan_loss(parameters: float | None = None, tokens: float | None = None) -> float:
    """Kaplan et al. (2020): L(N) if only `parameters` (non-embedding) is given, L(D) if only `tokens`, and the
    joint L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D (their equation 1.5) if both."""
    if parameters is None and tokens is None:
        raise ValueError("give parameters, tokens or both")
    if tokens is None:
        return (KAPLAN_N_C / parameters) ** KAPLAN_ALPHA_N
    if parameters is None:
        return (KAPLAN_D_C / tokens) ** KAPLAN_ALPHA_D
    return ((KAPLAN_N_C / parameters) ** (KAPLAN_ALPHA_N / KAPLAN_ALPHA_D) + KAPLAN_D_C / tokens) ** KAPLAN_ALPHA_D


def kaplan_compute_frontier(flops: float) -> float:
    """Kaplan et al. (2020) loss on the compute-efficient frontier, L(C_min) = (C_c / C_min)^alpha_C."""
    return (KAPLAN_C_C / (flops / PETAFLOP_DAY)) ** KAPLAN_ALPHA_C


def kaplan_optimal_parameters(flops: float | np.ndarray) -> float | np.ndarray:
    """Kaplan et al. (2020, section 6.1, figure 14): the compute-efficient model size N = 1.3e9 x C^0.73 with C in
    PF-days. N counts non-embedding parameters, as everywhere in that paper."""
    return KAPLAN_N_OPT * np.power(np.asarray(flops, dtype=float) / PETAFLOP_DAY, KAPLAN_N_OPT_EXPONENT)


def fixed_ratio_optimal_parameters(
    flops: float | np.ndarray, tokens_per_parameter: float = CHINCHILLA_TOKENS_PER_PARAMETER
) -> float | np.ndarray:
    """The model size that puts `tokens_per_parameter` tokens on each parameter within C = 6ND: N = sqrt(C / 6r).
    With r = 20 this is Hoffmann et al.'s approaches 1 and 2 (N_opt ~ C^0.50 and C^0.49, their table 2)."""
    return np.sqrt(np.asarray(flops, dtype=float) / (6 * tokens_per_parameter))


def fit_power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares fit of y = k x^p in log-log space; returns (k, p)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("need at least two points, all positive")
    p, log_k = np.polyfit(np.log(x), np.log(y), 1)
    return float(np.exp(log_k)), float(p)


def loss_curve_doubling_gain(losses: np.ndarray, window: int | None = None) -> dict[str, np.ndarray | float | int]:
    """Read a training curve the way chapter 9 decides when to stop: smooth the per-step losses with a moving mean
    of `window` steps (default a tenth of the run, at least 2), fit loss ~ k t^s over the second half of the
    smoothed curve (t = the last step in each window), and estimate what doubling the steps would buy: if the loss
    falls as t^s, doubling t multiplies it by 2^s, a gain of loss x (1 - 2^s) nats. Returns the smoothed curve,
    the window, the slope s and that gain."""
    losses = np.asarray(losses, dtype=float)
    window = window or max(len(losses) // 10, 2)
    if len(losses) < 2 * window + 2:
        raise ValueError(f"need at least {2 * window + 2} losses for a window of {window}, got {len(losses)}")
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    half = len(smooth) // 2
    _, slope = fit_power_law(np.arange(half, len(smooth)) + window, smooth[half:])
    return {"smooth": smooth, "window": window, "slope": slope, "gain": float(smooth[-1] * (1 - 2**slope))}


def bootstrap_exponent(x: np.ndarray, y: np.ndarray, samples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Power-law exponent with a 95% bootstrap interval: (estimate, low, high), resampling points with replacement
    (resamples with fewer than two distinct x values are skipped)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    exponents = []
    for _ in range(samples):
        idx = rng.integers(0, len(x), len(x))
        if len(np.unique(x[idx])) >= 2:
            exponents.append(fit_power_law(x[idx], y[idx])[1])
    low, high = np.percentile(exponents, [2.5, 97.5])
    return fit_power_law(x, y)[1], float(low), float(high)


@dataclass(frozen=True)
class ChinchillaFit:
    """What `fit_chinchilla` found: the best law, its objective (the summed Huber loss of the log-loss residuals),
    the parameters that ended on a bound of the search box (a fit that needs E = 0 or an exponent of 0 is telling
    you the data cannot pin that term down), how many starts were tried, how many ended within 1% of the best
    objective, and the range of alpha and beta among those near-best fits."""

    law: ChinchillaLaw
    objective: float
    at_bounds: tuple[str, ...]
    starts: int
    near_best: int
    alpha_range: tuple[float, float]
    beta_range: tuple[float, float]


HUBER_DELTA = 1e-3  # Hoffmann et al. (2022), section 3.3: robust to outliers, yet quadratic near the fit
# Search box of `fit_chinchilla`, in its parameterisation (A, B and E through their logarithms); log E = -20: E = 2e-9.
FIT_BOUNDS = {
    "log A": (-5.0, 30.0),
    "log B": (-5.0, 30.0),
    "log E": (-20.0, 3.0),
    "alpha": (0.0, 2.0),
    "beta": (0.0, 2.0),
}
# Starting points: a coarse version of Hoffmann et al.'s grid (appendix D.2: alpha, beta in 0..2, e in -1..1, a and b
# in 0..25), 3 x 3 x 3 x 3 x 3 = 243 starts.
FIT_STARTS = [
    (a, b, e, alpha, beta)
    for a in (0.0, 5.0, 15.0)
    for b in (0.0, 5.0, 15.0)
    for e in (-1.0, 0.0, 1.0)
    for alpha in (0.2, 0.5, 1.0)
    for beta in (0.2, 0.5, 1.0)
]


def fit_chinchilla(
    parameters: np.ndarray,
    tokens: np.ndarray,
    losses: np.ndarray,
    starts: list[tuple[float, float, float, float, float]] = FIT_STARTS,
) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to measured runs as Hoffmann et al. (2022, section 3.3 and appendix
    D.2) did: the summed Huber loss (delta 1e-3) of the differences of log losses, over log A, log B, log E, alpha
    and beta, minimised with L-BFGS-B from every start in `starts` (log A, log B, log E, alpha, beta); the best fit
    wins. The surface has
    several local minima and flat valleys on a small sweep, which is why one start is not enough."""
    n, d, loss = (np.asarray(v, dtype=float) for v in (parameters, tokens, losses))
    if len(n) < 5:
        raise ValueError(f"need at least 5 runs to fit 5 parameters, got {len(n)}")
    low, high = (np.array([bound[i] for bound in FIT_BOUNDS.values()]) for i in (0, 1))
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        log_a, log_b, log_e, alpha, beta = theta
        terms = np.stack([log_a - alpha * log_n, log_b - beta * log_d, np.full_like(log_n, log_e)])
        predicted = np.logaddexp.reduce(terms, axis=0)
        r = predicted - log_loss
        huber = np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
        slope = np.clip(r, -HUBER_DELTA, HUBER_DELTA)  # d huber / d r
        w = np.exp(terms - predicted)  # d predicted / d term: each term's share of the predicted loss
        grad = [w[0], w[1], w[2], -w[0] * log_n, -w[1] * log_d]
        return float(huber.sum()), np.array([float(slope @ g) for g in grad])

    fits = []
    box = list(zip(low, high, strict=True))
    with threadpool_limits(1):  # L-BFGS-B's tiny BLAS calls only lose time to threads, badly so on a busy machine
        for start in starts:
            fit = minimize(objective, np.clip(start, low, high), jac=True, method="L-BFGS-B", bounds=box)
            fits.append((float(fit.fun), fit.x))
    best_cost, best = min(fits, key=lambda f: f[0])
    near = np.array([x for cost, x in fits if cost <= best_cost * 1.01 + 1e-12])
    span = high - low
    at_bounds = tuple(
        name
        for name, value, lo, hi, width in zip(FIT_BOUNDS, best, low, high, span, strict=True)
        if min(value - lo, hi - value) < 1e-4 * width
    )
    log_a, log_b, log_e, alpha, beta = best
    law = ChinchillaLaw(
        E=float(np.exp(log_e)), A=float(np.exp(log_a)), B=float(np.exp(log_b)), alpha=float(alpha), beta=float(beta)
    )
    return ChinchillaFit(
        law,
        best_cost,
        at_bounds,
        len(starts),
        len(near),
        (float(near[:, 3].min()), float(near[:, 3].max())),
        (float(near[:, 4].min()), float(near[:, 4].max())),
    )


def dataset_sufficiency(parameters: float, documents: int, tokens_per_document: float) -> dict[str, float | bool]:
    """Is a corpus large enough to train a model of `parameters` compute-optimally? Compares the tokens the
    corpus holds (documents x average tokens) with the ~20 tokens per parameter of Hoffmann et al. (2022).
    Returns available and required tokens, their ratio, and `enough` (ratio >= 1)."""
    if parameters <= 0 or documents < 0 or tokens_per_document < 0:
        raise ValueError("parameters must be positive; documents and tokens per document non-negative")
    available = documents * tokens_per_document
    required = CHINCHILLA_TOKENS_PER_PARAMETER * parameters
    return {
        "available_tokens": available,
        "required_tokens": required,
        "ratio": available / required,
        "enough": available >= required,
    }


def isoflop_plan(
    budgets: list[float],
    flops_per_token: dict[str, float],
    tokens_per_step: int,
    min_steps: int = 1,
    max_tokens: float = float("inf"),
) -> list[dict[str, float | int | str]]:
    """An IsoFLOP design (Hoffmann et al., 2022, approach 2): every model trains at every compute budget, for the
    number of optimizer steps that budget buys it, steps = budget / (FLOPs per token x tokens per step), rounded.
    `flops_per_token` maps a model's name to its training FLOPs per token. Returns one row per (budget, model):
    budget, model, steps, tokens, flops (what the rounded steps really cost) and `skip`, empty for a run to train,
    else why not (fewer than `min_steps` steps, too short for a warmup and schedule; or more than `max_tokens`
    tokens, more passes over the data than the experiment allows)."""
    if tokens_per_step < 1 or min_steps < 1:
        raise ValueError("tokens_per_step and min_steps must be at least 1")
    rows = []
    for budget in budgets:
        for model, per_token in flops_per_token.items():
            if budget <= 0 or per_token <= 0:
                raise ValueError(f"budgets and FLOPs per token must be positive, got {budget} and {per_token}")
            steps = round(budget / (per_token * tokens_per_step))
            tokens = steps * tokens_per_step
            skip = f"{steps} steps < {min_steps}" if steps < min_steps else ""
            skip = skip or (f"{tokens:,} tokens > {max_tokens:,.0f}" if tokens > max_tokens else "")
            rows.append(
                {
                    "budget": budget,
                    "model": model,
                    "steps": steps,
                    "tokens": tokens,
                    "flops": tokens * per_token,
                    "skip": skip,
                }
            )
    return rows


def isoflop_minimum(parameters: np.ndarray, losses: np.ndarray, neighbours: int = 2) -> dict[str, float | bool]:
    """The best model size on one IsoFLOP curve, read as Hoffmann et al. (2022, approach 2) did: at the vertex of a
    parabola fitted to loss against log N. The parabola is fitted to the best size and up to `neighbours` sizes on
    each side of it (repeated sizes are averaged), because far from the optimum the curve is not a parabola: a small
    sweep's largest models, starved of steps, rise more steeply than its smallest ones. `bracketed` is False when the
    best size is the smallest or the largest trained, or the parabola has no minimum inside the sizes it was fitted
    to; the optimum is then not measured, and the best run's size is returned (add smaller or larger models). Needs
    three distinct sizes."""
    x, y = np.log(np.asarray(parameters, dtype=float)), np.asarray(losses, dtype=float)
    sizes = np.unique(x)
    if len(sizes) < 3:
        raise ValueError("an IsoFLOP curve needs at least three distinct model sizes")
    mean = np.array([y[x == size].mean() for size in sizes])
    best = int(np.argmin(mean))
    window = slice(max(best - neighbours, 0), best + neighbours + 1)
    curvature, slope, intercept = np.polyfit(sizes[window], mean[window], 2)
    vertex = -slope / (2 * curvature) if curvature > 0 else np.nan
    bracketed = bool(0 < best < len(sizes) - 1 and sizes[window][0] < vertex < sizes[window][-1])
    if not bracketed:
        return {"parameters": float(np.exp(sizes[best])), "loss": float(mean[best]), "bracketed": False}
    return {
        "parameters": float(np.exp(vertex)),
        "loss": float(np.polyval([curvature, slope, intercept], vertex)),
        "bracketed": True,
    }


def isoflop_optima(budgets: np.ndarray, parameters: np.ndarray, losses: np.ndarray) -> dict[str, np.ndarray]:
    """`isoflop_minimum` for every budget of a sweep (one entry per run in each argument) that trained at least three
    distinct sizes; a budget with fewer has no curve to read and is left out. Returns, sorted by budget: budget,
    parameters and loss at the optimum, and whether each optimum is bracketed by the sizes trained."""
    budgets, parameters, losses = (np.asarray(v, dtype=float) for v in (budgets, parameters, losses))
    curves = [b for b in np.unique(budgets) if len(np.unique(parameters[budgets == b])) >= 3]
    if not curves:
        raise ValueError("no budget trained three distinct sizes; an IsoFLOP curve needs at least three")
    rows = [isoflop_minimum(parameters[budgets == b], losses[budgets == b]) for b in curves]
    return {"budget": np.array(curves), **{k: np.array([r[k] for r in rows]) for k in rows[0]}}


def bootstrap_isoflop_exponent(
    budgets: np.ndarray, parameters: np.ndarray, losses: np.ndarray, samples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """The exponent a of N_opt ~ C^a from an IsoFLOP sweep, with a 95% bootstrap interval: runs are resampled with
    replacement within each budget, every budget's optimum is found again, and the power law refitted (resamples
    with fewer than three distinct sizes on a curve are skipped). Returns (estimate, low, high)."""
    budgets, parameters, losses = (np.asarray(v, dtype=float) for v in (budgets, parameters, losses))
    optima = isoflop_optima(budgets, parameters, losses)
    rng, exponents = np.random.default_rng(seed), []
    groups = [np.flatnonzero(budgets == b) for b in optima["budget"]]
    for _ in range(samples):
        picks = [rng.choice(g, len(g)) for g in groups]
        if all(len(np.unique(parameters[p])) >= 3 for p in picks):
            sizes = [isoflop_minimum(parameters[p], losses[p])["parameters"] for p in picks]
            exponents.append(fit_power_law(optima["budget"], np.array(sizes))[1])
    if not exponents:
        raise ValueError("no resample kept three distinct sizes per budget; train more sizes per budget")
    low, high = np.percentile(exponents, [2.5, 97.5])
    return fit_power_law(optima["budget"], optima["parameters"])[1], float(low), float(high)
