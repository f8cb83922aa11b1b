"""segformer_tao.engine."""
