from sfc_plugin.utils.checkpoint import explain_unpickling_error

from .checkpoint import decode_message_hub, encode_message_hub
from .runner import SFCRunner

__all__ = [
    'SFCRunner', 'encode_message_hub', 'decode_message_hub',
    'explain_unpickling_error'
]
