"""Benchmark of the agentic service's workspace preparation against raw git, in the same run.

Run it as a script (it is not a pytest test)::

    python tests/bench/bench_agentic.py            # full run: 3 rounds x 2 sides x 200
    python tests/bench/bench_agentic.py --quick    # smoke run: 3 rounds x 2 sides x 30
    python tests/bench/bench_agentic.py --json     # the results as JSON on stdout

One local repository (300 small files in nested directories, one commit) is copied fresh
for every side of every round; then N task workspaces are made on N new branches:

- baseline: raw `git -C repo worktree add -b bench/base-N -- <dir> main`, N times;
- fleetbus: `prepare_workspace(source_of(repo), root/org/repo/task-N, "agent/task-N",
  "main")`, N times: what dispatch does per task (`source_of` included).

A side's figure is the time of its N calls (seconds for N workspaces; goal: ratio <=
1.5x); the cost of `source_of` alone is reported for information. The wall time is the
checkouts' (file creation): seconds where creating a file is cheap, minutes where it is
not. Shared machines are noisy, so the sides take turns workspace by workspace (ABBA
order), each round on fresh copies of the repository, in several rounds; a ratio is the
median of the per-round ratios, a figure the median over rounds. Timings are
reported, never asserted; the exit status is 1 only when a check fails (a workspace not
on its branch or not at main's commit, a missing worktree, a git process left running).
"""

from __future__ import annotations

import gc
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    BenchError,
    Result,
    json_report,
    leftovers,
    log,
    parse_profile,
    ratio_table,
)

from fleetbus.plugins.agentic import git

GOAL = 1.5
FILES = 300  # in the repository: 10 top-level directories x 3 subdirectories x 10 files


@dataclass(frozen=True)
class Profile:
    rounds: int
    count: int  # workspaces per side and round


FULL = Profile(rounds=3, count=200)
QUICK = Profile(rounds=3, count=30)


def ratio_of(base: list[float], subj: list[float]) -> float:
    return statistics.median(s / b for b, s in zip(base, subj, strict=True))


def run_git(*args: str) -> str:
    proc = subprocess.run(["git", *args], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise BenchError(f"git {' '.join(args[:4])} failed: {proc.stderr.strip()[:200]}")
    return proc.stdout.strip()


def make_template(where: Path) -> str:
    """The repository every round copies; returns its commit."""
    where.mkdir(parents=True)
    run_git("-C", str(where), "init", "-q", "-b", "main")
    for i in range(FILES):
        f = where / f"pkg{i % 10}" / f"sub{i // 10 % 3}" / f"mod{i}.py"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f'"""Module {i}."""\n\nVALUE = {i}\n' + "# filler line\n" * 20)
    run_git("-C", str(where), "add", "-A")
    run_git(
        "-C",
        str(where),
        "-c",
        "user.name=bench",
        "-c",
        "user.email=bench@localhost",
        "-c",
        "commit.gpgsign=false",
        "commit",
        "-q",
        "-m",
        "initial",
    )
    return run_git("-C", str(where), "rev-parse", "HEAD")


def fresh_repo(template: Path, side_dir: Path) -> Path:
    repo = side_dir / "src" / "app"
    shutil.copytree(template, repo, symlinks=True)
    return repo


