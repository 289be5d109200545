"""sfc_plugin: Semantic-Aware Fine-Grained Correspondence for OpenMMLab.

Hu et al., "Semantic-Aware Fine-Grained Correspondence", ECCV 2022.
"""
import mmengine
from mmengine.utils import digit_version

from .version import __version__

MMENGINE_RANGE = ('0.10.0', '1.0.0')
MMCV_RANGE = ('2.0.0', '2.3.0')


def _check_version(name: str, version: str, bounds: tuple) -> None:
    low, high = bounds
    if not digit_version(low) <= digit_version(version) < digit_version(high):
        raise ImportError(
            f'sfc_plugin needs {name}>={low},<{high}, found {name} {version}. '
            f'See README.md for the supported install.')


_check_version('mmengine', mmengine.__version__, MMENGINE_RANGE)

try:
    import mmcv
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'sfc_plugin needs mmcv 2.x: install `mmcv-lite==2.2.0` (pure Python, '
        'enough for sfc_plugin) or a full `mmcv` build, never both.') from err
_check_version('mmcv', mmcv.__version__, MMCV_RANGE)

__all__ = ['__version__']
