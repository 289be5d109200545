from .davis_metric import DAVISMetric, davis_palette, save_palette_png

__all__ = ['DAVISMetric', 'davis_palette', 'save_palette_png']
