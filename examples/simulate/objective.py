"""A made-up training run, for ``rung simulate --objective``.

    rung simulate examples/simulate/objective_asha.yaml \\
        --objective examples/simulate/objective.py:objective --workers 8

``objective(hparams, length)`` is the validation loss of a network with ``layers`` layers,
trained with ``optimizer.name`` at learning rate ``optimizer.lr`` for ``length`` epochs:

* each optimizer has its own best learning rate; the loss grows with the square of the
  distance from it in decades, and a rate far too high never learns (the loss stays at
  chance, 2.3);
* deeper networks end lower but learn more slowly, so early epochs favour shallow ones:
  the low fidelities that ASHA looks at are informative, but not perfectly;
* a little noise, seeded from the hyperparameters and the length, so the function is
  deterministic: the same inputs always give the same loss.

Replace it with a function fitted to your own recorded curves.
"""

from __future__ import annotations

import json
import math
from random import Random
from typing import Any

# The largest length the function is defined for: searcher.max_length may not exceed it.
MAX_LENGTH = 100
# The lowest loss reachable at MAX_LENGTH (adam at lr 1e-3 with 8 layers, no noise), so
# that the simulator reports regret: the best final loss minus OPTIMUM.
OPTIMUM = 0.05

CHANCE = 2.3  # the loss of a 10-class classifier that learned nothing
BEST_LR = {"sgd": 1e-1, "adam": 1e-3, "rmsprop": 3e-3}
OFFSET = {"sgd": 0.02, "adam": 0.0, "rmsprop": 0.01}
SLOWNESS = {"sgd": 1.5, "adam": 1.0, "rmsprop": 1.2}


def objective(hparams: dict[str, Any], length: int) -> float:
    name = hparams["optimizer"]["name"]
    lr = float(hparams["optimizer"]["lr"])
    layers = int(hparams["layers"])
    decades = math.log10(lr / BEST_LR[name])
    floor = 0.05 + 0.1 * decades**2 + 0.04 * (8 - layers) / 7 + OFFSET[name]
    floor = min(floor, CHANCE)
    # Fraction of the way from chance to the floor after `length` epochs: 1 at MAX_LENGTH.
    tau = (8 + layers) * SLOWNESS[name]
    progress = (1 - math.exp(-length / tau)) / (1 - math.exp(-MAX_LENGTH / tau))
    loss = CHANCE - (CHANCE - floor) * progress
    # Noise that depends only on the inputs: a generator seeded from them.
    rng = Random(f"{json.dumps(hparams, sort_keys=True)}/{length}")
    return loss + 0.02 * (1 - progress) * rng.random()
