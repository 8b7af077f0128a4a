"""The command line: one subcommand per verb, each a thin call into the Python API.

A user's mistake ends in one line on stderr (``error: ...``) and exit status 2, never a
stack trace.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from widedeep.errors import ConfigError, WideDeepError

app = typer.Typer(
    name="widedeep",
    help="Train, evaluate and use Wide & Deep models for recommendation and CTR prediction.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PRECISION_HELP = (
    "fp32, or bf16 (auto: bf16 on a CPU with AMX or AVX-512 BF16) to run the deep part "
    "under bfloat16 autocast"
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
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="Run config YAML (data, schema, model, train).")],
    output: OutputDir = Path("runs/train"),
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: --set train.epochs=3 (repeatable)."),
    ] = None,
    warm_start: Annotated[
        Path | None,
        typer.Option(help="Start from this bundle's weights (rows matched by value)."),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the run in this folder from its checkpoint, exactly where it stopped "
            "(CONFIG must match the checkpoint's).",
        ),
    ] = None,
) -> None:
    """Train a model from CONFIG and write a run directory with the bundle, metrics and plots.

    A checkpoint is kept in RUN/checkpoint (every epoch, and every train.checkpoint_every
    steps); --resume RUN continues from it with the same result as an uninterrupted run. A
    finished run trains no further: its bundle, metrics and plots are written again.

    Example: widedeep train adult.yaml --output runs/adult --set train.epochs=5

    Example: widedeep train adult.yaml --output runs/adult-2 --warm-start runs/adult/bundle

    Example: widedeep train adult.yaml --resume runs/adult

    Example (data-parallel, 2 processes): torchrun --nproc-per-node 2 -m widedeep train
    adult.yaml --output runs/adult

    Example (resume it, with as many processes): torchrun --nproc-per-node 2 -m widedeep
    train adult.yaml --resume runs/adult
    """
    from widedeep.config import load_config
    from widedeep.training.distributed import is_main
    from widedeep.training.loop import train as run_training

    if resume is not None:
        source = ctx.get_parameter_source("output")
        given = source is not None and source.name != "DEFAULT"
        if given and output.resolve() != resume.resolve():
            raise ConfigError(
                f"--output {output} and --resume {resume} name different run directories; "
                "--resume continues the run in its own folder"
            )
        output = resume
    run_config = load_config(config, overrides or [])
    result = run_training(run_config, output, warm_start_from=warm_start, resume=resume is not None)
    if is_main():  # under torchrun, rank 0 reports the run it wrote
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


def _strict_json(value: object) -> object:
    """JSON-safe copy: NaN (an undefined metric) becomes null."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by train.")],
    data: Annotated[Path, typer.Argument(help="Labelled table, or test interactions.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ranking: Annotated[
        bool, typer.Option("--ranking", help="Rank items per user (HR, NDCG, MRR, ...).")
    ] = False,
    users: Annotated[
        Path | None, typer.Option(help="With --ranking: the users table (features).")
    ] = None,
    items: Annotated[
        Path | None, typer.Option(help="With --ranking: the items table (default: bundle's).")
    ] = None,
    train_interactions: Annotated[
        Path | None,
        typer.Option(
            "--train", help="With --ranking: training interactions (excluded; popularity)."
        ),
    ] = None,
    protocol: Annotated[
        str, typer.Option(help="With --ranking: full (all unseen items) or sampled (1 + 99).")
    ] = "full",
    k: Annotated[int, typer.Option("-k", help="With --ranking: the cut-off K.")] = 10,
    negatives: Annotated[int, typer.Option(help="With --protocol sampled: negatives.")] = 99,
    seed: Annotated[int, typer.Option(help="With --protocol sampled: sampling seed.")] = 0,
    precision: Annotated[
        str, typer.Option(help=PRECISION_HELP + "; --ranking scores in fp32.")
    ] = "fp32",
) -> None:
    """Score a labelled table and print its metrics (AUC, logloss, ...), or with --ranking,
    rank items for the test users beside a popularity baseline.

    Example: widedeep evaluate runs/adult/bundle test.parquet --json

    Example: widedeep evaluate runs/app/bundle runs/app/interactions/test.parquet --ranking
    --users users.parquet --train runs/app/interactions/train.parquet -k 10
    """
    from widedeep.bundle import load_bundle
    from widedeep.precision import check_precision

    chosen = check_precision(precision, "--precision")
    if ranking and chosen != "fp32":
        raise ConfigError(f"--precision {chosen} applies to row scoring; --ranking is fp32")
    loaded = load_bundle(bundle)
    if not ranking:
        metrics = loaded.evaluate(data, precision=chosen)
        if as_json:
            typer.echo(json.dumps(_strict_json(metrics)))
        else:
            _print_metrics(str(data), metrics)
        return
    from widedeep.ranking import evaluate_ranking

    if users is None:
        raise ConfigError("--ranking needs --users (the users table with their features)")
    if protocol not in ("full", "sampled"):
        raise ConfigError(f"--protocol must be 'full' or 'sampled', got '{protocol}'")
    result = evaluate_ranking(
        loaded,
        data,
        users,
        train=train_interactions,
        items=items,
        protocol=protocol,  # type: ignore[arg-type]
        k=k,
        negatives=negatives,
        seed=seed,
    )
    if as_json:
        typer.echo(json.dumps(_strict_json(result.to_dict())))
        return
    _print_ranking(result)


