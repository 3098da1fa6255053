"""Launchers for trials of several processes, as Determined's ``determined.launch``:

* ``python -m rung.launch.torch_distributed [torchrun options] -- CMD ...``: torchrun
  with one process per slot of the trial, meeting at the trial's chief;
* ``python -m rung.launch.wrap_rank RANK -- CMD ...``: CMD with each line it writes
  tagged with its rank (RANK a number, or the name of a variable that holds it).
"""
