"""Names of the built-in resources a recipe can refer to (kept free of heavy imports for `rlkit check`)."""

BUILTIN_TINY = "builtin:tiny"  # the embedded ~1M-parameter model (rlkit.models)
BUILTIN_TINY_BPE = "builtin:tiny-bpe"  # a small Llama-3-like model: BPE, BOS, two EOS, no pad, bf16
BUILTIN_TINY_TEACHER = "builtin:tiny-teacher"  # a larger model with builtin:tiny's tokenizer (a teacher for OPD)
BUILTIN_MODELS = (BUILTIN_TINY, BUILTIN_TINY_BPE, BUILTIN_TINY_TEACHER)
# built-in models that share a tokenizer (a student and its teacher must)
BUILTIN_TOKENIZERS = {BUILTIN_TINY: "char", BUILTIN_TINY_TEACHER: "char", BUILTIN_TINY_BPE: "bpe"}
# max_position_embeddings of each built-in model's config, known here so that `rlkit check` needs no built model
BUILTIN_POSITIONS = {BUILTIN_TINY: 256, BUILTIN_TINY_TEACHER: 256, BUILTIN_TINY_BPE: 1024}
BUILTIN_MULTIPLICATION = "builtin:multiplication"  # products with a calculator tool (rlkit.data)
BUILTIN_TASKS = ("builtin:addition", "builtin:addition_chat", BUILTIN_MULTIPLICATION)  # synthetic, verifiable
BUILTIN_TASK_ROWS = {  # problems of each built-in task
    "builtin:addition": 10_000,  # a, b in [0, 99]
    "builtin:addition_chat": 10_000,
    BUILTIN_MULTIPLICATION: 8_460,  # a, b in [11, 99], and [10, 99] by 1, 10 or 100 (rlkit.data)
}
BUILTIN_TASK_COLUMNS = {task: ("prompt", "answer") for task in BUILTIN_TASKS} | {
    BUILTIN_MULTIPLICATION: ("prompt", "answer", "demonstration")
}
