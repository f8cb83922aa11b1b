"""segformer_tao.model.backbones."""
