"""The seed gist's experiment, corrected: test accuracy after its 1000 iterations and training time.

    python benchmarks/gist.py [--seeds 0 1 2]

Writes benchmarks/results/gist.md: for backprop (the same network without a cut), DNI and cDNI, the
median over seeds of the final test accuracy and of the training seconds.
"""
from __future__ import annotations


import torch

from common import base_parser, data_dir, median, run, write_table

from synthgrad.experiments.gist import build_gist_model, gist_config

METHODS = ("backprop", "dni", "cdni")


def main() -> None:
    parser = base_parser(__doc__)
    parser.set_defaults(seeds=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `synthgrad gist` does
    rows = []
    for method in METHODS:
        summaries = []
        for seed in args.seeds:
            config = gist_config(method, seed=seed, progress=False, **({"steps": 3} if args.dry_run else {}))
            config.data_dir, config.dry_run = data_dir(args), args.dry_run
            summaries.append(run(config, args.runs / f"gist-{method}-seed{seed}", build_gist_model))
        rows.append([method, " ".join(f"{s['test_acc']:.3f}" for s in summaries),
                     f"{median([s['test_acc'] for s in summaries]):.3f}",
                     f"{median([s['train_seconds'] for s in summaries]):.2f}"])
    write_table(args.results, "gist",
                ["method", "test accuracy per seed", "median", "training seconds (median)"], rows)


if __name__ == "__main__":
    main()
