"""segformer_tao: train, evaluate, export, quantize and deploy SegFormer models (TAO-compatible specs)."""

__version__ = "0.1.0"
