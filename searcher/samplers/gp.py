"""``gp``: a multi-fidelity Gaussian process with expected improvement.

In the style of MOBSTER (Klein et al., 2020) and Syne Tune's asynchronous model-based
searchers, written for Rung's pure core:

* **Data.** The latest result of every trial at every length, from every bracket. Within
  a length, values are standardised (see :mod:`.model_based`); the
  length itself is an input (its log, scaled to ``[0, 1]``), so one model sees every
  rung and learns how far results at one length predict results at another.
* **Kernel.** Matérn 5/2 with one length scale per dimension (a number, a categorical's
  one-hot columns together, the length), a signal and a noise variance, fitted by
  maximising the marginal likelihood (L-BFGS-B, analytic gradient, a fixed start and
  iteration cap).
* **Bounded cost.** At most ``max_data`` results: those at the target length first, then
  the longest lengths, each newest first. The kernel's parameters are refitted only when
  the results grow past a milestone (``min_results``, then each 25% and at least 4
  more), on the results as they were at that milestone, so they are a function of the
  log and cached.
* **Pending trials** are fantasised at the length they report next with the posterior
  mean ("kriging believer"), which shrinks the uncertainty where a worker already is
  without lying about the value; eight workers then spread out instead of crowding.
* **Acquisition.** Expected improvement at the target length (the longest with
  ``min_results`` results) over the best result there, maximised over ``candidates``
  points: uniform draws plus local moves around the best results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from rung.searcher.config import GPSamplerConfig, Hyperparameters
from rung.searcher.samplers.base import Result, SamplerData, Suggested, Suggestion, sampler_rng
from rung.searcher.samplers.encoding import FloatArray, IntArray
from rung.searcher.samplers.model_based import (
    ModelSampler,
    RungData,
    log_length,
    rung_data,
    standard_scores,
)

__all__ = ["GPSampler", "Kernel", "fit_kernel", "milestone"]


def _linalg() -> Any:
    """scipy.linalg, imported when a model is first fitted: importing scipy costs the CLI
    and every process that loads the search core a quarter of a second otherwise."""
    import scipy.linalg  # noqa: PLC0415

    return scipy.linalg


_SQRT5 = math.sqrt(5.0)
_JITTER = 1e-8
# Bounds of the kernel's log-parameters: length scales, signal variance, noise variance.
_LOG_SCALE = (math.log(0.02), math.log(20.0))
_LOG_SIGNAL = (math.log(0.05), math.log(20.0))
_LOG_NOISE = (math.log(1e-4), math.log(2.0))


# The most results the kernel's parameters are fitted on (each fit costs ~40 likelihood
# evaluations of cubic cost); the posterior itself uses up to ``max_data``.
_FIT_DATA = 128
# Candidates scored at once (a chunk of the cross-covariance matrix).
_CHUNK = 512
# The widths of the local search's rounds around the best candidate.
_REFINE = (0.04, 0.015, 0.005)


def milestone(count: int, first: int) -> int:
    """The largest milestone at most ``count``: ``first``, then each 25% (at least 4) more."""
    mark = first
    while True:
        following = max(mark + 4, math.ceil(mark * 1.25))
        if following > count:
            return mark
        mark = following


@dataclass(frozen=True, slots=True)
class Kernel:
    """Matérn 5/2 with one length scale per *group* of input columns: a number is one
    column, a categorical all its one-hot columns (one scale, however many values), the
    length one column."""

    groups: IntArray  # the group of each input column
    log_scales: FloatArray  # one per group
    log_signal: float
    log_noise: float

    def matrix(self, a: FloatArray, b: FloatArray) -> FloatArray:
        scales = np.exp(self.log_scales)[self.groups]
        return _matern(a / scales, b / scales, self.log_signal)


def _distances(a: FloatArray, b: FloatArray) -> FloatArray:
    out: FloatArray = np.sqrt(_squared(a, b))
    return out


def _squared(a: FloatArray, b: FloatArray) -> FloatArray:
    sq: FloatArray = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(sq, 0.0)


def _matern(a: FloatArray, b: FloatArray, log_signal: float) -> FloatArray:
    r = _SQRT5 * _distances(a, b)
    return math.exp(log_signal) * (1.0 + r + r * r / 3.0) * np.exp(-r)


def _neg_log_likelihood(
    theta: FloatArray, parts: FloatArray, y: FloatArray
) -> tuple[float, FloatArray]:
    """``parts[g]``: the squared distances between the inputs in group ``g``'s columns."""
    count = parts.shape[0]
    inverse = np.exp(-2.0 * theta[:count])
    signal, noise = math.exp(theta[count]), math.exp(theta[count + 1])
    r = _SQRT5 * np.sqrt(np.tensordot(inverse, parts, axes=1))
    e = np.exp(-r)
    k = signal * (1.0 + r + r * r / 3.0) * e
    n = y.shape[0]
    try:
        chol = _linalg().cholesky(k + (noise + _JITTER) * np.eye(n), lower=True)
    except np.linalg.LinAlgError:
        return 1e10, np.zeros_like(theta)
    alpha = _linalg().cho_solve((chol, True), y)
    nll = (
        0.5 * float(y @ alpha)
        + float(np.log(np.diag(chol)).sum())
        + 0.5 * n * math.log(2 * math.pi)
    )
    inner = np.outer(alpha, alpha) - _linalg().cho_solve((chol, True), np.eye(n))
    grad = np.empty_like(theta)
    # d k / d log scale_g = signal (5/3) (1 + r) e^{-r} * (squared distance in g) / scale_g^2
    weighted = inner * (signal * (5.0 / 3.0) * (1.0 + r) * e)
    grad[:count] = -0.5 * inverse * np.tensordot(parts, weighted, axes=([1, 2], [0, 1]))
    grad[count] = -0.5 * float((inner * k).sum())
    grad[count + 1] = -0.5 * noise * float(np.trace(inner))
    return nll, grad


