"""``uait bench alternate``: builds of uait, benchmarked in turns, in one sitting.

Each build is a git revision checked out into a worktree of its own (under the data dir), run
with this checkout's interpreter and dependencies, so only the code differs. Rounds take the
builds in turn, in an order that rotates each round (A B C, B C A, ...), so that a slower
minute of a shared machine hits every build alike. Every run's summary line (the last line a
bench prints) is kept; the first figure of each is the one compared: medians per build and
their ratio to the first build's. With more than two revisions this is a coarse bisection: the
step where the ratio moves is where to look.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from pathlib import Path

console = Console()
_NUMBER = re.compile(r"(\d[\d,]*(?:\.\d+)?)")


@dataclass
class Build:
    label: str
    revision: str
    path: Path
    runs: list[tuple[str, float, float]] = field(default_factory=list)
    """(summary line, first figure, seconds the run took)."""

    @property
    def entry(self) -> list[str]:
        """How this build's command line is started (it moved in the structure work)."""
        module = "uait" if (self.path / "uait" / "__main__.py").exists() else "infra.cli"
        return [sys.executable, "-m", module]


def worktree(repo: Path, revision: str, root: Path) -> Path:
    """A clean checkout of ``revision`` (made once, reused while the revision is the same)."""
    sha = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", revision], check=True, capture_output=True, text=True
    ).stdout.strip()
    path = root / sha[:12]
    if not (path / ".git").exists():
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "add", "--detach", "--force", str(path), sha],
            check=True,
            capture_output=True,
        )
    return path


def first_figure(line: str) -> float:
    match = _NUMBER.search(line)
    if match is None:
        raise ValueError(f"no figure in the summary line {line!r}")
    return float(match.group(1).replace(",", ""))


def run_once(build: Build, bench: list[str]) -> tuple[str, float, float]:
    started = time.monotonic()
    result = subprocess.run(
        [*build.entry, "bench", *bench],
        cwd=build.path,
        env={**_env(), "PYTHONPATH": str(build.path)},
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.monotonic() - started
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        tail = "\n".join((result.stderr or result.stdout).splitlines()[-20:])
        raise RuntimeError(f"{build.label} ({build.revision}) failed:\n{tail}")
    summary = lines[-1]
    return summary, first_figure(summary), took


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("UAIT_")}


def main(*, revisions: list[str], rounds: int, bench: list[str], repo: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    builds = [
        Build(chr(ord("A") + i), rev, worktree(repo, rev, root)) for i, rev in enumerate(revisions)
    ]
    console.print(f"[bold]uait bench {' '.join(bench)}[/bold]: {rounds} rounds of {len(builds)}")
    for round_ in range(1, rounds + 1):
        shift = (round_ - 1) % len(builds)
        for build in builds[shift:] + builds[:shift]:
            summary, figure, took = run_once(build, bench)
            build.runs.append((summary, figure, took))
            label = f"round {round_} {build.label} {build.revision}"
            console.print(f"{label}: {summary} ({took:.0f} s)")
    table = Table(
        "build", "revision", *(f"run {i}" for i in range(1, rounds + 1)), "median", "ratio"
    )
    base = statistics.median(f for _, f, _ in builds[0].runs)
    medians = []
    for build in builds:
        figures = [f for _, f, _ in build.runs]
        median = statistics.median(figures)
        medians.append(median)
        table.add_row(
            build.label,
            build.revision,
            *(f"{f:,.1f}" for f in figures),
            f"{median:,.1f}",
            f"{median / base:.2f}",
        )
    console.print(table)
    parts = ", ".join(f"{b.revision} {m:,.1f}" for b, m in zip(builds, medians, strict=True))
    print(f"alternate: {parts}: ratio {medians[-1] / base:.2f} (medians of {rounds})")
