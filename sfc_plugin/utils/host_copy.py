"""Copies between host and device that do not wait for the device."""
import torch


def pinned_for(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (host memory) ready for an asynchronous copy to ``device``.

    A copy from pageable memory to a CUDA device waits for every kernel
    queued before it; from pinned (page-locked) memory it is queued like a
    kernel, and the host goes on. So for a CUDA ``device`` this is a pinned
    copy of ``tensor``; for any other device, ``tensor`` itself.

    Args:
        tensor (Tensor): A CPU tensor.
        device (torch.device): Where it will be copied to.

    Returns:
        Tensor: ``tensor``, or its pinned copy.
    """
    if torch.device(device).type != 'cuda' or tensor.is_pinned():
        return tensor
    return tensor.pin_memory()


class HostCopy:
    """A tensor's copy to host memory, queued behind its device's work.

    On CUDA the copy goes into pinned memory on the tensor's current stream
    and the constructor returns at once; :meth:`wait` blocks until the copy
    (and so everything queued before it) has run, by a CUDA event. Meanwhile
    the host can queue more work: a tracker queues frame t + 1 before it
    waits for frame t's labels. Elsewhere the copy is made at once, and a
    CPU tensor is kept as it is.

    Args:
        tensor (Tensor): The tensor to copy, on any device.
    """

    def __init__(self, tensor: torch.Tensor):
        self._event = None
        if tensor.device.type != 'cuda':
            self._host = tensor.cpu()
            return
        self._host = torch.empty(
            tensor.shape, dtype=tensor.dtype, pin_memory=True)
        self._host.copy_(tensor, non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record(torch.cuda.current_stream(tensor.device))

    def wait(self) -> torch.Tensor:
        """The copy, once it has landed.

        Returns:
            Tensor: The tensor's values in host memory.
        """
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self._host