def _print_ranking(result: object) -> None:
    from widedeep.ranking import RankingResult

    assert isinstance(result, RankingResult)
    keys = [key for key in result.popularity if key != "users"]
    typer.echo(f"ranking, {result.protocol} protocol, {int(result.model['users'])} test users")
    typer.echo(f"{'':<12}" + "".join(f"{key:>14}" for key in keys))
    for name, metrics in (("Wide & Deep", result.model), ("popularity", result.popularity)):
        typer.echo(f"{name:<12}" + "".join(f"{metrics[key]:>14.4f}" for key in keys))
    if "gauc" in result.model:
        typer.echo(f"gAUC of the test impressions: {result.model['gauc']:.4f}")


@app.command()
def promote(
    new_bundle: Annotated[Path, typer.Argument(help="The newly trained bundle.")],
    old_bundle: Annotated[
        Path, typer.Argument(help="The bundle in use (need not exist for a first model).")
    ],
    holdout: Annotated[Path, typer.Option(help="Labelled table both bundles are scored on.")],
    metric: Annotated[
        str | None,
        typer.Option(help="Deciding metric: auc, accuracy, logloss, ece; rmse, mae."),
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="How much worse than the old bundle the new one may be.")
    ] = 0.0,
    target: Annotated[
        Path | None, typer.Option(help="Install the new bundle here when it is promoted.")
    ] = None,
) -> None:
    """Promote NEW_BUNDLE if it scores no worse than OLD_BUNDLE on the holdout.

    The metric defaults to auc (binary) or rmse (regression); for a lower-is-better metric
    the new bundle must score at most old + tolerance, else at least old - tolerance. The
    decision is written to promotion.json beside NEW_BUNDLE; with --target, a promoted
    bundle is installed there atomically (the replaced one kept as TARGET.previous).

    Exit status: 0 promoted, 1 refused, 2 error.

    Example: widedeep promote runs/day2/bundle serving/bundle --holdout holdout.parquet
    --metric auc --tolerance 0.002 --target serving/bundle
    """
    from widedeep.promote import promote as run_promotion

    decision = run_promotion(
        new_bundle, old_bundle, holdout, target=target, metric=metric, tolerance=tolerance
    )
    direction = "higher" if decision.higher_is_better else "lower"
    typer.echo(f"metric: {decision.metric} ({direction} is better), tolerance {tolerance:g}")
    typer.echo(f"new: {decision.new_value:.6f}  {decision.new_bundle}")
    if decision.old_value is None:
        typer.echo(f"old: none  ({old_bundle} does not exist)")
    else:
        typer.echo(f"old: {decision.old_value:.6f}  {decision.old_bundle}")
    typer.echo(f"{'promoted' if decision.promoted else 'refused'}: {decision.reason}")
    if decision.installed is not None:
        typer.echo(f"installed at {decision.installed}")
    typer.echo(f"record: {decision.record}")
    if not decision.promoted:
        raise typer.Exit(code=1)


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by train.")],
    data: Annotated[Path, typer.Argument(help="Table to score (.parquet or .csv).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write: .parquet or .csv.")
    ],
    column: Annotated[str, typer.Option(help="Name of the added score column.")] = "score",
    precision: Annotated[str, typer.Option(help=PRECISION_HELP + ".")] = "fp32",
) -> None:
    """Add a score column to DATA (other columns kept) and write it to OUTPUT.

    Example: widedeep predict runs/adult/bundle new.csv --output scored.parquet
    """
    from widedeep.bundle import load_bundle
    from widedeep.precision import check_precision
    from widedeep.tables import write_table

    chosen = check_precision(precision, "--precision")
    frame = load_bundle(bundle).predict_frame(data, column=column, precision=chosen)
    write_table(frame, output)
    typer.echo(f"wrote {frame.height} rows to {output}")


