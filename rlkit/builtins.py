"""Names of the built-in resources a recipe can refer to (kept free of heavy imports for `rlkit check`)."""

BUILTIN_TINY = "builtin:tiny"              # the embedded ~1M-parameter model (rlkit.models)
BUILTIN_TINY_BPE = "builtin:tiny-bpe"      # a small Llama-3-like model: BPE, BOS, two EOS, no pad, bf16
BUILTIN_MODELS = (BUILTIN_TINY, BUILTIN_TINY_BPE)
BUILTIN_TASKS = ("builtin:addition", "builtin:addition_chat")  # synthetic verifiable tasks (rlkit.data)
