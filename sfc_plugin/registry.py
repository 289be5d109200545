"""Registries of the ``sfc_plugin`` scope.

Every registry is a child of mmengine's root registry of the same kind, so a
config with ``default_scope = 'sfc_plugin'`` resolves our types first and falls
back to mmengine's. ``locations`` names the modules that register into each
registry: building from a config imports them on demand, so no config needs a
``custom_imports`` entry.

Our registries build in their own scope, whatever the caller's default scope
(:class:`ScopedRegistry`): an sfc_plugin model named from another codebase's
config (``dict(type='sfc_plugin.SFCTracker', ...)`` under
``default_scope='mmdet'``) builds its parts as sfc_plugin types, so a bare
``type='ResNet'`` inside it is sfc_plugin's ResNet, never another scope's
class of the same name; ``type='mmdet.X'`` still reaches other scopes.
"""
import contextlib
import uuid
from typing import Any, Iterator

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import (
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
)
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import (
    RUNNER_CONSTRUCTORS as MMENGINE_RUNNER_CONSTRUCTORS,
)
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import TASK_UTILS as MMENGINE_TASK_UTILS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import (
    WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS,
)
from mmengine.registry import DefaultScope
from mmengine.registry import Registry as _MMEngineRegistry

SCOPE = 'sfc_plugin'


class ScopedRegistry(_MMEngineRegistry):
    """An mmengine registry whose :meth:`build` resolves types in its own
    scope.

    mmengine builds a config in the *current default scope*: an sfc_plugin
    model built from an mmdet config would look its parts up in mmdet's
    registries (``CorrespondenceEncoder`` is not there; ``ResNet`` is
    mmdet's). Our models build their parts through our registries, which
    switch the default scope to ``sfc_plugin`` for the build, so the parts
    are ours wherever the model was named from. Types with an explicit
    scope (``mmdet.X``) are unaffected.
    """

    def build(self, cfg: dict, *args, **kwargs) -> Any:
        with building_in_scope(self.scope):
            return super().build(cfg, *args, **kwargs)


@contextlib.contextmanager
def building_in_scope(scope: str) -> Iterator[None]:
    """Makes ``scope`` the default scope inside the block.

    Unlike ``DefaultScope.overwrite_default_scope``, which restores a copy
    of every instance on exit, this removes only its own: what is built
    inside may create a default scope of its own that must outlive the
    block (a Runner, built through our RUNNERS, does).
    """
    current = DefaultScope.get_current_instance()
    if current is not None and current.scope_name == scope:
        yield
        return
    name = f'{scope}-build-{uuid.uuid4().hex}'
    DefaultScope.get_instance(name, scope_name=scope)
    try:
        yield
    finally:
        DefaultScope._instance_dict.pop(name, None)


#: Every registry of this module is scoped (see :class:`ScopedRegistry`).
Registry = ScopedRegistry

RUNNERS = Registry(
    'runner', parent=MMENGINE_RUNNERS, locations=['sfc_plugin.engine'])
RUNNER_CONSTRUCTORS = Registry(
    'runner constructor',
    parent=MMENGINE_RUNNER_CONSTRUCTORS,
    locations=['sfc_plugin.engine'])
LOOPS = Registry(
    'loop', parent=MMENGINE_LOOPS, locations=['sfc_plugin.engine'])
HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, locations=['sfc_plugin.engine'])

DATASETS = Registry(
    'dataset', parent=MMENGINE_DATASETS, locations=['sfc_plugin.datasets'])
DATA_SAMPLERS = Registry(
    'data sampler',
    parent=MMENGINE_DATA_SAMPLERS,
    locations=['sfc_plugin.datasets'])
TRANSFORMS = Registry(
    'transform',
    parent=MMENGINE_TRANSFORMS,
    locations=['sfc_plugin.datasets.transforms'])

MODELS = Registry(
    'model', parent=MMENGINE_MODELS, locations=['sfc_plugin.models'])
MODEL_WRAPPERS = Registry(
    'model_wrapper',
    parent=MMENGINE_MODEL_WRAPPERS,
    locations=['sfc_plugin.models'])
WEIGHT_INITIALIZERS = Registry(
    'weight initializer',
    parent=MMENGINE_WEIGHT_INITIALIZERS,
    locations=['sfc_plugin.models'])

OPTIMIZERS = Registry(
    'optimizer', parent=MMENGINE_OPTIMIZERS, locations=['sfc_plugin.engine'])
OPTIM_WRAPPERS = Registry(
    'optim_wrapper',
    parent=MMENGINE_OPTIM_WRAPPERS,
    locations=['sfc_plugin.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    locations=['sfc_plugin.engine'])
PARAM_SCHEDULERS = Registry(
    'parameter scheduler',
    parent=MMENGINE_PARAM_SCHEDULERS,
    locations=['sfc_plugin.engine'])

METRICS = Registry(
    'metric', parent=MMENGINE_METRICS, locations=['sfc_plugin.evaluation'])
EVALUATOR = Registry(
    'evaluator',
    parent=MMENGINE_EVALUATOR,
    locations=['sfc_plugin.evaluation'])

TASK_UTILS = Registry(
    'task util', parent=MMENGINE_TASK_UTILS, locations=['sfc_plugin.models'])
# Visualisation registers nothing of its own yet.
VISUALIZERS = Registry('visualizer', parent=MMENGINE_VISUALIZERS)
VISBACKENDS = Registry('vis_backend', parent=MMENGINE_VISBACKENDS)
LOG_PROCESSORS = Registry(
    'log_processor',
    parent=MMENGINE_LOG_PROCESSORS,
    locations=['sfc_plugin.engine'])
FUNCTIONS = Registry(
    'function', parent=MMENGINE_FUNCTIONS, locations=['sfc_plugin.datasets'])
