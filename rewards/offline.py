"""Offline scoring: ``rlkit verify RECIPE FILE.jsonl`` runs a recipe's verifiers over saved completions.

Each line of the file is a JSON object with ``prompt`` and ``completion`` strings, or, for a multi-turn
episode (a line of a run's samples.jsonl), ``prompt`` and ``episode``, its turns as chat messages: the
verifiers score its final assistant turn, as in training.
Every other key is a dataset column handed to the verifiers (``answer``, ``tests``, a routing column such as ``task``, a
``completion_tokens`` count for ``overlong``...). All lines must have the same keys.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from rewards.scoring import RewardScorer, RewardSpec, Scores


def read_completions(path: str | Path) -> tuple[list[str], list[str], dict[str, list], list[int]]:
    """(prompts, completions, columns, line numbers) of a jsonl file, blank lines skipped; ValueError
    naming the line if one is malformed."""
    prompts: list[str] = []
    completions: list[str] = []
    rows: list[dict] = []  # the other columns of each line
    numbers: list[int] = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON: {e}") from None
            if isinstance(row, dict) and isinstance(row.get("episode"), list):
                turns = [m.get("content", "") for m in row.pop("episode") if m.get("role") == "assistant"]
                row["completion"] = row.get("completion", turns[-1] if turns else "")
            if (
                not isinstance(row, dict)
                or not isinstance(row.get("prompt"), str)
                or not isinstance(row.get("completion"), str)
            ):
                raise ValueError(
                    f"{path}:{number}: a line needs string 'prompt' and 'completion' fields (or an 'episode' list)"
                )
            prompts.append(row.pop("prompt"))
            completions.append(row.pop("completion"))
            if rows and row.keys() != rows[0].keys():
                raise ValueError(
                    f"{path}:{number}: columns {sorted(row)} differ from the first line's {sorted(rows[0])}"
                )
            rows.append(row)
            numbers.append(number)
    if not rows:
        raise ValueError(f"{path}: no completions in the file")
    return prompts, completions, {key: [row[key] for row in rows] for key in rows[0]}, numbers


def report(specs: list[RewardSpec], scores: Scores, line_numbers: list[int]) -> str:
    """A per-verifier table (mean over the samples it scored), the total, then each failure by line."""
    lines = [
        f"{'verifier':<24} {'weight':>7} {'mean':>7} {'scored':>7} {'abstained':>9} {'failures':>8} {'timeouts':>8}"
    ]
    for spec in specs:
        values = scores.per_verifier[spec.label]
        scored = sum(v is not None for v in values)
        m = scores.metrics
        lines.append(
            f"{spec.label:<24} {spec.weight:>7.2f} {m[f'reward/{spec.label}/mean']:>7.3f} {scored:>7} "
            f"{len(values) - scored:>9} {m[f'reward/{spec.label}/failures']:>8.0f} "
            f"{m[f'reward/{spec.label}/timeouts']:>8.0f}"
        )
    totals = [t for t in scores.total if not math.isnan(t)]
    lines.append(
        f"{'total':<24} {'':>7} {sum(totals) / len(totals) if totals else math.nan:>7.3f} {len(totals):>7}"
        f" {len(scores.total) - len(totals):>9}"
    )
    lines += [f"line {line_numbers[f.index]}: {f.label} {f.kind}: {f.message}" for f in scores.failures]
    return "\n".join(lines)


def verify_file(specs: list[RewardSpec], path: str | Path, workers: int = 2) -> int:
    """Score the completions in ``path`` with ``specs`` and print the report; 2 on unreadable input."""
    try:
        prompts, completions, columns, line_numbers = read_completions(path)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with RewardScorer(specs, workers=workers) as scorer:
        scores = scorer(prompts, completions, columns)
    print(
        f"{path}: {len(completions)} completions, {len(specs)} verifiers, {workers} workers, "
        f"{time.perf_counter() - start:.1f} s"
    )
    print(report(scorer.specs, scores, line_numbers))
    return 0
