from .checkpoint import (checkpoint_safe_globals, checkpoint_safe_loading,
                         explain_unpickling_error)
from .runner import SFCRunner

__all__ = [
    'SFCRunner', 'checkpoint_safe_globals', 'checkpoint_safe_loading',
    'explain_unpickling_error'
]
