"""The four feature maps a backbone returns, described by its timm-style ``feature_info``."""

from __future__ import annotations


class FeatureMaps:
    """Mixin for backbones that set ``self.feature_info`` (timm's list of dicts: num_chs, reduction, module)."""

    feature_info: list[dict]

    @property
    def out_channels(self) -> list[int]:
        """Channels of the 4 returned feature maps."""
        return [f["num_chs"] for f in self.feature_info]

    @property
    def out_strides(self) -> list[int]:
        """Stride (pixels of input per feature pixel) of the 4 returned feature maps."""
        return [f["reduction"] for f in self.feature_info]
