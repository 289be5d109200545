import pytest
import torch
from mmengine.model import ImgDataPreprocessor

from sfc_plugin.models import VideoFramePreprocessor
from sfc_plugin.utils import register_all_modules

register_all_modules()

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def frames(*sizes, layout='hwc', dtype=torch.uint8, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        image = torch.randint(0, 256, (h, w, 3), generator=g).to(dtype)
        out.append(image.permute(2, 0, 1) if layout == 'hwc' else
                   image.permute(2, 0, 1).contiguous())
    return out


@pytest.mark.parametrize('layout', ['hwc', 'chw'])
@pytest.mark.parametrize('kwargs', [
    dict(mean=MEAN, std=STD, bgr_to_rgb=True),
    dict(mean=MEAN, std=STD),
    dict(bgr_to_rgb=True),
    dict(mean=(127.5, ), std=(2.0, ), rgb_to_bgr=True),
])
@pytest.mark.parametrize('sizes', [[(48, 61)], [(37, 53), (37, 53)]])
def test_same_batch_as_mmengines_preprocessor(layout, kwargs, sizes):
    """Bit for bit: the tracker's fp32 protocol reads these values."""
    data = dict(inputs=frames(*sizes, layout=layout), data_samples=['s'])
    ours = VideoFramePreprocessor(**kwargs)
    assert ours._batches_in_place(data['inputs'])
    ours = ours(dict(data))
    theirs = ImgDataPreprocessor(**kwargs)(dict(data))
    assert ours['inputs'].dtype == torch.float32
    assert ours['inputs'].is_contiguous()
    assert torch.equal(ours['inputs'], theirs['inputs'])
    assert ours['data_samples'] == ['s']


@pytest.mark.parametrize('case', ['float64', 'sizes', 'padding', 'collated',
                                  'one-channel'])
def test_other_inputs_give_mmengines_batch_too(case):
    """float64 frames in place (rounded as .float() rounds them); the
    rest through the parent."""
    kwargs = dict(mean=MEAN, std=STD, bgr_to_rgb=True)
    inputs = frames((24, 32), (24, 32))
    if case == 'float64':  # converted as .float() does: rounded
        inputs = [f.double() / 7 for f in inputs]
    elif case == 'sizes':
        inputs = frames((24, 32), (20, 30))
    elif case == 'padding':
        kwargs['pad_size_divisor'] = 16
    elif case == 'collated':
        inputs = torch.stack(inputs)
    else:
        kwargs = dict(mean=(127.5, ), std=(2.0, ))
        inputs = [f[:1] for f in inputs]
    data = dict(inputs=inputs)
    ours = VideoFramePreprocessor(**kwargs)(dict(data))
    theirs = ImgDataPreprocessor(**kwargs)(dict(data))
    assert torch.equal(ours['inputs'], theirs['inputs'])
    assert ours['data_samples'] is None


def test_the_tracker_uses_it_by_default():
    from mmengine.config import Config

    from sfc_plugin.registry import MODELS
    tracker = MODELS.build(Config.fromfile('configs/fc_davis.py').model)
    assert type(tracker.data_preprocessor) is VideoFramePreprocessor
