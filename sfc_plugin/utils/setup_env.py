import datetime
import warnings

from mmengine import DefaultScope


def register_all_modules(init_default_scope: bool = True) -> None:
    """Import every module that registers into the ``sfc_plugin`` registries.

    Configs normally need none of this (the registries import their
    ``locations`` on demand); scripts that build objects by hand call it once.

    Args:
        init_default_scope (bool): Also make ``sfc_plugin`` the current
            default scope, so unscoped type names resolve to our registries
            first. Defaults to True.
    """
    import sfc_plugin.datasets  # noqa: F401
    import sfc_plugin.engine  # noqa: F401
    import sfc_plugin.evaluation  # noqa: F401
    import sfc_plugin.models  # noqa: F401

    if not init_default_scope:
        return
    current = DefaultScope.get_current_instance()
    if current is None:
        DefaultScope.get_instance('sfc_plugin', scope_name='sfc_plugin')
    elif current.scope_name != 'sfc_plugin':
        warnings.warn(f'The current default scope "{current.scope_name}" is '
                      'not "sfc_plugin"; a new scope instance is created.')
        # DefaultScope instances are named uniquely, hence the timestamp.
        stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')
        DefaultScope.get_instance(
            f'sfc_plugin-{stamp}', scope_name='sfc_plugin')
