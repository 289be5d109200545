import os
import os.path as osp
import pickle
import re
import sys
from typing import Callable, Optional, Union

import torch
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from torch.utils.data import DataLoader

from sfc_plugin.registry import RUNNERS
from sfc_plugin.utils.checkpoint import (
    check_checkpoint_file,
    explain_unpickling_error,
    read_checkpoint,
)
from sfc_plugin.utils.validation import check_integer

from .checkpoint import decode_message_hub, encode_message_hub
from .training_memory import check_training_memory

#: What ``resume`` reads from a checkpoint besides the weights.
RESUME_KEYS = ('meta', 'state_dict', 'message_hub', 'optimizer')


_CHECKPOINT_NAME = re.compile(r'(?:iter|epoch)_(\d+)\.pth')


def latest_checkpoint(work_dir: str) -> Optional[str]:
    """The newest whole ``iter_N.pth`` / ``epoch_N.pth`` of a work dir
    (a file cut short by a kill during the save is passed over, saying so),
    else what its ``last_checkpoint`` names, else None."""
    pointer = osp.join(work_dir, 'last_checkpoint')
    named = None
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
    found = sorted(
        ((int(m.group(1)), osp.join(work_dir, name))
         for name in (os.listdir(work_dir) if osp.isdir(work_dir) else ())
         if (m := _CHECKPOINT_NAME.fullmatch(name))),
        reverse=True)
    for _, path in found:
        try:
            check_checkpoint_file(path)
            return path
        except ValueError:
            print(f'sfc_plugin: note: passing over "{path}", cut short (a '
                  'run killed while saving it)', file=sys.stderr)
    return named


