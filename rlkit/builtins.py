"""Names of the built-in resources a recipe can refer to (kept free of heavy imports for `rlkit check`)."""

BUILTIN_TINY = "builtin:tiny"              # the embedded ~1M-parameter model (rlkit.models)
BUILTIN_TASKS = ("builtin:addition",)      # synthetic verifiable tasks (rlkit.data)
