"""``synthgrad <command>``: the only package that reads argv and the environment.

Commands: ``train`` (an image classifier, every cut decoupled; ``--stages K`` runs it as a pipeline of K
processes), ``gist`` (the seed experiment, corrected), ``resume`` (continue an interrupted run; also
``--resume`` on each training command), ``rnn`` (an LSTM trained by truncated BPTT with synthetic
gradients), ``bench`` (``table1``, ``rnn``, ``pipeline``: grids of runs with tables) and ``plot``
(figures of a run directory). One module per group of commands; ``arguments`` holds what they share.
"""
from synthgrad.cli.arguments import DATA_ENV, resolve_data_dir
from synthgrad.cli.main import DIVERGED_STATUS, build_parser, main

__all__ = ["DATA_ENV", "DIVERGED_STATUS", "build_parser", "main", "resolve_data_dir"]
