"""The `segformer` tools beside the actions: `dataset`, `model`, `jobs` (each a ``main(argv) -> exit code``)."""
