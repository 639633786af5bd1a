"""The ``unlearn`` command line.

    unlearn prepare --dataset digits --forget classes=3 --seed 0
    unlearn train --manifest results/manifest-<hash> --model mlp --epochs 20

Each subcommand's ``--help`` explains its flags. Bad input prints one line
naming the field or file and what is accepted, and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from unlearn_core.errors import UserInputError


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="split a dataset and choose the forget set; writes a split manifest",
        description=(
            "Split a dataset into train/val/test, choose the forget set inside train, and "
            "write the split manifest (Parquet) whose content hash keys every later stage. "
            "Deterministic: the same dataset, forget spec and seed always give the same hash."
        ),
        epilog=(
            "forget specs: random=0.1 (10%% of train) | classes=3 | classes=1,2 | "
            "groups=15 (15 identities) | groups=0.02@2,5 (2%% of the identities of classes 2 "
            "and 5) | index=ids.txt (one sample id per line).  "
            "Example: unlearn prepare --dataset digits --forget classes=3 --seed 0"
        ),
    )
    p.add_argument("--dataset", default="digits",
                   help="dataset name (default: digits, bundled with scikit-learn)")
    p.add_argument("--root", default=None,
                   help="data root for datasets stored on disk (mnist, cifar10, ...)")
    p.add_argument("--download", action="store_true",
                   help="download the dataset into --root if it is missing")
    p.add_argument("--forget", required=True, help="forget spec, see below")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and forget set")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the non-test samples held out for validation (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="share held out for test when the dataset has no official test split")
    p.add_argument("--retain-subset-per-class", type=int, default=0,
                   help="size per class of the zero-glance retain subset D_r_sub (seed 003)")
    p.add_argument("--max-train", type=int, default=None, help="subsample train to this size")
    p.add_argument("--out", default=None,
                   help="folder for manifest.parquet (default: results/manifest-<hash>)")
    p.set_defaults(func=cmd_prepare)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from unlearn_core.train.recipe import OPTIMIZERS, SCHEDULES

    p = sub.add_parser(
        "train",
        help="train one model (source or retrained reference) from a manifest",
        description=(
            "Train one model on a manifest's train split (role source) or retain split "
            "(role retrain); write its checkpoint (safetensors) and its per-sample outputs "
            "on every split (Parquet) into --out, and print its accuracies."
        ),
        epilog="Example: unlearn train --manifest results/manifest-<hash> --model mlp --epochs 20",
    )
    p.add_argument("--manifest", required=True, help="folder or file written by `unlearn prepare`")
    p.add_argument("--model", default="mlp", help="architecture (see unlearn_core.models)")
    p.add_argument("--role", default="source", choices=("source", "retrain"),
                   help="source: train on D; retrain: train on D_r only")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and batches")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="cosine", choices=SCHEDULES)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--record-updates", action="store_true",
                   help="record per-batch updates for amnesiac unlearning (seed 001)")
    p.add_argument("--sparsity", type=float, default=0.0,
                   help="after training, one-shot magnitude prune to this sparsity and "
                        "fine-tune with the mask fixed (seed 004: 0.95)")
    p.add_argument("--experiment", default="default", help="experiment name in the outputs")
    p.add_argument("--out", default=None,
                   help="output folder (default: <manifest folder>/<role>-<model>-seed<seed>)")
    p.set_defaults(func=cmd_train)


def cmd_prepare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unlearn_core.data import load_dataset
    from unlearn_core.data.manifest import SplitOptions, make_manifest

    dataset = load_dataset(args.dataset, root=args.root, download=args.download)
    options = SplitOptions(
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        retain_subset_per_class=args.retain_subset_per_class,
        max_train=args.max_train,
    )
    extra = {"root": str(Path(args.root).resolve()) if args.root else None}
    manifest = make_manifest(dataset, args.forget, args.seed, options, extra_meta=extra)
    out = Path(args.out) if args.out else Path("results") / f"manifest-{manifest.hash}"
    path = manifest.write(out)
    sizes = manifest.sizes()
    print(f"manifest {manifest.hash}")
    print(f"dataset {dataset.name}: {dataset.num_samples} samples, {dataset.num_classes} classes")
    print("sizes " + " ".join(f"{k}={v}" for k, v in sizes.items()))
    print(f"written {path}")
    return 0


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pyarrow.compute as pc

    from unlearn_core.checkpoint import save_checkpoint
    from unlearn_core.data import load_dataset
    from unlearn_core.data.manifest import read_manifest
    from unlearn_core.outputs import model_outputs, write_outputs
    from unlearn_core.train.device_data import DeviceData
    from unlearn_core.train.loop import fit
    from unlearn_core.train.recipe import Recipe
    from unlearn_core.train.recorder import RecordedUpdates, UpdateRecorder
    from unlearn_core.train.source import train_model
    from unlearn_core.train.sparsity import MaskHook, prune_model, sparsity_of

    manifest_path = Path(args.manifest)
    manifest = read_manifest(manifest_path)
    dataset = load_dataset(manifest.dataset, root=manifest.meta.get("root"))
    recipe = Recipe(
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule,
        label_smoothing=args.label_smoothing, compile=args.compile,
    ).validate()
    folder = manifest_path if manifest_path.is_dir() else manifest_path.parent
    out = Path(args.out) if args.out else folder / f"{args.role}-{args.model}-seed{args.seed}"
    device = _device(args.device)
    hooks = [UpdateRecorder(out / "updates", seed=args.seed)] if args.record_updates else []
    trained = train_model(dataset, manifest, args.model, recipe, role=args.role, seed=args.seed,
                          device=device, hooks=hooks, progress=sys.stderr.isatty())
    model, seconds = trained.model, trained.fit.seconds
    if args.sparsity > 0:
        masks = prune_model(model, args.sparsity)
        view = "train" if args.role == "source" else "retain"
        data = DeviceData.from_dataset(dataset, manifest.ids(view), device)
        tuned = fit(model, data, recipe, seed=args.seed + 1, hooks=[MaskHook(masks)])
        seconds += tuned.seconds
        print(f"pruned to sparsity {sparsity_of(model):.4f} and fine-tuned")
    model_id = f"{args.role}-{args.model}-seed{args.seed}"
    meta = {"manifest": manifest.hash, "model": args.model, "role": args.role,
            "seed": args.seed, "recipe": recipe.to_dict(), "sparsity": args.sparsity,
            "num_classes": dataset.num_classes, "in_channels": dataset.in_channels,
            "image_size": dataset.image_size, "train_seconds": seconds}
    checkpoint = save_checkpoint(model, out / "checkpoint.safetensors", meta)
    table = model_outputs(model, dataset, manifest, method=args.role, seed=args.seed,
                          model_id=model_id, device=device)
    outputs = write_outputs(table, out / "outputs", experiment=args.experiment, role=args.role,
                            writer_id=model_id)
    accuracies = {}
    for split in ("retain", "forget", "val", "test"):
        rows = table.filter(pc.equal(table.column("split"), split))
        correct = rows.column("correct").to_numpy(zero_copy_only=False)
        accuracies[split] = float(correct.mean()) if len(correct) else float("nan")
    print(f"trained {model_id} in {seconds:.1f}s on {device}")
    print("accuracy " + " ".join(f"{k}={v:.4f}" for k, v in accuracies.items()))
    if args.record_updates:
        recorded = RecordedUpdates(out / "updates")
        share = recorded.affected_share(manifest.ids("forget"))
        print(f"update recording: {recorded.bytes_on_disk} bytes, "
              f"{share:.1%} of batches held a forget sample")
    print(f"checkpoint {checkpoint}")
    print(f"outputs {outputs}")
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    for name in ("run", "quickstart"):
        if name == "run":
            p = sub.add_parser(
                "run", help="run an experiment config end to end on Ray, tracked in MLflow",
                description=(
                    "prepare -> references (a pool of Ray tasks) -> sweep (Ray Tune) -> "
                    "replicate -> assemble, from one YAML config. Every stage skips work that "
                    "exists, so the same command resumes a crashed run. One run per "
                    "experiment at a time: a second one on the same results is refused."),
                epilog="Example: unlearn run pipelines/configs/quickstart.yaml --smoke",
            )
            p.add_argument("config", help="experiment YAML (see pipelines/configs/)")
        else:
            p = sub.add_parser(
                "quickstart", help="run the bundled quickstart config (digits, CPU, minutes)",
                description="Run pipelines/configs/quickstart.yaml: digits, forget class 3, "
                            "an MLP source, 8 references, four methods, 4 replicates.",
                epilog="Example: unlearn quickstart",
            )
        p.add_argument("--smoke", action="store_true",
                       help="shrink the config to run in seconds (few references and trials)")
        p.add_argument("--tracking-uri", default=None,
                       help="MLflow URI (default: the config's tracking_uri, else "
                            "$MLFLOW_TRACKING_URI, else sqlite:///<results>/mlflow.db, "
                            "absolute; ./mlflow.db when the results are not on this disk)")
        p.add_argument("--results", default=None,
                       help="results location: a folder, or file://, s3://, gs://, hdfs://, "
                            "abfs:// (default: the config's results_dir, results). S3 "
                            "settings come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                            "AWS_SECRET_ACCESS_KEY, AWS_REGION")
        p.add_argument("--address", default=None,
                       help="Ray cluster address (default: start a local Ray)")
        p.add_argument("--num-cpus", type=int, default=None,
                       help="CPUs of the local Ray (default: all)")
        p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.config import load_config, quickstart_config_path

    # loaded before pipelines.run is imported (Ray, MLflow): a bad config is refused first
    config = load_config(getattr(args, "config", None) or quickstart_config_path())
    from pipelines.run import run_experiment

    # MLflow's own convention; it is also how a submitted job reaches the cluster's server
    tracking_uri = (args.tracking_uri or config.tracking_uri
                    or os.environ.get("MLFLOW_TRACKING_URI") or None)
    run_experiment(config, smoke=args.smoke, tracking_uri=tracking_uri,
                   results_dir=args.results, address=args.address, num_cpus=args.num_cpus)
    return 0


def _add_methods(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list the registered unlearning methods and hparams",
                       description="List every registered method with its hparams, their "
                                   "defaults and the search space a sweep explores.")
    p.set_defaults(func=cmd_methods)


def cmd_methods(args: argparse.Namespace) -> int:
    import dataclasses

    from unlearn_core.methods import get_method, is_zero_glance, method_names, requirements

    for name in method_names():
        module = get_method(name)
        doc = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
        flags = []
        if is_zero_glance(name):
            flags.append("zero-glance")
        flags += sorted(requirements(name))
        print(f"{name}{'  [' + ', '.join(flags) + ']' if flags else ''}")
        if doc:
            print(f"    {doc}")
        for field in dataclasses.fields(module.Hparams):
            domain = module.SEARCH_SPACE.get(field.name)
            swept = f"  sweep: {domain}" if domain else ""
            print(f"    {field.name} = {field.default!r}{swept}")
    return 0


def _add_tables(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tables", help="recompute tables and plots from results folders",
                       description="Recompute the paper-style tables (Markdown, CSV, LaTeX) "
                                   "and plots from the stored outputs, without retraining. "
                                   "Given several experiments (of one dataset), also print "
                                   "their rows in one table, with a column per config field "
                                   "that differs between them.",
                       epilog="Example: unlearn tables results/quickstart-digits-class3  "
                              "or  unlearn tables s3://bucket/prefix/quickstart-digits-class3"
                              "  or  unlearn tables results/seed004-digits-class3-dense "
                              "results/seed004-digits-class3-sparse95 --out results/seed004")
    p.add_argument("results_dirs", nargs="+", metavar="results_dir",
                   help="an experiment's results folder or URI (several: one combined table)")
    p.add_argument("--bootstrap", type=int, default=None, metavar="N",
                   help="bootstrap replicates of the forget quality's interval (default: the "
                        "config's metrics.fscore_bootstrap, 50; 0: none; each costs one "
                        "scoring of every forget example per row)")
    p.add_argument("--out", default=None, metavar="FOLDER",
                   help="with several experiments: write the combined tables here as "
                        "combined.{md,csv,tex} and combined_mia.{md,csv,tex}")
    p.set_defaults(func=cmd_tables)


def cmd_tables(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from pipelines.assemble import assemble
    from pipelines.compare import combined_table, open_experiments
    from pipelines.tables import to_markdown, write_table

    if args.bootstrap is not None and args.bootstrap < 0:
        raise UserInputError(f"--bootstrap {args.bootstrap}: expected 0 or more")
    # every experiment is opened (and the datasets compared) before any is assembled
    stores, configs = open_experiments(args.results_dirs)
    several = len(stores) > 1
    for store in stores:
        assembled = assemble(store, bootstrap=args.bootstrap)
        if several:
            print(f"## {store.experiment}\n")
        print(assembled["markdown"])
        print(f"tables {store.store.url('tables')}")
        for path in assembled["plots"]:
            print(f"plot   {store.store.url('plots/' + path.name)}")
        shutil.rmtree(Path(assembled["tables"]).parent, ignore_errors=True)  # local staging
        if several:
            print()
    if not several:
        return 0
    for name, out_name in (("results", "combined"), ("mia", "combined_mia")):
        combined = combined_table(stores, configs, name)
        if combined is None:
            continue
        print(f"## all experiments: {name}\n")
        print(to_markdown(*combined))
        if args.out:
            write_table(Path(args.out), out_name, *combined)
            print(f"table  {Path(args.out) / (out_name + '.md')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unlearn",
        description="Machine-unlearning research at scale: prepare splits, train source and "
                    "reference models, sweep unlearning methods, assemble F-score tables.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    _add_train(sub)
    _add_run(sub)
    from pipelines import jobs, submit  # light: Ray's SDK is imported only when they run

    submit.register(sub)
    jobs.register(sub)
    _add_methods(sub)
    _add_tables(sub)
    from pipelines import cli_results  # status, report: light until they run

    cli_results.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserInputError as err:
        print(f"unlearn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
