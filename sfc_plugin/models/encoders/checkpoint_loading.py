"""Loading backbone weights from the checkpoint layouts met in the wild.

Semantic backbones come from MoCo v1/v2 (``state_dict`` with
``module.encoder_q.`` keys and an ``fc`` to drop), SimCLR, BYOL, SimSiam or
torchvision-style plain state dicts; FC networks from sfc_plugin's own
checkpoints (``state_dict`` with ``backbone.`` keys) or from the SFC reference
(``{'model': {'online_encoder.*': ...}}``). Rather than one rule per method,
the prefix under which the checkpoint holds every weight of the backbone is
searched for; online encoders win over momentum/target copies.
"""
import os
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from sfc_plugin.utils.checkpoint import read_checkpoint


class CheckpointKeyError(KeyError):
    """Weights missing from a checkpoint; prints its message as written."""

    def __str__(self) -> str:
        return str(self.args[0])


#: Prefix fragments of momentum / target / teacher copies, used only when no
#: online encoder holds the weights.
TARGET_HINTS = ('target', 'encoder_k', 'momentum', 'teacher', 'ema',
                'key_encoder')


def state_dict_of(checkpoint, filename: str) -> Dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint (``state_dict``, ``model``,
    ``module`` or the checkpoint itself)."""
    for key in ('state_dict', 'model', 'module', 'network'):
        if isinstance(checkpoint, dict) and isinstance(
                checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict) or not any(
            isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(
            f'Checkpoint "{filename}" holds no state dict (a dict of tensors, '
            'possibly under "state_dict" or "model")')
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def find_prefix(model_keys: List[str], ckpt_keys: List[str]
                ) -> Tuple[Optional[str], List[Tuple[str, List[str]]]]:
    """The key prefix under which ``ckpt_keys`` hold all of ``model_keys``.

    Returns:
        tuple: the chosen prefix ('' for a plain state dict), or None when no
        prefix covers the model, and the candidates examined as
        (prefix, missing keys) pairs, best first.
    """
    anchor = model_keys[0]
    candidates = {k[:-len(anchor)] for k in ckpt_keys if k.endswith(anchor)}
    ckpt = set(ckpt_keys)
    examined = []
    for prefix in candidates:
        missing = [k for k in model_keys if prefix + k not in ckpt]
        target_like = any(h in prefix.lower() for h in TARGET_HINTS)
        examined.append(((len(missing), target_like, len(prefix), prefix),
                         prefix, missing))
    examined.sort()
    ranked = [(prefix, missing) for _, prefix, missing in examined]
    chosen = ranked[0][0] if ranked and not ranked[0][1] else None
    return chosen, ranked


def non_finite_weights(
        named: Iterable[Tuple[str, torch.Tensor]]) -> List[str]:
    """The names of the floating-point tensors of ``named`` that hold NaN
    or infinite values, in their order (meta tensors, without data,
    skipped). The host waits once per device, not once per tensor."""
    checked = [(name, t) for name, t in named
               if t.is_floating_point() and not t.is_meta]
    finite = {}
    for device in {t.device for _, t in checked}:
        group = [(name, t) for name, t in checked if t.device == device]
        flags = torch.stack([t.isfinite().all() for _, t in group]).tolist()
        finite.update(zip((name for name, _ in group), flags))
    return [name for name, _ in checked if not finite[name]]


def check_finite_weights(state: Dict[str, torch.Tensor],
                         filename: str) -> None:
    """Refuses weights holding NaN or infinite values, naming them: such a
    network outputs NaN everywhere, which would otherwise surface only as
    a puzzling error frames later."""
    bad = non_finite_weights(state.items())
    if bad:
        raise ValueError(f'Checkpoint "{filename}" holds NaN or infinite '
                         f'values in {len(bad)} weights (e.g. {bad[:3]}): '
                         'a diverged or damaged training run?')


def select_backbone_weights(module: nn.Module,
                            weights: Dict[str, torch.Tensor],
                            source: str,
                            prefix: str = 'auto'
                            ) -> Tuple[Dict[str, torch.Tensor], str]:
    """``module``'s weights out of a state dict of any known layout.

    Args:
        module (nn.Module): The network the weights are for.
        weights (dict): Name → tensor, e.g. a whole training model's
            state dict.
        source (str): Where the weights come from, for messages.
        prefix (str): Key prefix of the module's weights, or 'auto' to find
            it (see :func:`find_prefix`). Defaults to 'auto'.

    Returns:
        tuple: the module's state dict (its own key names) and the prefix
        used.

    Raises:
        CheckpointKeyError: No prefix holds all weights; the message lists the
            candidates and the keys each one misses.
        ValueError: A weight of the wrong shape or of another kind of type
            (integer weights for floating-point ones, say, which loading
            would cast silently), or weights holding NaN or infinite
            values.
    """
    own = module.state_dict()
    # BN's batch counters are absent from older checkpoints and unused here.
    model_keys = [k for k in own if not k.endswith('num_batches_tracked')]
    if prefix == 'auto':
        chosen, ranked = find_prefix(model_keys, list(weights))
        if chosen is None:
            lines = [
                f'  prefix "{p}": misses {len(m)} keys, e.g. {m[:5]}'
                for p, m in ranked[:3]
            ] or ['  no key ends like the model\'s first weight '
                  f'"{model_keys[0]}"']
            raise CheckpointKeyError(
                f'Checkpoint "{source}" has no prefix holding all '
                f'{len(model_keys)} weights of {type(module).__name__}; '
                'unknown layout or wrong architecture:\n' + '\n'.join(lines))
        prefix = chosen
    missing = [k for k in model_keys if prefix + k not in weights]
    if missing:
        raise CheckpointKeyError(
            f'Checkpoint "{source}" misses {len(missing)} keys under '
            f'prefix "{prefix}": {missing[:10]}')
    state = {k: weights[prefix + k] for k in own if prefix + k in weights}
    wrong = [(k, tuple(v.shape), tuple(own[k].shape))
             for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise ValueError(f'Checkpoint "{source}" does not fit '
                         f'{type(module).__name__} (key, checkpoint shape, '
                         f'model shape): {wrong[:5]}')
    mistyped = [(k, str(v.dtype)[6:], str(own[k].dtype)[6:])
                for k, v in state.items() if type_kind(v) != type_kind(own[k])]
    if mistyped:
        raise ValueError(f'Checkpoint "{source}" holds weights of another '
                         f'kind of type than {type(module).__name__}\'s (key, '
                         f'checkpoint type, model type): {mistyped[:5]}')
    check_finite_weights(state, source)
    return state, prefix


def type_kind(tensor: torch.Tensor) -> str:
    """Floating point, complex, boolean or integer: the kinds that loading
    a weight into a parameter or buffer must not cast between (float16
    weights into a float32 model are fine)."""
    if tensor.is_complex():
        return 'complex'
    if tensor.is_floating_point():
        return 'floating point'
    return 'boolean' if tensor.dtype == torch.bool else 'integer'


def load_backbone_checkpoint(module: nn.Module,
                             filename: str,
                             prefix: str = 'auto') -> str:
    """Loads ``module``'s weights from a checkpoint of any known layout.

    Reads with ``torch.load(weights_only=True)``. Keys the module does not
    have (a classifier, projection heads, the rest of a training model) are
    ignored; every key the module has must be present with the right shape.

    Args:
        module (nn.Module): The network to fill (e.g. a ResNet).
        filename (str): Checkpoint path.
        prefix (str): Key prefix of the module's weights in the checkpoint,
            or 'auto' to find it. Defaults to 'auto'.

    Returns:
        str: The prefix used.

    Raises:
        FileNotFoundError: No such file.
        RuntimeError: The file holds non-tensor objects.
        CheckpointKeyError: No prefix holds all weights (see
            :func:`select_backbone_weights`).
        ValueError: Not a checkpoint, a weight of the wrong shape, or
            weights holding NaN or infinite values.
    """
    filename = os.fspath(filename)
    weights = state_dict_of(read_checkpoint(filename), filename)
    state, prefix = select_backbone_weights(module, weights, filename, prefix)
    module.load_state_dict(state, strict=False)
    return prefix
