"""segformer_tao.actions."""
