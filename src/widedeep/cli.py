"""The command line: one subcommand per verb, each a thin call into the Python API.

A user's mistake ends in one line on stderr (``error: ...``) and exit status 2, never a
stack trace.
"""

from __future__ import annotations

import json
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from widedeep.errors import WideDeepError

app = typer.Typer(
    name="widedeep",
    help="Train, evaluate and use Wide & Deep models for recommendation and CTR prediction.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

OutputDir = Annotated[
    Path, typer.Option("--output", "-o", help="Run directory to write (created if missing).")
]


def _print_metrics(title: str, metrics: dict[str, float] | None) -> None:
    if not metrics:
        return
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    typer.echo(f"{title}: {shown}")


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Run config YAML (data, schema, model, train).")],
    output: OutputDir = Path("runs/train"),
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: --set train.epochs=3 (repeatable)."),
    ] = None,
) -> None:
    """Train a model from CONFIG and write a run directory with the bundle, metrics and plots.

    Example: widedeep train adult.yaml --output runs/adult --set train.epochs=5
    """
    from widedeep.config import load_config
    from widedeep.training.loop import train as run_training

    run_config = load_config(config, overrides or [])
    result = run_training(run_config, output)
    _report_run(result)


def _report_run(result: object) -> None:
    from widedeep.training.loop import TrainResult

    assert isinstance(result, TrainResult)
    _print_metrics(f"validation (best epoch {result.best_epoch})", result.validation_metrics)
    _print_metrics("test", result.test_metrics)
    typer.echo(f"bundle:  {result.bundle_dir}")
    typer.echo(f"metrics: {result.run_dir / 'metrics.csv'}")
    for plot in result.plots:
        typer.echo(f"plot:    {plot}")


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by train.")],
    data: Annotated[Path, typer.Argument(help="Labelled table (.parquet or .csv).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score a labelled table with a bundle and print its metrics (AUC, logloss, ...).

    Example: widedeep evaluate runs/adult/bundle test.parquet --json
    """
    from widedeep.bundle import load_bundle

    metrics = load_bundle(bundle).evaluate(data)
    if as_json:
        # Strict JSON: an undefined metric (AUC of a one-class table) is null, not NaN.
        typer.echo(json.dumps({k: None if v != v else v for k, v in metrics.items()}))
    else:
        _print_metrics(str(data), metrics)


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by train.")],
    data: Annotated[Path, typer.Argument(help="Table to score (.parquet or .csv).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write: .parquet or .csv.")
    ],
    column: Annotated[str, typer.Option(help="Name of the added score column.")] = "score",
) -> None:
    """Add a score column to DATA (other columns kept) and write it to OUTPUT.

    Example: widedeep predict runs/adult/bundle new.csv --output scored.parquet
    """
    from widedeep.bundle import load_bundle
    from widedeep.tables import write_table

    frame = load_bundle(bundle).predict_frame(data, column=column)
    write_table(frame, output)
    typer.echo(f"wrote {frame.height} rows to {output}")


@app.command()
def demo(
    output: OutputDir = Path("runs/demo"),
    compare: Annotated[
        bool,
        typer.Option(help="Also train wide-only and deep-only models and compare (Table 1)."),
    ] = False,
) -> None:
    """Train Wide & Deep on the bundled Adult census data and show held-out results.

    Example: widedeep demo --output runs/demo --compare
    """
    from widedeep.config import load_config
    from widedeep.training.loop import train as run_training
    from widedeep.training.loop import train_ablation

    source = resources.files("widedeep") / "configs" / "adult.yaml"
    with resources.as_file(source) as path:
        run_config = load_config(path)
    typer.echo("Training Wide & Deep on the UCI Adult census data (income > 50K)...")
    if not compare:
        _report_run(run_training(run_config, output))
        return
    results = train_ablation(run_config, output)
    _report_run(results["wide_deep"])
    typer.echo("\nheld-out test split     AUC  logloss  accuracy")
    for parts, result in results.items():
        metrics = result.test_metrics or {}
        typer.echo(
            f"{parts:<20} {metrics['auc']:7.4f}  {metrics['logloss']:7.4f}  "
            f"{metrics['accuracy']:8.4f}"
        )


def main() -> None:
    """Console entry point: run the app, turning widedeep errors into one clear line."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app()
    except WideDeepError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
