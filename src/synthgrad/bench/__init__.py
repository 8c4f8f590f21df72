"""Benchmarks run by ``synthgrad bench <name>``: each module runs a grid of training runs, resumably, and
writes ``results.json``, a markdown table headed by the command that made it, and figures."""
