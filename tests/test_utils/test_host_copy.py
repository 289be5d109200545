import pytest
import torch

from sfc_plugin.utils.host_copy import HostCopy, pinned_for

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='no CUDA device')


def test_on_the_cpu_nothing_is_copied():
    tensor = torch.arange(6).view(2, 3)
    assert HostCopy(tensor).wait() is tensor
    assert pinned_for(tensor, torch.device('cpu')) is tensor


@needs_cuda
def test_cuda_copies_are_queued_without_a_host_wait():
    device = torch.device('cuda')
    host = torch.randint(0, 255, (480, 854), dtype=torch.uint8)
    pinned = pinned_for(host, device)
    assert pinned.is_pinned() and torch.equal(pinned, host)
    assert pinned_for(pinned, device) is pinned
    torch.cuda.synchronize()
    # 'error': any copy or call that makes the host wait for the device
    # raises.
    torch.cuda.set_sync_debug_mode('error')
    try:
        on_device = pinned.to(device, non_blocking=True)
        # Long enough work that the copy below is queued behind it.
        busy = torch.randn(2048, 2048, device=device)
        for _ in range(20):
            busy = busy @ busy
            busy /= busy.norm()
        copy = HostCopy(on_device.flip(0) + (busy[0, 0] > 10).to(torch.uint8))
    finally:
        torch.cuda.set_sync_debug_mode('default')
    result = copy.wait()
    assert result.device.type == 'cpu' and result.is_pinned()
    assert torch.equal(result, host.flip(0))
    assert copy.wait() is result
