"""Operations: what a search method asks of the experiment.

Determined 0.37's vocabulary, as frozen values with a ``type`` discriminator:

* ``Create(request_id, hparams, seed, checkpoint, suggestion, clone)``: start a trial,
  optionally warm-started; ``suggestion`` says why a model-based sampler chose its
  hyperparameters, ``clone`` which trial's checkpoint it continues from and how its
  hyperparameters differ (population-based training);
* ``ValidateAfter(request_id, length)``: train the trial to the *absolute* ``length``, then
  validate and report the searcher metric;
* ``Close(request_id)``: the trial gets no more operations after the current one;
* ``Shutdown(cancel, failure)``: the search is over.

An operation is identified by its content: ``ValidateAfter`` by ``(request_id, length)``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    model_serializer,
)

__all__ = [
    "Change",
    "Clone",
    "Close",
    "Create",
    "Operation",
    "Shutdown",
    "Suggestion",
    "ValidateAfter",
    "operations_adapter",
]


class _Op(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Suggestion(_Op):
    """Why a trial got its hyperparameters; logged in its ``Create`` operation."""

    sampler: str
    # The sampler's algorithm version: ``verify`` recomputes only suggestions of the
    # version it runs, and takes older ones as logged (an old algorithm is not kept).
    version: int = 1
    # initial: a point of the quasi-random start; random: the share of random draws;
    # model: the model's best candidate.
    kind: Literal["initial", "random", "model"]
    # The length (rung) the model was fitted for, its results and pending trials.
    length: int | None = None
    results: int = 0
    pending: int = 0
    # The model's score of the point: expected improvement (gp), density ratio (tpe).
    score: float | None = None
    note: str = ""

    def describe(self) -> str:
        match self.kind:
            case "initial":
                return f"{self.sampler}: {self.note}"
            case "random":
                return f"random: {self.note}"
            case "model":
                score = "" if self.score is None else f": {self.note} {self.score:.3g}"
                pending = f", {self.pending} pending fantasised" if self.sampler == "gp" else ""
                return (
                    f"sampled by {self.sampler} at length {self.length} "
                    f"({self.results} results{pending}){score}"
                )


class Change(_Op):
    """One hyperparameter of a clone, against its source's value."""

    name: str  # the dotted name
    old: JsonValue
    new: JsonValue
    # perturbed: multiplied by ``factor`` (then rounded for an int, and clamped to the
    # range when ``clamped``); resampled: drawn again from its space; kept: a constant.
    how: Literal["perturbed", "resampled", "kept"]
    factor: float | None = None
    clamped: bool = False

    def describe(self) -> str:
        if self.how == "kept":
            return f"{self.name} {_show(self.old)} (kept)"
        if self.how == "resampled":
            return f"{self.name} {_show(self.old)} -> {_show(self.new)} (resampled)"
        clamped = ", clamped to its range" if self.clamped else ""
        return f"{self.name} {_show(self.old)} -> {_show(self.new)} (x{self.factor:g}{clamped})"


def _show(value: JsonValue) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


class Clone(_Op):
    """Why a trial of population-based training continues from another trial: logged in
    its ``Create``, whose ``checkpoint`` is ``checkpoint``."""

    # The trial whose checkpoint the clone continues from, and that checkpoint's length.
    source: str
    source_trial: int = Field(ge=1)
    checkpoint: str
    length: int = Field(ge=0)
    # The source's rank among ``ranked`` results (1 is the best), and the cut that made
    # the replaced trial a loser: "bottom 25%" or "failed".
    rank: int = Field(ge=1)
    ranked: int = Field(ge=1)
    cut: str
    # The trial the clone takes the place of (None: it replaces a trial that ended).
    replaces: str | None = None
    replaces_trial: int | None = None
    # The synchronous mode's round (0 is the first), or None.
    round: int | None = None
    source_hparams: dict[str, JsonValue]
    changes: list[Change]
    note: str = ""

    def describe(self, trial_id: int | None = None) -> str:
        who = f"trial {trial_id}" if trial_id is not None else "the new trial"
        replaced = (
            f"; replaces trial {self.replaces_trial} ({self.cut})"
            if self.replaces_trial is not None
            else f" ({self.cut})"
        )
        changed = "; ".join(c.describe() for c in self.changes if c.how != "kept")
        note = f" [{self.note}]" if self.note else ""
        return (
            f"{who} continues from trial {self.source_trial}'s checkpoint at length "
            f"{self.length} (rank {self.rank} of {self.ranked}){replaced}: "
            f"{changed or 'no hyperparameter changed'}{note}"
        )


class Create(_Op):
    type: Literal["create"] = "create"
    request_id: str
    hparams: dict[str, JsonValue]
    seed: int = Field(ge=0)
    # A checkpoint uuid to warm-start from (searcher.source_checkpoint_uuid), or None.
    checkpoint: str | None = None
    # Why a model-based sampler chose ``hparams``; None for random draws and given points,
    # and then left out of the JSON, so such a Create is written as before samplers.
    suggestion: Suggestion | None = None
    # Population-based training: the trial whose checkpoint this one continues from, and
    # why; None otherwise, and then left out of the JSON.
    clone: Clone | None = None

    @model_serializer(mode="wrap")
    def _without_no_suggestion(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in ("suggestion", "clone"):
            if data.get(name, 0) is None:
                del data[name]
        return data


class ValidateAfter(_Op):
    type: Literal["validate_after"] = "validate_after"
    request_id: str
    length: int = Field(ge=1)


class Close(_Op):
    type: Literal["close"] = "close"
    request_id: str


class Shutdown(_Op):
    type: Literal["shutdown"] = "shutdown"
    cancel: bool = False
    failure: bool = False


Operation = Annotated[Create | ValidateAfter | Close | Shutdown, Discriminator("type")]

operations_adapter: TypeAdapter[list[Operation]] = TypeAdapter(list[Operation])
