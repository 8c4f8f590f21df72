"""Benchmarks behind ``synthgrad bench <name>``: each module runs one and writes a table and results.json."""
