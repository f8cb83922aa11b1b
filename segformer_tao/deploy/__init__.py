"""segformer_tao.deploy."""
