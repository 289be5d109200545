import os.path as osp
import pickle
from typing import Callable, Union

import torch
from mmengine.runner import Runner
from torch.utils.data import DataLoader

from sfc_plugin.registry import RUNNERS
from sfc_plugin.utils.checkpoint import (
    explain_unpickling_error,
    read_checkpoint,
)
from sfc_plugin.utils.validation import check_integer

from .checkpoint import decode_message_hub, encode_message_hub
from .training_memory import check_training_memory

#: What ``resume`` reads from a checkpoint besides the weights.
RESUME_KEYS = ('meta', 'state_dict', 'message_hub', 'optimizer')


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
        if '://' not in filename:
            # A missing, foreign, cut or unsafe file, named (torch's reader
            # names none); mapped, so its tensors are not read twice.
            read_checkpoint(filename, mmap=True)
        # Resuming continues one run: every weight must be there.
        strict = strict or self._resume
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

    def call_hook(self, fn_name: str, **kwargs) -> None:
        super().call_hook(fn_name, **kwargs)
        # The last step before mmengine writes the file: whatever the hooks
        # added, the message hub leaves as plain data.
        if fn_name == 'before_save_checkpoint':
            encode_message_hub(kwargs['checkpoint'])

    def resume(self, filename: str, *args, **kwargs) -> None:
        self._check_resumable(filename)
        super().resume(filename, *args, **kwargs)

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
