"""segformer_tao.data."""
