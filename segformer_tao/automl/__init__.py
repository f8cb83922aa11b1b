"""segformer_tao.automl."""
