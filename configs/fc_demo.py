# FC pre-training on generated frames: runs anywhere, needs no dataset.
# The main job of the README's first command: 20 iterations at batch 8, with
# 128×128 crops (16×16 maps) so that it takes about a minute on 2 CPU cores;
# everything else is the paper's setting (fc_ytvos.py).
_base_ = ['fc_ytvos.py']

train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=False,
    dataset=dict(
        _delete_=True,
        type='SyntheticFrameDataset',
        num_frames=256,
        img_size=(240, 320),
        # Frames are generated already decoded: no loading step.
        pipeline=[
            dict(type='TwoViewRandomResizedCrop', size=128),
            dict(type='PackMultiViewInputs'),
        ]))
train_cfg = dict(max_iters=20)
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=10))
