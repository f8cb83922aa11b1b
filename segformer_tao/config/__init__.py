"""segformer_tao.config."""
