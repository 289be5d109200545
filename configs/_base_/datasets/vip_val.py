# VIP part propagation: 19 parts + background, class-id PNG annotations;
# the DAVIS reader and streaming settings with VIP's layout.
_base_ = ['davis2017_val.py']
test_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='VIPDataset',
        data_root='data/VIP_Fine',
        ann_file='lists/val_videos.txt',
        pipeline=[
            # mmcv.LoadImageFromFile's decoding; an empty or cut frame is an
            # error naming it, not grey rows scored as a prediction.
            dict(type='LoadVideoFrame'),
            dict(type='LoadPartMap', num_classes=20, first_frame_only=True),
            dict(type='PackVideoFrameInputs'),
        ]))
test_evaluator = dict(_delete_=True, type='PartIoUMetric', num_classes=20)
