"""Neural scaling laws: Kaplan et al. (2020) and Hoffmann et al. (2022, "Chinchilla"), in both directions
(budget -> model size, tokens and loss; model size and tokens -> FLOPs and loss), plus power-law fitting with
bootstrap uncertainty for small-scale sweeps.

Written for book chapters 2 and 3 (notebook 02; chapter 9 uses it to decide how long to train). Losses are in
nats per token; N counts parameters, D training tokens, C training FLOPs with C = 6ND. Needs numpy and scipy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

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
CHINCHILLA_TOKENS_PER_PARAMETER = 20  # Hoffmann et al. (2022), table 3: ~20 tokens per parameter at the optimum


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


def fit_power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares fit of y = k x^p in log-log space; returns (k, p)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("need at least two points, all positive")
    p, log_k = np.polyfit(np.log(x), np.log(y), 1)
    return float(np.exp(log_k)), float(p)


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


def fit_chinchilla(parameters: np.ndarray, tokens: np.ndarray, losses: np.ndarray) -> ChinchillaLaw:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to measured runs, as Hoffmann et al. (2022, section 3.3) did: a
    Huber loss (delta 1e-3) on the log of the loss, over log-parameterised A, B, E, started from the paper's fit."""
    n, d, loss = (np.asarray(v, dtype=float) for v in (parameters, tokens, losses))

    def residuals(theta: np.ndarray) -> np.ndarray:
        log_a, log_b, log_e, alpha, beta = theta
        predicted = np.exp(log_e) + np.exp(log_a - alpha * np.log(n)) + np.exp(log_b - beta * np.log(d))
        return np.log(predicted) - np.log(loss)

    start = np.log([CHINCHILLA.A, CHINCHILLA.B, CHINCHILLA.E]).tolist() + [CHINCHILLA.alpha, CHINCHILLA.beta]
    fit = least_squares(residuals, start, loss="huber", f_scale=1e-3, bounds=([-20, -20, -20, 0, 0], [30, 30, 5, 2, 2]))
    log_a, log_b, log_e, alpha, beta = fit.x
    return ChinchillaLaw(E=float(np.exp(log_e)), A=float(np.exp(log_a)), B=float(np.exp(log_b)), alpha=alpha, beta=beta)


def dataset_sufficiency(parameters: float, documents: int, tokens_per_document: float) -> dict[str, float | bool]:
    """Is a corpus large enough to train a model of `parameters` compute-optimally? Compares the tokens the
    corpus holds (documents x average tokens) with the ~20 tokens per parameter of Hoffmann et al. (2022).
    Returns available and required tokens, their ratio, and `enough` (ratio >= 1)."""
    if parameters <= 0 or documents < 0 or tokens_per_document < 0:
        raise ValueError("parameters must be positive; documents and tokens per document non-negative")
    available = documents * tokens_per_document
    required = CHINCHILLA_TOKENS_PER_PARAMETER * parameters
    return {"available_tokens": available, "required_tokens": required, "ratio": available / required,
            "enough": available >= required}  # fmt: skip


def compute_frontier(flops: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Indices of the runs on the compute frontier: each has a lower loss than every run that used less compute,
    sorted by compute."""
    order = np.argsort(flops)
    frontier, best = [], np.inf
    for i in order:
        if losses[i] < best:
            frontier.append(i)
            best = losses[i]
    return np.array(frontier, dtype=int)


def best_size_per_budget(
    flops: np.ndarray, parameters: np.ndarray, losses: np.ndarray, budgets: int
) -> dict[str, np.ndarray]:
    """For log-spaced compute bins, the parameter count of the lowest-loss run in each non-empty bin: the
    points an N_opt(C) ~ C^a fit uses. Returns the bins' median compute and the winning sizes."""
    flops, parameters, losses = (np.asarray(v, dtype=float) for v in (flops, parameters, losses))
    edges = np.logspace(np.log10(flops.min()), np.log10(flops.max()), budgets + 1)
    bin_of = np.clip(np.digitize(flops, edges) - 1, 0, budgets - 1)
    compute, sizes = [], []
    for b in range(budgets):
        members = np.flatnonzero(bin_of == b)
        if len(members):
            compute.append(float(np.median(flops[members])))
            sizes.append(parameters[members[np.argmin(losses[members])]])
    return {"flops": np.array(compute), "parameters": np.array(sizes)}
