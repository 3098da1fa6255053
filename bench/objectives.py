"""The search-quality workload's own objectives (shared/reference/benchmarks.md §2): the
digits MLP, in numpy, with the training state cached so that a longer length continues
it; and ``mixed``, synthetic learning curves over a space that mixes categorical,
integer, log-scaled and linear parameters (:class:`Mixed`).

This file imports nothing of Rung: the peers' scripts load it by path in their own
environments (numpy and scikit-learn), so every system scores the same function. The
MF-Hartmann-6 objectives are Rung's own (``searcher/simulate/hartmann.py``), loaded the
same way.

Definition: scikit-learn's ``load_digits()`` with X / 16; a stratified 60/20/20 split
(random_state 0); 64 -> width -> ReLU -> 10 with He-normal weights and zero biases;
softmax cross-entropy; SGD with Nesterov momentum 0.9 and L2 weight decay on the
weights only; a shuffle each epoch. All randomness comes from one generator seeded 0
(initialisation, then one permutation per epoch), so the validation error after epoch e
is a function of the configuration and e. Non-finite weights score 1.0.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = [
    "DIGITS_MAX",
    "DIGITS_SPACE",
    "MIXED_MAX",
    "MIXED_SPACE",
    "Digits",
    "Mixed",
    "sample_digits",
    "sample_mixed",
]

DIGITS_MAX = 27
_KEEP = 256  # training states kept for resumption (about 0.6 MB each at width 512)
BATCH_SIZES = (16, 32, 64, 128, 256)
# Rung's form of the space; the peers sample the same ranges (sample_digits).
DIGITS_SPACE: dict[str, Any] = {
    "lr": {"type": "log", "minval": -4, "maxval": 0, "base": 10},
    "width": {"type": "log", "minval": math.log10(8), "maxval": math.log10(512), "base": 10},
    "weight_decay": {"type": "log", "minval": -6, "maxval": -1, "base": 10},
    "batch_size": {"type": "categorical", "vals": list(BATCH_SIZES)},
}


def sample_digits(rng: np.random.Generator) -> dict[str, Any]:
    """A uniform sample of the space (log-uniform where it is logarithmic)."""
    return {
        "lr": float(10 ** rng.uniform(-4, 0)),
        "width": float(10 ** rng.uniform(math.log10(8), math.log10(512))),
        "weight_decay": float(10 ** rng.uniform(-6, -1)),
        "batch_size": int(rng.choice(BATCH_SIZES)),
    }


class _Run:
    """One configuration's training, advanced epoch by epoch on demand."""

    def __init__(self, data: tuple[np.ndarray, ...], config: dict[str, Any]) -> None:
        self.x, self.y, self.x_val, self.y_val = data
        self.lr = float(config["lr"])
        self.decay = float(config["weight_decay"])
        self.batch = int(config["batch_size"])
        width = max(1, round(float(config["width"])))
        self.rng = np.random.default_rng(0)
        self.w1 = self.rng.standard_normal((64, width)) * math.sqrt(2 / 64)
        self.b1 = np.zeros(width)
        self.w2 = self.rng.standard_normal((width, 10)) * math.sqrt(2 / width)
        self.b2 = np.zeros(10)
        self.velocity = [np.zeros_like(p) for p in (self.w1, self.b1, self.w2, self.b2)]
        self.errors: list[float] = []
        self.diverged = False

    def _step(self, x: np.ndarray, y: np.ndarray) -> None:
        hidden = x @ self.w1 + self.b1
        active = np.maximum(hidden, 0)
        logits = active @ self.w2 + self.b2
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        probs[np.arange(len(y)), y] -= 1
        dlogits = probs / len(y)
        dhidden = (dlogits @ self.w2.T) * (hidden > 0)
        grads = [
            x.T @ dhidden + self.decay * self.w1,
            dhidden.sum(axis=0),
            active.T @ dlogits + self.decay * self.w2,
            dlogits.sum(axis=0),
        ]
        params = (self.w1, self.b1, self.w2, self.b2)
        for param, grad, velocity in zip(params, grads, self.velocity, strict=True):
            # In place, as torch.optim.SGD with Nesterov momentum does it.
            np.multiply(velocity, 0.9, out=velocity)
            np.add(velocity, grad, out=velocity)
            np.subtract(param, self.lr * (grad + 0.9 * velocity), out=param)

    def _error(self) -> float:
        weights = (self.w1, self.b1, self.w2, self.b2)
        if not all(np.isfinite(w).all() for w in weights):
            return 1.0
        logits = np.maximum(self.x_val @ self.w1 + self.b1, 0) @ self.w2 + self.b2
        return float((logits.argmax(axis=1) != self.y_val).mean())

    def error_at(self, epoch: int) -> float:
        with np.errstate(all="ignore"):
            while len(self.errors) < epoch:
                if self.diverged:
                    self.errors.append(1.0)
                    continue
                order = self.rng.permutation(len(self.x))
                for start in range(0, len(order), self.batch):
                    index = order[start : start + self.batch]
                    self._step(self.x[index], self.y[index])
                error = self._error()
                self.diverged = error == 1.0 and not np.isfinite(self.w1).all()
                self.errors.append(error)
        return self.errors[epoch - 1]


