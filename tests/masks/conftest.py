"""The mask tests use the feature tests' images and backbones."""

from ..features.conftest import SIZE, layout_image, normal_set, pretrained_backbone, random_backbone

__all__ = ["SIZE", "layout_image", "normal_set", "pretrained_backbone", "random_backbone"]