def fit_kernel(x: FloatArray, y: FloatArray, groups: IntArray) -> Kernel:
    """The kernel of the largest marginal likelihood, from a fixed start (deterministic)."""
    count = int(groups.max()) + 1
    parts = np.stack([_squared(x[:, groups == g], x[:, groups == g]) for g in range(count)])
    start = np.concatenate([np.full(count, math.log(0.5)), [0.0, math.log(0.1)]])
    bounds = [_LOG_SCALE] * count + [_LOG_SIGNAL, _LOG_NOISE]
    from scipy.optimize import minimize  # noqa: PLC0415 (slow to import: only when fitting)

    found = minimize(
        _neg_log_likelihood,
        start,
        args=(parts, y),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": 40},
    )
    theta = found.x if np.all(np.isfinite(found.x)) else start
    return Kernel(groups, theta[:count].copy(), float(theta[count]), float(theta[count + 1]))


@dataclass(frozen=True, slots=True)
class _Posterior:
    kernel: Kernel
    x: FloatArray
    chol: FloatArray
    alpha: FloatArray
    mean: float

    @classmethod
    def of(
        cls,
        kernel: Kernel,
        x: FloatArray,
        y: FloatArray,
        fantasies: int = 0,
        mean: float | None = None,
    ) -> _Posterior:
        """The posterior given ``y`` at ``x``, whose last ``fantasies`` rows are fantasies:
        taken as exact (jitter only), so the uncertainty at a pending point collapses."""
        mean = (float(y.mean()) if y.size else 0.0) if mean is None else mean
        noise = np.full(x.shape[0], math.exp(kernel.log_noise) + _JITTER)
        if fantasies:
            noise[-fantasies:] = 1e-4 * math.exp(kernel.log_signal) + _JITTER
        chol = _linalg().cholesky(kernel.matrix(x, x) + np.diag(noise), lower=True)
        return cls(kernel, x, chol, _linalg().cho_solve((chol, True), y - mean), mean)

    def predict(self, points: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Mean and standard deviation, in chunks: memory stays bounded by the chunk."""
        if points.shape[0] > _CHUNK:
            parts = [
                self.predict(points[i : i + _CHUNK]) for i in range(0, points.shape[0], _CHUNK)
            ]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        cross = self.kernel.matrix(points, self.x)
        mu = self.mean + cross @ self.alpha
        v: FloatArray = _linalg().solve_triangular(self.chol, cross.T, lower=True)
        var = math.exp(self.kernel.log_signal) - (v * v).sum(0)
        sigma: FloatArray = np.sqrt(np.maximum(var, 1e-12))
        return mu, sigma


def expected_improvement(mu: FloatArray, sigma: FloatArray, best: float) -> FloatArray:
    from scipy.special import ndtr  # noqa: PLC0415 (see _linalg)

    z = (best - mu) / sigma
    ei: FloatArray = (best - mu) * ndtr(z) + sigma * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return ei


class GPSampler(ModelSampler):
    name: ClassVar[str] = "gp"
    config: GPSamplerConfig

    def __init__(self, config: GPSamplerConfig, hps: Hyperparameters) -> None:
        super().__init__(config, hps)
        self._kernels: dict[int, Kernel] = {}  # a cache, never state

    def restore(self, data: Mapping[str, Any] | None) -> None:
        super().restore(data)
        self._kernels = {}

    # ------------------------------------------------------------ data
    def _selection(self, rungs: RungData, target: int, cap: int) -> list[Result]:
        """At most ``cap`` results: the target length's, then the longest, newest first."""
        chosen: list[Result] = []
        lengths = sorted(rungs.by_length, key=lambda n: (n != target, -n))
        for length in lengths:
            room = cap - len(chosen)
            if room <= 0:
                break
            results = rungs.by_length[length]
            chosen += results[-room:] if len(results) > room else results
        return chosen

    def _dataset(
        self, data: SamplerData, rungs: RungData, target: int, cap: int | None = None
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Inputs, standardised values and the target length's own."""
        top = float(data.max_length or max(rungs.by_length))
        selected = self._selection(rungs, target, cap or self.config.max_data)
        scores: dict[tuple[int, int], float] = {}
        for length, results in rungs.by_length.items():
            for result, score in zip(
                results, standard_scores([r.value for r in results]), strict=True
            ):
                scores[(length, result.index)] = float(score)
        units, picks = self.encoded(data, [r.index for r in selected])
        fidelity = np.array([[log_length(r.length, top)] for r in selected])
        x = np.concatenate([self.encoder.one_hot(units, picks), fidelity], axis=1)
        y = np.array([scores[(r.length, r.index)] for r in selected])
        at_target = np.array([scores[(target, r.index)] for r in rungs.by_length[target]])
        return x, y, at_target

    def _kernel(self, data: SamplerData, target: int) -> Kernel:
        """The kernel fitted at the latest milestone, on the results as they were then."""
        mark = milestone(len(self.state.results), self.min_results())
        kernel = self._kernels.get(mark)
        if kernel is None:
            past = self._rungs_until(mark)
            past_target = self.target_length(past) or min(past.by_length)
            x, y, _ = self._dataset(data, past, past_target, cap=_FIT_DATA)
            groups = np.append(self.encoder.one_hot_groups(), self.encoder.dims)
            kernel = fit_kernel(x, y, groups)
            self._kernels = {mark: kernel}
        return kernel

    def _rungs_until(self, count: int) -> RungData:
        return rung_data(self.state.results[:count])

    # ------------------------------------------------------------ suggestion
    def model_suggestion(
        self, index: int, data: SamplerData, rungs: RungData, target: int
    ) -> Suggested:
        top = float(data.max_length or max(rungs.by_length))
        x, y, at_target = self._dataset(data, rungs, target)
        kernel = self._kernel(data, target)
        posterior = _Posterior.of(kernel, x, y)
        pending = list(data.pending)[:64]
        if pending:
            p_units, p_picks = self._encode_all([p.hparams for p in pending])
            first = min(rungs.by_length)  # a trial not yet given a length reports there
            fidelity = np.array([[log_length(p.length or first, top)] for p in pending])
            px = np.concatenate([self.encoder.one_hot(p_units, p_picks), fidelity], axis=1)
            fantasy, _ = posterior.predict(px)
            posterior = _Posterior.of(
                kernel,
                np.concatenate([x, px]),
                np.concatenate([y, fantasy]),
                fantasies=len(pending),
                mean=posterior.mean,
            )
        units, picks = self._candidates(index, data, rungs, target)
        at_length = log_length(target, top)
        best_ei = float(at_target.min())

        def score(u: FloatArray, p: IntArray) -> FloatArray:
            cx = np.concatenate(
                [self.encoder.one_hot(u, p), np.full((u.shape[0], 1), at_length)], axis=1
            )
            mu, sigma = posterior.predict(cx)
            return expected_improvement(mu, sigma, best_ei)

        ei = score(units, picks)
        best = int(np.argmax(ei))  # the first of equal scores: a fixed order
        # Refine the winner: moves around it, each round narrower (a local search).
        rng = sampler_rng(data.seed, index, "refine")
        for width in _REFINE:
            moved, moved_picks = self._moves(
                rng, units[best : best + 1], picks[best : best + 1], 64, width
            )
            moved_ei = score(moved, moved_picks)
            top_move = int(np.argmax(moved_ei))
            if moved_ei[top_move] > ei[best]:
                units = np.concatenate([units, moved[top_move : top_move + 1]])
                picks = np.concatenate([picks, moved_picks[top_move : top_move + 1]])
                ei = np.append(ei, moved_ei[top_move])
                best = len(ei) - 1
        return Suggested(
            self.encoder.decode(units[best], picks[best]),
            Suggestion(
                sampler=self.name,
                version=self.version,
                kind="model",
                length=target,
                results=len(rungs.by_length[target]),
                pending=len(pending),
                score=round(float(ei[best]), 6),
                note="expected improvement",
            ),
        )

    def _moves(
        self, rng: np.random.Generator, units: FloatArray, picks: IntArray, count: int, width: float
    ) -> tuple[FloatArray, IntArray]:
        """``count`` points near the given ones: numbers moved by N(0, width), each
        categorical changed with probability 0.15."""
        origin = rng.integers(0, units.shape[0], size=count)
        moved = units[origin] + rng.normal(0.0, width, size=(count, units.shape[1]))
        moved_picks = picks[origin].copy()
        if moved_picks.shape[1]:
            flip = rng.random(moved_picks.shape) < 0.15
            for column, size in enumerate(self.encoder.sizes):
                draws = rng.integers(0, size, size=count)
                moved_picks[:, column] = np.where(flip[:, column], draws, moved_picks[:, column])
        return self.encoder.snap(np.clip(moved, 0.0, 1.0), moved_picks)

    def _encode_all(self, points: Sequence[object]) -> tuple[FloatArray, IntArray]:
        rows = [self.encoder.encode(p) for p in points]  # type: ignore[arg-type]
        units = np.array([r[0] for r in rows], dtype=np.float64).reshape(len(rows), -1)
        picks = np.array([r[1] for r in rows], dtype=np.int64).reshape(len(rows), -1)
        return units, picks

    def _candidates(
        self, index: int, data: SamplerData, rungs: RungData, target: int
    ) -> tuple[FloatArray, IntArray]:
        """Uniform draws, and local moves around the five best results at the target."""
        rng = sampler_rng(data.seed, index, "candidates")
        total = self.config.candidates
        local = total // 4
        units, picks = self.encoder.uniform(rng, total - local)
        results = rungs.by_length[target]
        ranked = sorted(
            results,
            key=lambda r: (r.value is None, r.value if r.value is not None else 0.0, r.index),
        )[:5]
        b_units, b_picks = self.encoded(data, [r.index for r in ranked])
        moved, moved_picks = self._moves(rng, b_units, b_picks, local, 0.08)
        return np.concatenate([units, moved]), np.concatenate([picks, moved_picks])