class Digits:
    """``evaluate(config, epochs)``: the validation error after that many epochs."""

    name = "digits"
    max_length: int | None = DIGITS_MAX
    optimum: float | None = None  # unknown; the best of 400 random configurations is 1.11 %

    def __init__(self) -> None:
        from sklearn.datasets import load_digits  # noqa: PLC0415 (only this objective needs it)
        from sklearn.model_selection import train_test_split  # noqa: PLC0415

        digits = load_digits()
        x, y = digits.data / 16.0, digits.target
        x_train, x_rest, y_train, y_rest = train_test_split(
            x, y, test_size=0.4, stratify=y, random_state=0
        )
        x_val, _, y_val, _ = train_test_split(
            x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0
        )
        self._data = (x_train, y_train, x_val, y_val)
        # Training states, most recently used last; an evicted one is trained again
        # from the start (the same numbers: it is deterministic), which only costs time.
        self._runs: OrderedDict[tuple[Any, ...], _Run] = OrderedDict()

    def evaluate(self, hparams: Any, length: int) -> float:
        key = tuple(sorted((k, float(v)) for k, v in dict(hparams).items()))
        run = self._runs.pop(key, None)
        if run is None:
            run = _Run(self._data, dict(hparams))
        self._runs[key] = run
        if len(self._runs) > _KEEP:
            self._runs.popitem(last=False)
        return run.error_at(length)


# ``mixed``: synthetic learning curves over a mixed space, cheap (about 40 µs an epoch),
# deterministic, and with an exact optimum.
#
# The final value (at MIXED_MAX epochs) is a validation error:
#
#     final(x) = floor(d) + (0.9 - floor(d)) * (1 - exp(-q(x)))
#
# where d = (optimizer, batch_size, layers) are the discrete choices, floor(d) a sum of
# one term per choice, and q >= 0 a quadratic form in (log10 lr, log10 weight_decay,
# dropout), with correlated lr and weight decay, that is 0 at a centre which depends on d
# (the best learning rate on the optimizer and the batch size, the best dropout on the
# depth) and lies inside the box for every d. So the minimum over the continuous
# parameters is floor(d), and the optimum is the least floor(d): MIXED_OPTIMUM.
#
# The curve runs from chance (0.9) at epoch 0 to final(x) at MIXED_MAX as a power law,
#
#     value(x, z) = final + (0.9 - final) * (g(z) - g(Z)) / (1 - g(Z)),  g(z) = (1 + z/tau)^-1
#
# with a time constant tau(x) that is short for large learning rates and Adam, and long
# for deep networks, large batches and much dropout: fast learners with too large a
# learning rate lead early and lose at full length, so low fidelities inform but can
# mislead, as real curves do. Below full length, noise 0.02 * (1 - ln z / ln Z) * eps
# is added, eps ~ N(0, 1) drawn from a generator seeded by a hash (BLAKE2) of the
# configuration and z: the same in every process.
MIXED_MAX = 81
OPTIMIZERS = ("sgd", "momentum", "adam")
MIXED_BATCH_SIZES = (16, 32, 64, 128, 256)
MIXED_SPACE: dict[str, Any] = {
    "optimizer": {"type": "categorical", "vals": list(OPTIMIZERS)},
    "batch_size": {"type": "categorical", "vals": list(MIXED_BATCH_SIZES)},
    "layers": {"type": "int", "minval": 1, "maxval": 8},
    "lr": {"type": "log", "minval": -5, "maxval": 0, "base": 10},
    "weight_decay": {"type": "log", "minval": -6, "maxval": -1, "base": 10},
    "dropout": {"type": "double", "minval": 0, "maxval": 0.8},
}
_CHANCE = 0.9
# Per optimizer: the floor's term, log10 of the best learning rate at batch size 64, the
# width of the good learning rates (in decades), and the speed (a divisor of tau).
_OPTIMIZER = {
    "sgd": (0.030, -0.8, 0.35, 1.0),
    "momentum": (0.018, -1.7, 0.45, 1.6),
    "adam": (0.022, -3.1, 0.7, 2.5),
}


