"""``uait bench alternate``: two builds of uait, benchmarked in turns, in one sitting.

Each build is a git revision checked out into a worktree of its own (under the data dir), run
with this checkout's interpreter and dependencies, so only the code differs. Rounds alternate
(A, B, A, B, ...) so that a slower minute of a shared machine hits both builds alike. Every
run's summary line (the last line a bench prints) is kept; the first figure of each is the one
compared: medians per build and their ratio.
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


def main(*, base: str, head: str, rounds: int, bench: list[str], repo: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    builds = [
        Build("A", base, worktree(repo, base, root)),
        Build("B", head, worktree(repo, head, root)),
    ]
    console.print(f"[bold]uait bench {' '.join(bench)}[/bold]: {rounds} alternating rounds")
    for round_ in range(1, rounds + 1):
        for build in builds if round_ % 2 else reversed(builds):
            summary, figure, took = run_once(build, bench)
            build.runs.append((summary, figure, took))
            console.print(
                f"round {round_} {build.label} {build.revision}: {summary} ({took:.0f} s)"
            )
    table = Table("build", "revision", *(f"run {i}" for i in range(1, rounds + 1)), "median")
    for build in builds:
        figures = [f for _, f, _ in build.runs]
        table.add_row(
            build.label,
            build.revision,
            *(f"{f:,.1f}" for f in figures),
            f"{statistics.median(figures):,.1f}",
        )
    console.print(table)
    a = statistics.median(f for _, f, _ in builds[0].runs)
    b = statistics.median(f for _, f, _ in builds[1].runs)
    print(f"alternate: {base} {a:,.1f}, {head} {b:,.1f}: ratio {b / a:.2f} (medians of {rounds})")
