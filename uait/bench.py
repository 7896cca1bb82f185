"""``uait bench ...``: the benchmarks, each printing its figures beside its baseline."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.console import setup_logging

app = typer.Typer(no_args_is_help=True, help="Benchmarks.")


@app.command("pipeline")
def bench_pipeline(
    commands: Annotated[int, typer.Option(help="small documents to ingest")] = 100_000,
    baseline_commands: Annotated[
        int, typer.Option(help="commands for the batch-size-1 run")
    ] = 5_000,
    paced_rate: Annotated[int, typer.Option(help="commands/s of the latency run")] = 500,
    paced_seconds: Annotated[int, typer.Option(help="length of the latency run")] = 10,
) -> None:
    """Publish -> worker -> event store -> projection throughput, batched vs one per txn."""
    from bench.pipeline import main as run_bench

    setup_logging("WARNING")
    run_bench(
        commands=commands,
        baseline_commands=baseline_commands,
        paced_rate=paced_rate,
        paced_seconds=paced_seconds,
    )


@app.command("embed")
def bench_embed(
    sentences: Annotated[int, typer.Option(min=1, help="sentences per round")] = 1000,
    chunks: Annotated[int, typer.Option(min=1, help="default-size chunks per round")] = 300,
    rounds: Annotated[int, typer.Option(min=1, help="alternating rounds; medians")] = 3,
    batch: Annotated[int, typer.Option(min=1, help="texts per model call")] = 32,
    threads: Annotated[int, typer.Option(min=0, help="threads (0: one per core)")] = 0,
    baseline_python: Annotated[
        str, typer.Option(help="a Python with torch and transformers, for the baseline")
    ] = "",
) -> None:
    """The local embedder (all-MiniLM-L6-v2 on onnxruntime) against torch on the same texts."""
    from bench.embed import main as run_bench

    setup_logging("WARNING", fmt="text")
    run_bench(
        sentences=sentences,
        chunks=chunks,
        rounds=rounds,
        batch=batch,
        threads=threads,
        baseline=baseline_python,
    )


@app.command("retry")
def bench_retry(
    commands: Annotated[int, typer.Option(help="documents per round and path")] = 5000,
    rounds: Annotated[int, typer.Option(help="rounds of each path (medians)")] = 3,
) -> None:
    """Commands/s through the retry path (each failing once) against the normal path."""
    from bench.retry import main as run_bench

    setup_logging("WARNING", fmt="text")
    run_bench(commands=commands, rounds=rounds)


@app.command("ingress")
def bench_ingress(
    seconds: Annotated[int, typer.Option(help="length of each wrk run")] = 10,
    rounds: Annotated[int, typer.Option(help="alternating rounds; medians are reported")] = 3,
    connections: Annotated[int, typer.Option(help="wrk connections")] = 32,
) -> None:
    """The authenticated, rate-limited, validated publish path against a bare endpoint."""
    from bench.ingress import main as run_bench

    setup_logging("WARNING", fmt="text")
    run_bench(seconds=seconds, rounds=rounds, connections=connections)


@app.command("rebuild")
def bench_rebuild(
    count: Annotated[int, typer.Option("--events", help="events to generate")] = 1_000_000,
    sample: Annotated[int, typer.Option(help="events for the library's plain runner")] = 20_000,
    batch_size: Annotated[int, typer.Option(help="events per rebuild transaction")] = 10_000,
) -> None:
    """Blue/green rebuild rate against the eventsourcing library's plain ProjectionRunner."""
    from bench.rebuild import main as run_bench

    setup_logging("WARNING", fmt="text")
    run_bench(events_count=count, sample=sample, batch_size=batch_size)


@app.command("lag")
def bench_lag(
    rate: Annotated[int, typer.Option(min=1, help="events appended per second")] = 500,
    seconds: Annotated[float, typer.Option(min=1, help="length of the paced run")] = 30,
    per_append: Annotated[int, typer.Option(min=1, help="events per append")] = 5,
) -> None:
    """p50/p99 time from an event's commit to its read-model row, at a paced rate."""
    from bench.lag import main as run_bench

    setup_logging("WARNING", fmt="text")
    run_bench(rate=rate, seconds=seconds, per_append=per_append)


@app.command("inference")
def bench_inference(
    rounds: Annotated[
        int, typer.Option(min=1, help="alternating rounds; medians are reported")
    ] = 3,
    requests: Annotated[int, typer.Option(min=1, help="requests per round at concurrency 1")] = 30,
    waves: Annotated[
        int, typer.Option(min=1, help="requests per stream per round above concurrency 1")
    ] = 4,
    concurrency: Annotated[
        list[int] | None, typer.Option(min=1, help="streams at once (repeat; default 1 and 32)")
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="tokens per completion")] = 64,
    tokens_per_s: Annotated[
        float, typer.Option(min=1, help="the upstream's pace, per request")
    ] = 200.0,
    first_token_ms: Annotated[
        float, typer.Option(min=0, help="the upstream's time to first token")
    ] = 20.0,
    real: Annotated[bool, typer.Option(help="also the tiny MLX model (concurrency 1)")] = True,
    real_requests: Annotated[int, typer.Option(min=1, help="its requests per round")] = 10,
    env: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE for the uait processes (repeat)")
    ] = None,
) -> None:
    """Time to first token and total latency of streamed completions, direct vs through uait."""
    from bench.inference import Plan
    from bench.inference import main as run_bench
    from bench.upstream import Pace

    setup_logging("WARNING", fmt="text")
    pairs = [item.split("=", 1) for item in env or []]
    if any(len(pair) != 2 for pair in pairs):
        raise typer.BadParameter("--env takes KEY=VALUE")
    pace = Pace(tokens_per_s, first_token_ms / 1000, max_tokens)
    run_bench(
        Plan(
            rounds=rounds,
            requests=requests,
            waves=waves,
            concurrency=tuple(concurrency or (1, 32)),
            max_tokens=max_tokens,
            pace=pace,
            real=real,
            real_requests=real_requests,
            env=dict(pairs),
        )
    )


@app.command(
    "alternate",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def bench_alternate(
    ctx: typer.Context,
    base: Annotated[str, typer.Option(help="the baseline revision (A)")] = "origin/main",
    head: Annotated[str, typer.Option(help="the revision compared with it (last)")] = "HEAD",
    via: Annotated[
        list[str] | None, typer.Option(help="revisions between them, for a coarse bisection")
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="runs of each build")] = 3,
) -> None:
    """Revisions' figures for one bench, in alternating runs: `uait bench alternate --base REV
    -- pipeline --commands 50000`. Prints the medians and their ratios to the base's."""
    from pathlib import Path

    from bench.alternate import main as run_bench
    from infra.settings import Settings

    if not ctx.args:
        raise typer.BadParameter("name the bench after --, e.g. -- pipeline --commands 50000")
    repo = Path.cwd()
    root = Settings().data_dir.absolute() / "alternate"
    revisions = [base, *(via or []), head]
    run_bench(revisions=revisions, rounds=rounds, bench=list(ctx.args), repo=repo, root=root)
