"""Benchmarks behind `synthgrad bench <name>`: one module per benchmark, each with a config dataclass and
`run_<name>(config, out_dir)` writing results.json, a markdown table and figures."""
