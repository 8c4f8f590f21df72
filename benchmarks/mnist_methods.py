"""Backprop vs DNI vs cDNI on the default MNIST MLP (3 hidden layers of 256, every cut decoupled).

    python benchmarks/mnist_methods.py [--epochs 10] [--seeds 0]

Writes benchmarks/results/mnist_methods.md: final and best test accuracy (median over seeds), seconds per
epoch of optimisation (no data loading, no evaluation) and the final synthetic-gradient cosine per cut,
for backprop, DNI, cDNI (the default rank-32 synthesizers) and cDNI with the paper's full linear map.
"""
from __future__ import annotations


from common import base_parser, data_dir, median, run, write_table

from synthgrad.experiments.mnist import ClassifierConfig, default_decoupled_lr
from synthgrad.trainer import TrainConfig

VARIANTS = {  # row name -> (method, ClassifierConfig overrides)
    "backprop": ("backprop", {}),
    "dni": ("dni", {}),
    "cdni": ("cdni", {}),
    "cdni, full-rank synthesizer": ("cdni", {"synth_rank": None}),
}


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="rows to run; backprop is always run, as the time reference")
    parser.add_argument("--name", default="mnist_methods", help="file name of the table, without .md")
    args = parser.parse_args()
    variants = {name: VARIANTS[name] for name in VARIANTS if name == "backprop" or name in args.variants}
    summaries: dict[str, list[dict]] = {name: [] for name in variants}
    for seed in args.seeds:  # every variant once per seed, so all see the same machine conditions
        for name, (method, overrides) in variants.items():
            train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, use_context=method == "cdni",
                                seed=seed, progress=False, decoupled_lr=default_decoupled_lr(method),
                                steps=3 if args.dry_run else None)
            config = ClassifierConfig(method=method, data_dir=data_dir(args), dry_run=args.dry_run, train=train,
                                      **overrides)
            slug = name.split(",")[0] + ("-full-rank" if "full-rank" in name else "")
            summaries[name].append(run(config, args.runs / f"mnist-mlp-{slug}-batch{args.batch_size}-seed{seed}"))
    backprop_seconds = median([s["train_seconds"] / s["epochs"] for s in summaries["backprop"]])
    rows = []
    for name, runs in summaries.items():
        seconds = median([s["train_seconds"] / s["epochs"] for s in runs])
        cosines = [key for key in runs[0] if key.startswith("sg/cos/")]
        rows.append([
            name,
            f"{100 * median([s['test_acc'] for s in runs]):.2f}",
            f"{100 * median([s['best_test_acc'] for s in runs]):.2f}",
            f"{seconds:.2f} ({seconds / backprop_seconds:.2f}x)",
            ", ".join(f"{median([s[key] for s in runs]):.2f}" for key in cosines) or "–",
        ])
    write_table(args.results, args.name,
                ["method", "final test acc %", "best test acc %", "s / epoch (vs backprop)",
                 "final cosine per cut (bottom first)"], rows)


if __name__ == "__main__":
    main()
