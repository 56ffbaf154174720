"""Benchmark of `fleetbus call hub.ping` (the hub already running) against a bare Python
start that imports what any socket client needs, in the same run.

Run it as a script (it is not a pytest test)::

    python tests/bench/bench_cli.py            # full run, about half a minute
    python tests/bench/bench_cli.py --quick    # smoke run, a few seconds
    python tests/bench/bench_cli.py --json     # the results as JSON on stdout

Both sides are fresh processes of this interpreter, timed from spawn to exit with their
output captured:

- baseline: `python -c "import json, socket"`;
- fleetbus: the `fleetbus` console script next to this interpreter (else
  `python -m fleetbus.server`) running `call hub.ping '{"echo": ...}'` against a hub
  started beforehand (`fleetbus hub`) in a fresh temporary FLEETBUS_HOME, stopped at the end.

A side's figure is the wall time of one command in milliseconds (goal: fleetbus/baseline
<= 3x: `call`, `tail` and `stop` load no heavy library, see server/fastcli.py). Shared
machines are noisy, so each round runs both sides in alternating order; a round's figure
is the median of its runs, the ratio the median of the per-round ratios. Timings are
reported, never asserted; the exit status is 1 only when a check fails: a call that did not
exit 0 or printed a wrong answer, a second hub started, a process left running.

Another script gets the Result with `from bench_cli import bench_call` (this folder on
sys.path, as for `common`).
"""

from __future__ import annotations

import json
import math
import os
import platform
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

from fleetbus.bus.lock import read_pid
from fleetbus.bus.paths import Home
from fleetbus.bus.version import version
from fleetbus.testing.hub import hub_process, isolated_env

GOAL = 3.0
BASELINE = [sys.executable, "-c", "import json, socket"]


@dataclass(frozen=True)
class Profile:
    rounds: int
    runs: int  # commands per side and round


FULL = Profile(rounds=15, runs=10)
QUICK = Profile(rounds=5, runs=3)


def fleetbus_command() -> list[str]:
    script = Path(sys.executable).with_name("fleetbus")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "fleetbus.server"]


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str, str, int]:
    """(milliseconds from spawn to exit, stdout, stderr, exit status) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    spent = (time.perf_counter() - t0) * 1000
    return spent, proc.stdout, proc.stderr, proc.returncode


def check_pong(out: str, err: str, code: int, echo: str) -> None:
    """The call exited 0 and printed hub.ping's answer to `echo`, as the CLI formats it."""
    if code != 0:
        raise BenchError(f"fleetbus call exited {code}: {err.strip()[-300:]}")
    try:
        pong = json.loads(out)
    except ValueError as e:
        raise BenchError(f"fleetbus call printed no JSON ({e}): {out[:200]!r}") from None
    if pong.get("echo") != echo or pong.get("version") != version():
        raise BenchError(f"fleetbus call answered {pong!r}, expected echo {echo!r}")
    if out != json.dumps(pong, indent=2) + "\n":
        raise BenchError(f"fleetbus call's output is not the CLI's format: {out[:200]!r}")


def bench_call(profile: Profile = FULL) -> Result:
    """Wall time of `fleetbus call hub.ping` against `python -c "import json, socket"`;
    a check that fails makes the Result invalid (its `problems` say why)."""
    try:
        return _bench_call(profile)
    except (BenchError, OSError, RuntimeError, subprocess.SubprocessError) as e:
        return invalid(f"{type(e).__name__}: {e}")


def _bench_call(profile: Profile) -> Result:
    fleetbus = fleetbus_command()
    with tempfile.TemporaryDirectory(prefix="fb-bench-cli-") as tmp:
        root = Path(tmp)
        home = root / "home"
        env = isolated_env(home)
        problems: list[str] = []
        try:
            with hub_process(home, env, "--idle-timeout", "0") as hub:

                def baseline(i: int) -> float:
                    return timed(BASELINE, env, root)[0]

                def subject(i: int) -> float:
                    return call(fleetbus, env, root, f"run {i}")

                sides = {"baseline": baseline, "fleetbus": subject}
                for i in range(3):  # warm up: page cache, bytecode, the hub's first call
                    sides["baseline"](i)
                    sides["fleetbus"](i)
                base: list[float] = []
                subj: list[float] = []
                for r in range(profile.rounds):
                    order = ("baseline", "fleetbus") if r % 2 == 0 else ("fleetbus", "baseline")
                    spent: dict[str, list[float]] = {"baseline": [], "fleetbus": []}
                    for n in range(profile.runs):
                        for side in order:
                            spent[side].append(sides[side](r * profile.runs + n))
                    b, s = (
                        statistics.median(spent["baseline"]),
                        statistics.median(spent["fleetbus"]),
                    )
                    base.append(b)
                    subj.append(s)
                    log(
                        f"  round {r + 1} ({order[0]} first): baseline {b:.1f}ms, "
                        f"fleetbus {s:.1f}ms ({s / b:.2f}x)"
                    )
                if read_pid(Home(home).lock) != hub.pid:
                    problems.append("the calls did not all reach the hub started for the bench")
        finally:
            left = leftovers(root)
            if left:
                problems.append(f"processes left running: {left[:5]}")
        if problems:
            raise BenchError("; ".join(problems))
    ratio = statistics.median(s / b for b, s in zip(base, subj, strict=True))
    return Result(
        name="fleetbus call hub.ping (hub running)",
        unit="ms",
        goal=f"<= {GOAL:g}x",
        baseline=statistics.median(base),
        fleetbus=statistics.median(subj),
        ratio=ratio,
        met=ratio <= GOAL,
        rounds={"baseline": base, "fleetbus": subj},
        extra={"command": [*fleetbus, "call", "hub.ping"], "runs": profile.runs},
    )


def call(fleetbus: list[str], env: dict[str, str], cwd: Path, echo: str) -> float:
    spent, out, err, code = timed(
        [*fleetbus, "call", "hub.ping", json.dumps({"echo": echo})], env, cwd
    )
    check_pong(out, err, code, echo)
    return spent


def invalid(problem: str) -> Result:
    return Result.invalid("fleetbus call hub.ping (hub running)", "ms", f"<= {GOAL:g}x", problem)


# -- report ------------------------------------------------------------------------------------
def fmt(value: float, unit: str) -> str:
    return "-" if math.isnan(value) else f"{value:,.1f}{unit}"


def main(argv: list[str] | None = None) -> int:
    args, profile = parse_profile(__doc__, argv, FULL, QUICK, "runs", "override the runs per round")

    started = time.perf_counter()
    log("bench call ...")
    results = [bench_call(profile)]
    elapsed = time.perf_counter() - started
    verdicts = ", ".join(f"{r.ratio:.2f}x" if r.valid else "INVALID" for r in results)
    log(f"bench call: {verdicts} in {elapsed:.1f}s")

    if args.json:
        ratio = "median of per-round fleetbus/baseline ratios (milliseconds per command)"
        print(json_report(args.quick, profile, elapsed, results, ratio=ratio))
    else:
        print(ratio_table(results, fmt))
        for r in results:
            for problem in r.problems:
                print(f"{r.name}: INVALID: {problem}")
        print(
            f"({profile.rounds} rounds x {profile.runs} runs, sides alternating; ratio = median "
            f"of per-round ratios; baseline `{' '.join(BASELINE[1:])}`; fleetbus "
            f"`{' '.join(fleetbus_command())} call hub.ping`; python {platform.python_version()}; "
            f"{os.cpu_count()} CPUs; {elapsed:.1f}s)"
        )
    return 0 if all(r.valid for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
