from .davis_results import evaluate_davis_results  # noqa: F401
from .functional import *  # noqa: F401,F403
from .metrics import *  # noqa: F401,F403