@RUNNERS.register_module()
class SFCRunner(Runner):
    """mmengine's ``Runner``, loading checkpoints safely and strictly.

    * Checkpoints hold tensors and plain data only: the message hub is
      written as plain data and rebuilt on load (see
      :mod:`sfc_plugin.engine.runner.checkpoint`), so they load with
      ``torch.load(weights_only=True)`` and ``resume`` works under
      torch >= 2.6 without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.
    * A checkpoint that is missing, lacks what ``resume`` needs, or does not
      hold every weight of the model (when resuming) is refused with an
      error that names the file and the missing keys, before any training.

    * Before the training loop starts its data workers, the host memory
      the batches in flight and (for a model on the CPU) the training
      steps need is checked against what is left
      (:func:`~sfc_plugin.engine.runner.training_memory.check_training_memory`):
      a batch size the host cannot hold is an error naming it, not a run
      killed by the system.

    Select it in a config with ``runner_type = 'SFCRunner'``.
    """

    def train(self) -> torch.nn.Module:
        # The loader is built here (mmengine's loop takes a built one as
        # it is) so that its first sample sizes the check before the
        # loop's iterator starts the workers.
        if isinstance(self._train_dataloader, dict) and (
                self._train_loop is not None):
            # Named as the config names them (torch's DataLoader would say
            # "batch_size", and nothing at all of num_workers=1e9).
            for key, low in (('batch_size', 1), ('num_workers', 0)):
                if key in self._train_dataloader:
                    check_integer('train', f'train_dataloader.{key}',
                                  self._train_dataloader[key], low=low)
            self._train_dataloader = self.build_dataloader(
                self._train_dataloader,
                seed=self.seed,
                diff_rank_seed=self._randomness_cfg.get(
                    'diff_rank_seed', False))
        if isinstance(self._train_dataloader, DataLoader):
            check_training_memory(self.model, self._train_dataloader)
        return super().train()

    def load_checkpoint(self,
                        filename: str,
                        map_location: Union[str, Callable] = 'cpu',
                        strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):
        # Resuming continues one run: every weight must be there.
        strict = strict or self._resume
        if '://' not in filename:
            # A missing, foreign, cut or unsafe file, named (torch's reader
            # names none); mapped, so its tensors are not read twice.
            self._check_fits(filename, read_checkpoint(filename, mmap=True),
                             revise_keys)
        try:
            checkpoint = super().load_checkpoint(
                filename,
                map_location=map_location,
                strict=strict,
                revise_keys=revise_keys)
        except pickle.UnpicklingError as err:
            raise explain_unpickling_error(filename, err) from err
        except RuntimeError as err:
            if 'state_dict' not in str(err):
                raise
            raise RuntimeError(
                f'Checkpoint "{filename}" does not match the model: '
                f'{err}') from err
        decode_message_hub(checkpoint)
        return checkpoint

    def _check_fits(self, filename: str, checkpoint, revise_keys) -> None:
        """Refuses a checkpoint holding none of the model's weights (of
        their shapes): loaded leniently (``load_from``), another model's
        checkpoint left the model as initialised, with only a warning."""
        weights = checkpoint.get('state_dict', checkpoint) if isinstance(
            checkpoint, dict) else None
        if not isinstance(weights, dict):
            raise ValueError(f'Checkpoint "{filename}" holds no state_dict '
                             '(a dict of weights)')
        shapes = {}
        for key, value in weights.items():
            for pattern, replacement in revise_keys:
                key = re.sub(pattern, replacement, str(key))
            shapes[key] = tuple(getattr(value, 'shape', ()))
        model = self.model.module if is_model_wrapper(
            self.model) else self.model
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if own and not any(shapes.get(k) == shape
                           for k, shape in own.items()):
            example = next(iter(shapes), 'none')
            raise ValueError(
                f'Checkpoint "{filename}" holds none of the weights of '
                f'{type(model).__name__} (its {len(shapes)} keys, e.g. '
                f'"{example}", match no weight of the model by name and '
                'shape, e.g. "' + next(iter(own)) + '"): a checkpoint of '
                'another model or config')

    def call_hook(self, fn_name: str, **kwargs) -> None:
        super().call_hook(fn_name, **kwargs)
        # The last step before mmengine writes the file: whatever the hooks
        # added, the message hub leaves as plain data.
        if fn_name == 'before_save_checkpoint':
            encode_message_hub(kwargs['checkpoint'])

    def load_or_resume(self) -> None:
        if self._resume and self._load_from is None and not self._has_loaded:
            # mmengine reads only `last_checkpoint`, written after the
            # checkpoint itself: a run killed between the two resumed from
            # an older one (or from scratch), overwriting the newer.
            self._load_from = latest_checkpoint(self.work_dir)
            if self._load_from is not None:
                self.logger.info('Resuming from the newest whole checkpoint '
                                 f'of the work dir: {self._load_from}')
        super().load_or_resume()

    def resume(self, filename: str, *args, **kwargs) -> None:
        self._check_resumable(filename)
        super().resume(filename, *args, **kwargs)
        # mmengine's loop then trains nothing and the run succeeds.
        end = getattr(self._train_loop, 'max_iters', None)
        if isinstance(end, int) and self.iter >= end:
            setting = ('max_epochs' if 'max_epochs' in (
                self.cfg.get('train_cfg') or {}) else 'max_iters')
            raise ValueError(
                f'Checkpoint "{filename}" is at iteration {self.iter}, where '
                f'the run ends (train_cfg.{setting}): nothing is left to '
                f'train; raise train_cfg.{setting} to go on')

    @staticmethod
    def _check_resumable(filename: str) -> None:
        if '://' in filename:
            return
        if not osp.isfile(filename):
            raise FileNotFoundError(
                f'Cannot resume: checkpoint file not found: "{filename}"')
        checkpoint = read_checkpoint(filename, mmap=True)
        missing = [k for k in RESUME_KEYS if k not in checkpoint]
        if missing:
            raise KeyError(
                f'Cannot resume from "{filename}": it lacks '
                f'{", ".join(missing)} (a checkpoint written by an mmengine '
                f'training run has {", ".join(RESUME_KEYS)}); use `load_from` '
                'without `resume` to load its weights only')