@app.command()
def recommend(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by train.")],
    users: Annotated[Path, typer.Option(help="Users table: the user key and features.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write recommendations.")],
    items: Annotated[
        Path | None, typer.Option(help="Items table (default: the bundle's catalog).")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="How many items per user.")] = 10,
    exclude_seen: Annotated[
        Path | None, typer.Option(help="Interactions whose (user, item) pairs to leave out.")
    ] = None,
    candidates: Annotated[
        Path | None, typer.Option(help="A (user, item) table: rank only these per user.")
    ] = None,
    retrieval: Annotated[
        str | None, typer.Option(help="Retrieval stage first: popular or cooccurrence.")
    ] = None,
    num_candidates: Annotated[int, typer.Option(help="Candidates per user from retrieval.")] = 200,
    skip_unknown_items: Annotated[
        bool, typer.Option(help="Skip candidate items not in the catalog (else an error).")
    ] = False,
) -> None:
    """Write the top-K items for every user: rows of (user, rank, item, score).

    Example: widedeep recommend runs/app/bundle --users users.parquet -k 10
    --exclude-seen runs/app/interactions/train.parquet --output recs.parquet
    """
    from widedeep.bundle import load_bundle
    from widedeep.recommend import top_k
    from widedeep.tables import write_table

    if retrieval not in (None, "popular", "cooccurrence"):
        raise ConfigError(f"--retrieval must be 'popular' or 'cooccurrence', got '{retrieval}'")
    frame = top_k(
        load_bundle(bundle),
        users,
        k=k,
        items=items,
        exclude_seen=exclude_seen,
        candidates=candidates,
        on_unknown_items="skip" if skip_unknown_items else "error",
        retrieval=retrieval,  # type: ignore[arg-type]
        num_candidates=num_candidates,
    )
    write_table(frame, output)
    typer.echo(f"wrote {frame.height} recommendations to {output}")


@app.command()
def export(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by train.")],
    format: Annotated[str, typer.Option("--format", "-f", help="pt2 (torch.export) or onnx.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="model.pt2 / model.onnx, or a folder.")
    ],
) -> None:
    """Export BUNDLE as a standalone program with a dynamic batch dimension.

    The program takes encoded ids and numbers; the id encoding runs in widedeep.export's
    ExportedScorer from the preprocessor copy written beside it.

    Example: widedeep export runs/adult/bundle --format onnx --output model.onnx
    """
    from widedeep.export import FORMATS, export_bundle

    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {list(FORMATS)}, got {format!r}")
    written = export_bundle(bundle, format, output)
    typer.echo(f"wrote {written} (+ .preprocessor.json, .manifest.json beside it)")


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by train.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    threads: Annotated[
        int | None, typer.Option(help="Scoring threads (micro-batches of a request).")
    ] = None,
    users: Annotated[
        Path | None, typer.Option(help="Users table, so /v1/recommend accepts a user_id.")
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option(help="Requests scored at once; more get a fast 503.")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Per-request timeout, seconds.")] = None,
    micro_batch: Annotated[int | None, typer.Option(help="Rows per micro-batch.")] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP + " in /v1/score.")] = "fp32",
) -> None:
    """Answer HTTP scoring and recommendation requests from BUNDLE (needs widedeep\\[serve]).

    Endpoints: POST /v1/score, POST /v1/recommend, GET /v1/health, GET /v1/metadata;
    OpenAPI docs at /docs.

    Example: widedeep serve runs/adult/bundle --port 8000 --threads 2
    """
    from widedeep.serve import serve as run_server

    settings: dict[str, Any] = {
        name: value
        for name, value in {
            "max_concurrency": max_concurrency,
            "request_timeout_s": timeout,
            "micro_batch": micro_batch,
            "precision": precision,
        }.items()
        if value is not None
    }
    run_server(bundle, host=host, port=port, threads=threads, users=users, **settings)


@app.command("bench-serve")
def bench_serve(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by train.")],
    requests: Annotated[int, typer.Option(help="Timed requests per layout.")] = 200,
    threads_batches: Annotated[
        str, typer.Option(help="Layouts THREADSxMICRO_BATCH for the largest candidate count.")
    ] = "1x200,2x100,4x50",
    candidates: Annotated[str, typer.Option(help="Rows per request, comma separated.")] = "200,50",
    data: Annotated[
        Path | None, typer.Option(help="Table to cut requests from (default: the test split).")
    ] = None,
) -> None:
    """Print /v1/score latency (p50, p99, requests/s) per layout, as the paper's Table 2.

    Requests go through the serving app in-process (no sockets); at smaller candidate counts
    each layout keeps its threads and micro-batches per request (4x50 -> 4x13 at 50).

    Example: widedeep bench-serve runs/demo/bundle --candidates 200,50
    """
    from widedeep import serve_bench as sb
    from widedeep.bundle import load_bundle

    layouts = sb.parse_layouts(threads_batches, "--threads-batches")
    counts = sb.parse_counts(candidates, "--candidates")
    if requests < 1:
        raise ConfigError(f"--requests must be at least 1, got {requests}")
    loaded = load_bundle(bundle)
    table = sb.request_table(loaded, data)
    typer.echo(f"bundle:   {bundle}")
    typer.echo(f"requests: {requests} timed per layout (after 20 warm-up), rows {table.source}")
    typer.echo(f"path:     {sb.PATH}")
    typer.echo(f"machine:  {sb.machine()}")
    typer.echo("settings: torch threads = cores // threads (as widedeep serve); else defaults\n")
    typer.echo(sb.format_table(sb.bench_serve(loaded, table, layouts, counts, requests=requests)))


