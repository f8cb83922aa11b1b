"""unet-format segmentation data (local or s3://): dataset, loaders, transforms, checks, demo data."""

from segformer_tao.data.dataset import UnetSegmentationDataset, build_dataloader
from segformer_tao.data.loader import collate_eval
from segformer_tao.data.transforms import preprocess_image

__all__ = ["UnetSegmentationDataset", "build_dataloader", "collate_eval", "preprocess_image"]