def check_checkouts(repo: Path, expected: list[tuple[Path, str]], commit: str, side: str) -> None:
    """Every workspace is a worktree of `repo` on its branch, at `commit`."""
    bad = []
    for path, branch in expected:
        head = subprocess.run(
            ["git", "-C", str(path), "symbolic-ref", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if head != branch:
            bad.append(f"{path.name} on {head or 'no branch'!r}, not {branch!r}")
    tips = run_git("-C", str(repo), "for-each-ref", "--format=%(objectname)", "refs/heads/")
    if set(tips.split()) != {commit}:
        bad.append("a branch is not at main's commit")
    listed = run_git("-C", str(repo), "worktree", "list", "--porcelain").count("worktree ")
    if listed != len(expected) + 1:
        bad.append(f"{listed - 1} worktrees registered, expected {len(expected)}")
    if bad:
        raise BenchError(f"{side}: {len(bad)} problem(s): {bad[:3]}")


def bench_prepare(profile: Profile, tmp: Path) -> list[Result]:
    n = profile.count
    template = tmp / "template" / "src" / "app"
    commit = make_template(template)
    source_ms: list[float] = []

    def one_round(r: int, count: int) -> tuple[float, float]:
        """`count` workspaces per side, made alternately in ABBA order so that both sides
        see the same machine; a side's figure is the sum of its timed calls."""
        d = tmp / f"round-{r}"
        raw_repo = fresh_repo(template, d / "baseline")
        fb_repo = fresh_repo(template, d / "fleetbus")
        raw_wanted = [
            (d / "baseline" / "wt" / f"base-{i}", f"bench/base-{i}") for i in range(count)
        ]
        root = d / "fleetbus" / "ws"
        fb_wanted = [(root / "src" / "app" / f"task-{i}", f"agent/task-{i}") for i in range(count)]
        spent = [0.0, 0.0]
        problems: list[str] = []

        def raw(i: int) -> None:
            path, branch = raw_wanted[i]
            argv = ["git", "-C", str(raw_repo), "worktree", "add", "-b", branch, "--", str(path)]
            t0 = time.perf_counter()
            subprocess.run([*argv, "main"], capture_output=True, check=True)
            spent[0] += time.perf_counter() - t0

        def ours(i: int) -> None:
            path, branch = fb_wanted[i]
            t0 = time.perf_counter()
            got = git.prepare_workspace(git.source_of(str(fb_repo)), path, branch, "main")
            spent[1] += time.perf_counter() - t0
            if not got.created or got.base_commit != commit or got.path != path:
                problems.append(f"{path.name}: {got}")

        gc.collect()
        for i in range(count):
            for side in (raw, ours) if i % 2 == 0 else (ours, raw):
                side(i)
        if problems:
            raise BenchError(f"prepare_workspace: {problems[:3]}")
        check_checkouts(raw_repo, raw_wanted, commit, "baseline")
        check_checkouts(fb_repo, fb_wanted, commit, "fleetbus")
        # source_of alone, for information (the same repository, count times)
        t0 = time.perf_counter()
        sources = {git.source_of(str(fb_repo)) for _ in range(count)}
        source_ms.append((time.perf_counter() - t0) / count * 1000)
        if [(s.kind, s.org, s.name) for s in sources] != [("local", "src", "app")]:
            raise BenchError(f"source_of gave {sources}, expected local src/app")
        shutil.rmtree(d)
        return spent[0], spent[1]

    one_round(-1, 5)  # warm up (page cache, git's first start)
    source_ms.clear()
    base: list[float] = []
    subj: list[float] = []
    for r in range(profile.rounds):
        b, s = one_round(r, n)
        base.append(b)
        subj.append(s)
        log(f"  round {r + 1}: baseline {b:.2f}s, fleetbus {s:.2f}s ({s / b:.2f}x)")
    ratio = ratio_of(base, subj)
    return [
        Result(
            name=f"prepare {n} worktrees of {FILES} files",
            unit="s",
            goal=f"<= {GOAL:g}x",
            baseline=statistics.median(base),
            fleetbus=statistics.median(subj),
            ratio=ratio,
            met=ratio <= GOAL,
            rounds={"baseline": base, "fleetbus": subj},
            extra={
                "workspaces_per_round": n,
                "files": FILES,
                "baseline_ms_each": statistics.median(base) / n * 1000,
                "fleetbus_ms_each": statistics.median(subj) / n * 1000,
                "source_of_ms_each": statistics.median(source_ms),
            },
        )
    ]


# -- report ------------------------------------------------------------------------------------
def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3f}{unit}"


def invalid(problem: str) -> list[Result]:
    name = f"prepare worktrees of {FILES} files"
    return [Result.invalid(name, "s", f"<= {GOAL:g}x", problem)]


def main(argv: list[str] | None = None) -> int:
    args, profile = parse_profile(
        __doc__, argv, FULL, QUICK, "count", "override the workspace count"
    )

    started = time.perf_counter()
    log("bench prepare ...")
    with tempfile.TemporaryDirectory(prefix="fbagentic-") as tmp:
        try:
            results = bench_prepare(profile, Path(tmp))
        except (BenchError, git.GitError, subprocess.CalledProcessError) as e:
            results = invalid(f"{type(e).__name__}: {e}")
        found = leftovers(Path(tmp))
        if found:
            for r in results:
                r.valid, r.met = False, False
                r.problems.append(f"processes still running after the bench (killed): {found[:5]}")
    elapsed = time.perf_counter() - started
    verdicts = ", ".join(f"{r.ratio:.2f}x" if r.valid else "INVALID" for r in results)
    log(f"bench prepare: {verdicts} in {elapsed:.1f}s")

    if args.json:
        ratio = "median of per-round fleetbus/baseline ratios"
        print(
            json_report(
                args.quick, profile, elapsed, results, git=run_git("--version"), ratio=ratio
            )
        )
    else:
        print(ratio_table(results, fmt))
        for r in results:
            x = r.extra
            if "baseline_ms_each" in x:
                print(
                    f"{r.name.strip()}: {x['workspaces_per_round']} workspaces of {x['files']} "
                    f"files per side and round; per workspace baseline "
                    f"{x['baseline_ms_each']:.1f}ms, fleetbus {x['fleetbus_ms_each']:.1f}ms "
                    f"(source_of alone: {x['source_of_ms_each']:.1f}ms)"
                )
            for problem in r.problems:
                print(f"{r.name.strip()}: INVALID: {problem}")
        print(
            f"({profile.rounds} interleaved rounds; ratio = median of per-round ratios; "
            f"python {platform.python_version()}; {run_git('--version')}; "
            f"{os.cpu_count()} CPUs; {elapsed:.1f}s)"
        )
    return 0 if all(r.valid for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
