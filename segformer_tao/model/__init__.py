"""segformer_tao.model."""
