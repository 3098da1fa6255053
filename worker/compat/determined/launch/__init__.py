"""``determined.launch``, inside a Rung trial: Rung's launchers under Determined's names
(:mod:`rung.launch`)."""

__all__: list[str] = []
