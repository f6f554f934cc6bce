"""Verifier throughput: ``python -m benchmarks.verifiers [--workers N]`` prints samples/s for math and code.

Each verifier scores a synthetic batch through :class:`rewards.RewardScorer` as the trainer does, once in
this process (workers=0) and once with a pool, after a small warm-up batch; the pool's start-up is timed
separately (paid once a run). The machine's other load shows in the numbers: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file, too

from rewards import RewardScorer, RewardSpec  # noqa: E402

# Templates of (gold, completion) filled with the sample index, so that math-verify's parse cache never hits.
MATH = [
    ("\\frac{{{i}}}{{2}}", "so the answer is \\boxed{{{h}}}"),
    ("\\{{1,{i}\\}}", "<answer>\\{{{i}, 1\\}}</answer>"),
    ("(0,{i}]", "The answer is $(0, {i})$."),
    ("{i}\\%", "that is {p}"),
    ("x^2+{i}x", "\\boxed{{x(x+{i})}}"),
    ("-{i}", "we get \\boxed{{-{i}.0}}"),
    ("\\sqrt{{{i}}}", "\\boxed{{{i}^{{1/2}}}}"),
    ("{i}", "maybe {i}1"),
]
CODE = (
    "```python\ndef add(a, b):\n    return a + b\n```",
    [{"assert": f"assert add({i}, 1) == {i + 1}"} for i in range(3)],
)


def math_batch(n: int):
    rows = [tuple(t.format(i=i + 1, h=(i + 1) / 2, p=(i + 1) / 100) for t in MATH[i % len(MATH)]) for i in range(n)]
    return [""] * n, [c for _, c in rows], {"answer": [g for g, _ in rows]}


def code_batch(n: int):
    return [""] * n, [CODE[0]] * n, {"tests": [CODE[1]] * n}


def measure(spec: RewardSpec, batch, workers: int) -> str:
    start = time.perf_counter()
    with RewardScorer([spec], workers=workers) as scorer:
        ready = time.perf_counter()
        scorer(
            *(column[:8] if isinstance(column, list) else {k: v[:8] for k, v in column.items()} for column in batch)
        )  # warm-up: first calls pay for lazy imports
        warm = time.perf_counter()
        scores = scorer(*batch)
        done = time.perf_counter()
    n = len(batch[1])
    failures = len(scores.failures)
    return (
        f"{spec.verifier:<5} workers={workers}: {n / (done - warm):8.1f} samples/s ({n} samples, "
        f"mean reward {scores.metrics[f'reward/{spec.verifier}/mean']:.3f}, {failures} failures; "
        f"pool start {ready - start:.1f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="pool size (default: CPU count)")
    parser.add_argument("--math-samples", type=int, default=800)
    parser.add_argument("--code-samples", type=int, default=60)
    args = parser.parse_args(argv)
    for spec, batch in (
        (RewardSpec(verifier="math"), math_batch(args.math_samples)),
        (RewardSpec(verifier="code", timeout_s=30), code_batch(args.code_samples)),
    ):
        for workers in (0, args.workers):
            print(measure(spec, batch, workers), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
