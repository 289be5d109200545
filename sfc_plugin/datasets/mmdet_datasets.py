"""The datasets that need mmdet, or stand-ins that say what to install.

Configs name ``sfc_plugin.DAVISVideoDataset`` whether or not mmdet works
here; without it the stand-in is registered under that name and building
it fails with one line saying what to install, instead of a registry's
"not found".
"""
from sfc_plugin.registry import DATASETS
from sfc_plugin.utils.optional import mmdet_available, require_mmdet

if mmdet_available():
    from .davis_video import DAVISVideoDataset
else:

    @DATASETS.register_module()
    class DAVISVideoDataset:
        """Stand-in for the mmdet video dataset where mmdet is missing."""

        def __init__(self, *args, **kwargs):
            require_mmdet('DAVISVideoDataset')

__all__ = ['DAVISVideoDataset']
