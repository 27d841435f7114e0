"""The commands of `keras-regkit`: demo, inspect, search, export,
sensitivity.

The console script's entry point is `keras_regkit_cli.main`, a module
outside this package that parses the arguments and loads Keras quietly
before it imports this one; `main` here parses and runs in one call (for
`python -m keras_regkit` and for tests).
"""

from __future__ import annotations

import argparse
import os
import sys

from keras_regkit_cli import parse_args


def demo(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from keras_regkit import demo as demo_lib

    epochs, shrink_epochs = (3, 2) if args.quick else (args.epochs, args.shrink_epochs)
    try:
        print(f"keras-regkit demo: {args.dataset}, 4 methods x ({epochs} epochs + {shrink_epochs} shrink epochs)")
        results = demo_lib.run(args.dataset, epochs, shrink_epochs, verbose=0 if args.no_progress else 1)
        print()
        print(demo_lib.table(results, epochs))
        if args.plot:
            demo_lib.plot(results, epochs, args.plot)
            print(f"wrote {args.plot}")
    except demo_lib.DemoError as error:
        return _fail(f"demo: {error}")
    return 0


def inspect(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import json

    import keras_regkit as rk  # registers its classes before the load

    model = _load_model(args.path, "inspect")
    if model is None:
        return 1
    weights = "all" if args.all_weights else "kernel"
    try:  # a model saved before it was built has no weights: said, not a traceback
        if not args.all_weights and not any(True for _ in rk.iter_weights(model, "kernel")):
            weights = "all"  # e.g. an embedding model: report what it has
        report = rk.sparsity_report(model, weights=weights, threshold=args.threshold, relative=args.relative)
    except ValueError as error:
        return _fail(f"inspect: {error}")
    if args.json:
        print(json.dumps({"model": model.name, **report.to_dict()}, indent=2))
    else:
        print(f"{model.name}: {report.total.params:,} weights in {len(report.layers)} tensors")
        print(report)
    if args.plot:
        _plot_histograms(model, weights, args.plot)
    return 0


def search(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import json
    import warnings

    import keras

    import keras_regkit as rk
    from keras_regkit import demo as demo_lib

    quick = args.quick
    try:
        (x, y), validation, _ = demo_lib.load_dataset(args.dataset)
    except demo_lib.DemoError as error:
        return _fail(f"search: {error}")
    units = (32,) if quick else (300, 100)

    def build_model():
        # The demo's MLP (smaller with --quick).
        model = keras.Sequential([keras.Input(x.shape[1:]), *(keras.layers.Dense(u, activation="relu") for u in units),
                                  keras.layers.Dense(10)])
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        return model

    penalties = {
        "l1": rk.regularizers.L1, "l2": rk.regularizers.L2, "expabs": rk.regularizers.ExpAbs,
        "grouplasso": rk.regularizers.GroupLasso,
        "elasticnet": lambda s: rk.regularizers.ElasticNet(l1=s, l2=s),
    }
    shrink = None if args.shrink is None else {"sparsity": args.shrink, "epochs": 1 if quick else 5}
    low, high = (1e-3, 1e-3) if quick else (args.low, args.high)  # --quick: 4 trials of 2 epochs
    print(f"keras-regkit search: {args.dataset}, {args.penalty} from {low:g} to {high:g}", flush=True)
    format_warning = warnings.formatwarning
    try:
        # The search's one warning (unstandardised inputs) as one line, not a source excerpt.
        warnings.formatwarning = lambda message, *_, **__: f"keras-regkit search: note: {message}\n"
        result = rk.search_strength(
            build_model, x, y, validation_data=validation, penalty=penalties[args.penalty], low=low, high=high,
            fine=2 if quick else args.fine, objective=args.objective, epochs=2 if quick else args.epochs,
            batch_size=64, patience=None if quick else args.patience, shrink=shrink, directory=args.directory,
            verbose=0 if args.no_progress else 1,
        )
    except (ImportError, TypeError, ValueError) as error:
        return _fail(f"search: {error}")
    finally:
        warnings.formatwarning = format_warning
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result)
        print(f"best strength: {result.best_strength:g} by {result.objective} "
              f"({len(result.rows)} trials{f'; KerasTuner state in {args.directory}' if args.directory else ''})")
    if args.plot:
        try:
            result.plot(args.plot)
        except (ImportError, OSError) as error:
            return _fail(f"search: cannot write plot {args.plot!r}: {error}")
        print(f"wrote {args.plot}")
    return 0


def export_file(args) -> int:
    """`keras_regkit.export` from the shell: inputs as .npy (one array) or
    .npz (arrays named by the model's inputs; one array for a single-input
    model, whatever its name)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras_regkit as rk  # registers its classes before the load

    model = _load_model(args.path, "export")
    if model is None:
        return 1
    try:
        inputs = {name: _load_arrays(getattr(args, name), f"--{name}", model)
                  for name in ("check", "representative") if getattr(args, name) is not None}
        result = rk.export(model, args.out, int8=args.int8, sparse=args.sparse, check=inputs.get("check"),
                           representative_data=inputs.get("representative"))
    except (ImportError, OSError, TypeError, ValueError) as error:  # ExportCheckError is a ValueError
        return _fail(f"export: {_one_line(error)}")
    print(result)
    return 0


def sensitivity(args) -> int:
    """`keras_regkit.pruning.sensitivity` of a saved model on a .npz file of
    inputs and targets (`y`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import json

    import keras_regkit as rk  # registers its classes before the load

    model = _load_model(args.path, "sensitivity", compile=True)
    if model is None:
        return 1
    try:
        if args.loss is not None:
            model.compile(loss=args.loss, metrics=[args.metric] if args.metric not in (None, "loss") else [])
        elif not model.compiled:
            raise ValueError(f"{args.path!r} was saved without compile(): give --loss (and --metric) to evaluate it")
        inputs, targets = _load_labeled(args.data, model)
        result = rk.pruning.sensitivity(model, (inputs, targets), levels=args.levels, layers=args.layers,
                                        metric=args.metric, score=args.score, method=args.method,
                                        batch_size=args.batch_size)
    except (TypeError, ValueError) as error:
        return _fail(f"sensitivity: {_one_line(error)}")
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            result.plot(args.plot)
        except (ImportError, OSError) as error:
            return _fail(f"sensitivity: cannot write plot {args.plot!r}: {error}")
        print(f"wrote {args.plot}")
    return 0


def _load_labeled(path, model):
    """`(inputs, targets)` from a .npz file: the targets as `y`, the inputs
    as `x` or named by the model's inputs."""
    loaded = _load_arrays(path, "DATA", model)
    if not isinstance(loaded, dict) or "y" not in loaded:
        raise ValueError(
            f"DATA {path!r} needs the targets: expected a .npz file with arrays x and y "
            f"(numpy.savez(path, x=x, y=y)). Received arrays: {sorted(loaded) if isinstance(loaded, dict) else '1'}")
    targets = loaded.pop("y")
    if not loaded:
        raise ValueError(f"DATA {path!r} holds the targets y but no inputs (x, or arrays named by the model's inputs)")
    return (loaded.pop("x") if list(loaded) == ["x"] else loaded), targets


def _load_arrays(path, option, model):
    """The array of a .npy file, or the arrays of a .npz file: a dict, or
    its one array, whatever its name, for a single-input model
    (`np.savez(path, x)` names it `arr_0`)."""
    import zipfile

    import numpy as np

    from keras_regkit.deploy.inputs import input_names

    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                loaded = dict(loaded)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read {option} {path!r}: expected a .npy file (numpy.save) or a .npz file "
                         f"(numpy.savez): {_one_line(error)}") from None
    names, keyed = input_names(model)
    if isinstance(loaded, dict) and len(loaded) == 1 and names is not None and len(names) == 1:
        (array,) = loaded.values()
        return {names[0]: array} if keyed else array
    return loaded


def _one_line(error) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def _plot_histograms(model, weights, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "keras-regkit inspect: --plot needs matplotlib; "
            "install it with: pip install 'keras_regkit[demo]'"
        ) from None
    import numpy as np

    from keras_regkit.weights import iter_weights

    refs = list(iter_weights(model, weights))
    cols = min(3, len(refs))
    rows = -(-len(refs) // cols)
    figure, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for axis, ref in zip(axes.flat, refs):
        # A plot needs the values on the host; the table above never does.
        magnitude = np.abs(np.asarray(ref.variable.numpy(), dtype="float64")).ravel()
        zeros = int((magnitude == 0).sum())
        nonzero = magnitude[(magnitude > 0) & np.isfinite(magnitude)]
        if nonzero.size:
            axis.hist(np.log10(nonzero), bins=50)
        axis.set_title(f"{ref.name}\n{zeros:,} exact zeros", fontsize=9)
        axis.set_xlabel("log10 |w|")
    for axis in list(axes.flat)[len(refs):]:
        axis.axis("off")
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except OSError as error:
        raise SystemExit(f"keras-regkit inspect: cannot write plot {path!r}: {error}") from None
    print(f"wrote {path}")


def _load_model(path, command, compile=False):
    """The model saved at `path`, or None after a one-line error."""
    import keras

    try:
        return keras.saving.load_model(path, compile=compile)
    except Exception as error:  # any failure to load is the user's file's
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        _fail(f"{command}: cannot load {path!r} as a Keras model: {message}")
        return None


def _fail(message) -> int:
    print(f"keras-regkit {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    """Runs the command `args` (from `keras_regkit_cli.parse_args`) names.

    Returns:
        The exit status: 0 on success, 1 after a one-line error.
    """
    plot = getattr(args, "plot", None)
    if plot and not os.path.isdir(os.path.dirname(os.path.abspath(plot))):
        # Before the work: a demo or search would otherwise train for minutes first.
        return _fail(f"{args.command}: cannot write plot {plot!r}: its directory does not exist")
    commands = {"demo": demo, "inspect": inspect, "search": search, "export": export_file, "sensitivity": sensitivity}
    return commands[args.command](args)


def main(argv=None) -> int:
    """Parses `argv` (default: the process's arguments) and runs the command.

    Returns:
        The exit status: 0 on success, 1 after a one-line error; exits with
        2 for bad arguments.
    """
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
