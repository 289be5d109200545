from .backbones import *  # noqa: F401,F403
from .data_preprocessors import *  # noqa: F401,F403
from .encoders import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .necks import *  # noqa: F401,F403
from .propagation import *  # noqa: F401,F403
from .selfsup import *  # noqa: F401,F403
from .trackers import *  # noqa: F401,F403
