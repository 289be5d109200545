from .sfc_tracker import SFCTracker

__all__ = ['SFCTracker']
