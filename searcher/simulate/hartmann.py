"""The multi-fidelity Hartmann-6 function (``shared/reference/benchmarks.md`` §2).

Only numpy and the standard library: the benchmarks load this file by path in the peers'
environments (``bench/peer_scripts/quality.py``), so that Optuna and Ray Tune are scored
on exactly the function Rung's simulator uses.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["OPTIMUM", "PRESETS", "Z_MAX", "mf_hartmann6"]

Z_MAX = 100
OPTIMUM = -3.32237
# mf-prior-bench's presets: informative low fidelities, and misleading ones.
PRESETS: dict[str, dict[str, float]] = {
    "mfh6": {"bias": 0.5, "noise": 0.1},
    "mfh6_bad": {"bias": 3.5, "noise": 4.0},
}
_ALPHA = (1.0, 1.2, 3.0, 3.2)
_A = (
    (10.0, 3.0, 17.0, 3.5, 1.7, 8.0),
    (0.05, 10.0, 17.0, 0.1, 8.0, 14.0),
    (3.0, 3.5, 1.7, 10.0, 17.0, 8.0),
    (17.0, 8.0, 0.05, 10.0, 0.1, 14.0),
)
_P = tuple(
    tuple(1e-4 * v for v in row)
    for row in (
        (1312, 1696, 5569, 124, 8283, 5886),
        (2329, 4135, 8307, 3736, 1004, 9991),
        (2348, 1451, 3522, 2883, 3047, 6650),
        (4047, 8828, 8732, 5743, 1091, 381),
    )
)


def mf_hartmann6(x: tuple[float, ...], z: int, *, bias: float, noise: float) -> float:
    """f(x, z) for x in [0, 1]^6 and fidelity z in 1..Z_MAX; exact Hartmann-6 at Z_MAX.

    The noise at z < Z_MAX is drawn from a generator seeded by z and the hash of the
    tuple x, which CPython does not randomise for floats: the same in every process.
    """
    s = math.log(z) / math.log(Z_MAX)
    total = 0.0
    for alpha, a_row, p_row in zip(_ALPHA, _A, _P, strict=True):
        inner = sum(a * (xj - p) ** 2 for a, xj, p in zip(a_row, x, p_row, strict=True))
        total -= (alpha - bias * (1 - s)) * math.exp(-inner)
    if s < 1:
        eps = np.random.default_rng(abs(1337 * z * hash(x))).standard_normal()
        total += abs(float(eps)) * noise * (1 - s)
    return total
