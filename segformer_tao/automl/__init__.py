"""AutoML for `segformer train`: routing (policy), search space from the train schema (space), Optuna study (search)."""