datasets = typer.Typer(help="Make or fetch data sets.", no_args_is_help=True)
app.add_typer(datasets, name="datasets")


@datasets.command("make")
def datasets_make(
    name: Annotated[str, typer.Argument(help="The data set to generate: appstore.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write.")],
    users: Annotated[int, typer.Option(help="Number of users.")] = 10_000,
    apps: Annotated[int, typer.Option(help="Number of apps.")] = 1_000,
    impressions: Annotated[int, typer.Option(help="Number of impressions.")] = 300_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
) -> None:
    """Generate the synthetic app store: users, apps and install-labelled impressions.

    Example: widedeep datasets make appstore --impressions 1000000 --output data/appstore
    """
    from widedeep.data.appstore import make_appstore

    if name != "appstore":
        raise ConfigError(f"unknown data set '{name}'; this command makes: appstore")
    files = make_appstore(output, users=users, apps=apps, impressions=impressions, seed=seed)
    typer.echo(f"wrote {files.users}, {files.apps} and {files.impressions}")
    typer.echo(f"install rate {files.positive_rate:.3f}")


@datasets.command("fetch")
def datasets_fetch(
    name: Annotated[str, typer.Argument(help="movielens-100k, -1m, -20m or -25m.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to download into.")] = Path(
        "data"
    ),
) -> None:
    """Download a MovieLens archive from GroupLens and unpack it (needs internet).

    Example: widedeep datasets fetch movielens-100k --output data
    """
    from widedeep.data.movielens import fetch_movielens

    folder = fetch_movielens(name, output)
    typer.echo(f"{name} is in {folder}")


@app.command()
def demo(
    output: OutputDir = Path("runs/demo"),
    task: Annotated[
        str, typer.Option(help="census (Adult income) or recommend (the app store).")
    ] = "census",
    compare: Annotated[
        bool,
        typer.Option(help="census: also train wide-only and deep-only models (Table 1)."),
    ] = False,
) -> None:
    """Train on bundled or generated data and show held-out results, offline.

    Example: widedeep demo --output runs/demo --compare

    Example: widedeep demo --task recommend --output runs/appstore
    """

    if task == "recommend":
        _appstore_demo(output)
        return
    if task != "census":
        raise ConfigError(f"--task must be 'census' or 'recommend', got '{task}'")
    from widedeep.demo import census_demo

    typer.echo("Training Wide & Deep on the UCI Adult census data (income > 50K)...")
    results = census_demo(output, compare=compare)
    _report_run(results["wide_deep"])
    if compare:
        _print_ablation(results)


def _print_ablation(results: dict[str, Any]) -> None:
    typer.echo(f"\n{'held-out test split':<20}{'AUC':>9}{'logloss':>10}{'accuracy':>10}")
    for parts, result in results.items():
        metrics = result.test_metrics or {}
        typer.echo(
            f"{parts:<20}{metrics['auc']:>9.4f}{metrics['logloss']:>10.4f}"
            f"{metrics['accuracy']:>10.4f}"
        )


def _appstore_demo(output: Path) -> None:
    from widedeep.demo import appstore_demo

    typer.echo("Generating the synthetic app store and training wide, deep and Wide & Deep...")
    result = appstore_demo(output)
    _report_run(result.runs["wide_deep"])
    _print_ablation(result.runs)
    typer.echo("")
    _print_ranking(result.ranking)
    model, baseline = result.ranking.model["ndcg@10"], result.ranking.popularity["ndcg@10"]
    typer.echo(
        f"NDCG@10: Wide & Deep {model:.4f} vs popularity {baseline:.4f} "
        f"({(model / baseline - 1) * 100:+.0f}%)"
    )
    typer.echo("\ntop-5 recommendations:")
    typer.echo(str(result.recommendations))


def main() -> None:
    """Console entry point: run the app, turning widedeep errors into one clear line."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app()
    except WideDeepError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
