"""A verifier whose rewards vary even for an untrained model: 1.0 for completions of odd length."""


def odd_length(prompts, completions, **_):
    return [float(len(c) % 2) for c in completions]
