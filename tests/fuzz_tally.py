"""How many inputs each fuzz target was given and how each ended, for the summary after the tests.

A fuzz test calls :func:`record` once per input with its outcome; ``conftest.py`` prints the
table at the end of the run, so ``make test`` shows the counts.
"""

from __future__ import annotations

from collections import Counter

TALLY: dict[str, Counter[str]] = {}


def record(target: str, outcome: str) -> None:
    """Count one input given to ``target`` that ended in ``outcome`` ("result", "clear error")."""
    TALLY.setdefault(target, Counter())[outcome] += 1


def summary_lines() -> list[str]:
    """One line per fuzz target: inputs tried, then the count of each outcome."""
    lines = []
    width = max((len(t) for t in TALLY), default=0)
    for target, outcomes in sorted(TALLY.items()):
        parts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
        lines.append(f"{target:<{width}}  {sum(outcomes.values()):>5} inputs: {parts}")
    return lines
