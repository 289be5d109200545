"""Loading configs and pointing them at checkpoints, for every tool.

Errors name the config or checkpoint file: a config that does not parse, a
``--cfg-options`` override that does not fit it, a checkpoint that is not
there.
"""
import multiprocessing
import os
import os.path as osp
import re
from typing import Any, Dict, Optional

from mmengine.config import Config

import sfc_plugin

from .optional import require_mmdet
from .validation import check_integer, shown

#: Configs shipped inside the package (what mim finds).
PACKAGE_CONFIGS = osp.join(osp.dirname(sfc_plugin.__file__), '.mim',
                           'configs')


def find_config(config) -> str:
    """A config path, or the name of a config shipped with sfc_plugin.

    Raises:
        FileNotFoundError: Neither exists.
    """
    config = os.fspath(config)
    if osp.isfile(config):
        return config
    shipped = osp.join(PACKAGE_CONFIGS, config)
    if not osp.isabs(config) and osp.isfile(shipped):
        return shipped
    raise FileNotFoundError(
        f'Config not found: "{config}" (neither a file nor a config of '
        f'sfc_plugin in {PACKAGE_CONFIGS})')


def load_config(config, cfg_options: Optional[dict] = None) -> Config:
    """Reads a config (a file or a shipped name) and applies overrides.

    Raises:
        FileNotFoundError: No such config.
        ImportError: An mmdet config (``default_scope='mmdet'``) where
            mmdet cannot be used.
        ValueError: The config cannot be parsed or built from its bases, or
            an override does not fit it; the message names the file.
    """
    path = find_config(config)
    try:
        cfg = Config.fromfile(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f'Config "{path}": {err}') from None
    except Exception as err:  # SyntaxError, a bad _base_, a bad import
        raise ValueError(f'Config "{path}" cannot be read: '
                         f'{type(err).__name__}: {err}') from None
    scope = cfg.get('default_scope')
    if scope == 'mmdet':
        require_mmdet(f'Config "{path}" (default_scope mmdet)')
    if cfg_options:
        try:
            cfg.merge_from_dict(cfg_options)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f'--cfg-options do not fit config "{path}": '
                             f'{err}') from None
    return cfg


def apply_checkpoint(cfg: Config, checkpoint, allow_load_from: bool = True
                     ) -> None:
    """Points the config at a checkpoint.

    Tracker configs name the part of the model the checkpoint is for in
    ``checkpoint_field`` (e.g. the FC encoder of a fused SFC tracker), and
    the checkpoint is loaded there; other configs load it into the whole
    model through the Runner (``load_from``), where ``allow_load_from``.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The config has no ``checkpoint_field`` and
            ``allow_load_from`` is off.
    """
    checkpoint = os.fspath(checkpoint)
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'Checkpoint file not found: "{checkpoint}"')
    field = cfg.get('checkpoint_field')
    if field:
        cfg.merge_from_dict({field: checkpoint})
    elif allow_load_from:
        cfg.load_from = checkpoint
    else:
        raise ValueError('The config has no checkpoint_field, so it does '
                         'not say which network the checkpoint is for')


def config_inputs(cfg: Config) -> Dict[str, str]:
    """The files a config reads, by what they are, for
    :func:`~sfc_plugin.utils.fileio.check_output_location`: the config and
    its ``_base_`` files, and every setting that names an existing file (a
    checkpoint, an annotation file), however it was set.

    Folders are left out: a setting may name one a tool writes into
    (``work_dir``).
    """
    found: Dict[str, str] = {}
    # mmengine's text of a config is each file's path, then its content.
    main = osp.abspath(cfg.filename) if cfg.filename else None
    bases = 0
    for line in cfg.text.splitlines():
        if osp.isabs(line) and osp.isfile(line):
            if line == main:
                found['config'] = line
            else:
                bases += 1
                found['_base_ config' +
                      (f' ({bases})' if bases > 1 else '')] = line

    def visit(value, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                visit(item, f'{key}.{name}' if key else str(name))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f'{key}.{i}')
        elif isinstance(value, (str, os.PathLike)) and value and osp.isfile(
                value):
            found[f'config setting {key}'] = os.fspath(value)

    visit(cfg.to_dict(), '')
    return found


#: What mmengine's Runner reads from ``env_cfg`` (``Runner.setup_env``).
ENV_SETTINGS = ('cudnn_benchmark', 'mp_cfg', 'dist_cfg', 'resource_limit')
#: What it passes on from ``env_cfg.mp_cfg`` (``set_multi_processing``).
MP_SETTINGS = ('mp_start_method', 'opencv_num_threads')


