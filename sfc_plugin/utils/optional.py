"""Optional dependencies: found or not, and one clear line when missing.

mmdet 3.x is optional: sfc_plugin is a complete mmengine codebase without
it, and its mmdet integration (a DAVIS ``BaseVideoDataset``, detect-then-
propagate, the configs under ``configs/mmdet``) needs mmdet 3.x with a
*full* mmcv < 2.2 (mmdet imports mmcv's compiled ops, which mmcv-lite lacks,
and asserts the version).
"""
import importlib
import importlib.util
from typing import Optional

MMDET_INSTALL = ('pip install "mmdet>=3.0,<3.4" and a full mmcv 2.0/2.1 '
                 'build (`mim install "mmcv==2.1.0"`; mmcv-lite has no '
                 'compiled ops: uninstall it first)')

_mmdet_error: Optional[str] = None
_mmdet_checked = False


def mmdet_import_error() -> Optional[str]:
    """Why mmdet cannot be used here, or None when it can.

    Imports ``mmdet.structures`` once (it pulls in mmcv's compiled ops and
    mmdet's mmcv version check); the answer is cached.
    """
    global _mmdet_error, _mmdet_checked
    if not _mmdet_checked:
        _mmdet_checked = True
        if importlib.util.find_spec('mmdet') is None:
            _mmdet_error = 'mmdet is not installed'
        else:
            try:
                importlib.import_module('mmdet.structures')
            # mmdet asserts its mmcv range; mmcv-lite fails on mmcv._ext.
            except (ImportError, AssertionError) as err:
                first_line = (str(err).splitlines() or [''])[0]
                _mmdet_error = (f'mmdet cannot be imported '
                                f'({type(err).__name__}: {first_line})')
    return _mmdet_error


def mmdet_available() -> bool:
    """Whether mmdet 3.x imports (with the compiled mmcv it needs)."""
    return mmdet_import_error() is None


def require_mmdet(feature: str) -> None:
    """Raises a one-line ImportError naming ``feature`` when mmdet is not
    usable here."""
    error = mmdet_import_error()
    if error is not None:
        raise ImportError(f'{feature} needs mmdet 3.x, but {error}: '
                          f'{MMDET_INSTALL}')
