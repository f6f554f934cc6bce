"""A verifier whose rewards vary even for an untrained model: 1.0 for completions of odd length."""


def odd_length(prompts, completions, **_):
    return [float(len(c) % 2) for c in completions]


def odd_code_sum(prompts, completions, **_):
    """1.0 when the character codes of prompt and completion add up to an odd number: varies from
    prompt to prompt even when every completion is the same (an untrained model's greedy ones are)."""
    return [float(sum(map(ord, p + c)) % 2) for p, c in zip(prompts, completions)]