def check_env_cfg(cfg) -> dict:
    """The config's ``env_cfg`` ({} when unset), checked before a Runner
    or a tool applies it.

    mmengine's Runner takes each setting as it comes: ``env_cfg=5`` was an
    AttributeError, ``mp_cfg.mp_start_method='frok'`` a ValueError of
    multiprocessing and ``resource_limit=nan`` a TypeError of
    ``resource.setrlimit``, none naming the setting, and a misspelt key
    (``cudnn_benchmak``) was ignored. The rules:

    - ``cudnn_benchmark``: True or False (0 and 1 too, as the Runner's
      truthiness reads them; ``'no'`` would be True there).
    - ``mp_cfg``: a dict of ``mp_start_method`` (a start method of this
      platform: fork, spawn, forkserver) and ``opencv_num_threads`` (an
      int32; negative is OpenCV's default).
    - ``dist_cfg``: a dict (``torch.distributed.init_process_group``'s
      keywords, which torch checks).
    - ``resource_limit``: an integer >= 0, the open files' soft limit
      (capped by the hard limit).

    Args:
        cfg (Config | dict): The full config.

    Returns:
        dict: ``cfg.env_cfg``.

    Raises:
        ValueError: A setting is of the wrong kind or unknown, named by
            its key.
    """
    env = cfg.get('env_cfg', None)
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise ValueError(f'env_cfg must be a dict of environment settings '
                         f'(mmengine\'s), got {shown(env)}')
    for key in env:
        if key not in ENV_SETTINGS:
            raise ValueError(
                f'env_cfg.{key} is no setting of mmengine\'s Runner (it '
                f'reads {", ".join(ENV_SETTINGS)}): remove or correct it')
    enabled = env.get('cudnn_benchmark', False)
    if not (isinstance(enabled, bool) or (type(enabled) is int
                                          and enabled in (0, 1))):
        raise ValueError('env_cfg.cudnn_benchmark must be True or False, '
                         f'got {shown(enabled)}')
    for key in ('mp_cfg', 'dist_cfg'):
        if not isinstance(env.get(key, {}), dict):
            raise ValueError(f'env_cfg.{key} must be a dict, got '
                             f'{shown(env[key])}')
    mp_cfg = env.get('mp_cfg', {})
    for key in mp_cfg:
        if key not in MP_SETTINGS:
            raise ValueError(
                f'env_cfg.mp_cfg.{key} is no setting of mmengine\'s '
                f'set_multi_processing (it takes {", ".join(MP_SETTINGS)})')
    method = mp_cfg.get('mp_start_method')
    methods = multiprocessing.get_all_start_methods()
    if 'mp_start_method' in mp_cfg and method not in methods:
        raise ValueError('env_cfg.mp_cfg.mp_start_method must be one of '
                         f'{", ".join(methods)}, got {shown(method)}')
    if 'opencv_num_threads' in mp_cfg:
        check_integer('config', 'env_cfg.mp_cfg.opencv_num_threads',
                      mp_cfg['opencv_num_threads'], low=-2**31,
                      high=2**31 - 1)
    if 'resource_limit' in env:
        check_integer('config', 'env_cfg.resource_limit',
                      env['resource_limit'], low=0)
    return env


__all__ = ['PACKAGE_CONFIGS', 'apply_checkpoint', 'check_env_cfg',
           'config_inputs', 'find_config', 'load_config']


_UNEXPECTED_ARGUMENT = re.compile(
    r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")


def named_setting_error(node: Any, err: TypeError,
                        path: str = 'model') -> Exception:
    """A setting no part of a built config takes (``--cfg-options
    model.propagator.topK=5``) as a ValueError naming its key in the
    config (``node`` is the config dict at ``path``); any other TypeError
    as it is."""
    match = _UNEXPECTED_ARGUMENT.search(str(err))
    if match is None:
        return err
    owner, key = match.groups()
    found = []

    def visit(value, where):
        if isinstance(value, dict):
            if value.get('type') == owner and key in value:
                found.append(f'{where}.{key}')
            for name, item in value.items():
                visit(item, f'{where}.{name}')
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f'{where}[{i}]')

    visit(node, path)
    where = found[0] if len(found) == 1 else f'"{key}"'
    return ValueError(f'{owner} takes no setting "{key}": remove or correct '
                      f'{where} (from the config or --cfg-options)')


def build_from_config(registry, node: Any, path: str = 'model'):
    """``registry.build(node)``, with a setting the built class does not
    take named by its key in the config (see
    :func:`named_setting_error`).

    Args:
        registry (mmengine.Registry): Where ``node['type']`` is registered.
        node (dict): The config of what to build.
        path (str): Where ``node`` is in the config, for the message.
            Defaults to ``'model'``.
    """
    try:
        return registry.build(node)
    except TypeError as err:
        raise named_setting_error(node, err, path) from None