def _batch_term(batch: int) -> float:
    return 0.004 * math.log2(batch / 64) ** 2 + (0.003 if batch == 16 else 0.0)


def _layers_term(layers: int) -> float:
    return 0.04 / layers + 0.004 * layers  # least at 3 layers


def _floor(optimizer: str, batch: int, layers: int) -> float:
    return _OPTIMIZER[optimizer][0] + _batch_term(batch) + _layers_term(layers)


MIXED_OPTIMUM = min(
    _floor(o, b, n) for o in OPTIMIZERS for b in MIXED_BATCH_SIZES for n in range(1, 9)
)


def sample_mixed(rng: np.random.Generator) -> dict[str, Any]:
    """A uniform sample of the space (log-uniform where it is logarithmic)."""
    return {
        "optimizer": str(rng.choice(OPTIMIZERS)),
        "batch_size": int(rng.choice(MIXED_BATCH_SIZES)),
        "layers": int(rng.integers(1, 9)),
        "lr": float(10 ** rng.uniform(-5, 0)),
        "weight_decay": float(10 ** rng.uniform(-6, -1)),
        "dropout": float(rng.uniform(0, 0.8)),
    }


def mixed_value(config: dict[str, Any], z: int) -> float:
    """The validation error of ``config`` after ``z`` epochs, 1 <= z <= MIXED_MAX."""
    optimizer = str(config["optimizer"])
    batch, layers = int(config["batch_size"]), int(config["layers"])
    lr, decay, dropout = (
        float(config["lr"]),
        float(config["weight_decay"]),
        float(config["dropout"]),
    )
    _, lr_centre, lr_width, speed = _OPTIMIZER[optimizer]
    u = (math.log10(lr) - (lr_centre + 0.7 * math.log10(batch / 64))) / lr_width
    v = (math.log10(decay) - (-4.0 + 0.25 * (layers - 4))) / 1.5
    d = (dropout - 0.07 * (layers - 1)) / 0.2
    q = 0.5 * (u * u + v * v + u * v) + 0.5 * d * d  # positive definite: |0.5| < 1
    floor = _floor(optimizer, batch, layers)
    final = floor + (_CHANCE - floor) * (1 - math.exp(-q))
    # Time constant in epochs: 10x shorter per decade of learning rate above the centre.
    tau: float = (
        12.0
        * 10 ** (-0.6 * u * lr_width)
        * (batch / 64) ** 0.5
        * (1 + 0.15 * (layers - 1))
        * (1 + dropout)
        / speed
    )
    tau = min(max(tau, 0.05), 1e4)
    g_max = 1 / (1 + MIXED_MAX / tau)
    value = final + (_CHANCE - final) * (1 / (1 + z / tau) - g_max) / (1 - g_max)
    if z < MIXED_MAX:
        key = repr((optimizer, batch, layers, lr, decay, dropout, z)).encode()
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        eps = float(np.random.default_rng(seed).standard_normal())
        value += 0.02 * (1 - math.log(z) / math.log(MIXED_MAX)) * eps
    return value


class Mixed:
    """``evaluate(config, epochs)``: :func:`mixed_value`, for Rung's simulator."""

    name = "mixed"
    max_length: int | None = MIXED_MAX
    optimum: float | None = MIXED_OPTIMUM

    def evaluate(self, hparams: Any, length: int) -> float:
        return mixed_value(dict(hparams), length)
