# VIP part propagation: 19 parts + background, class-id PNG annotations.
test_pipeline = [
    dict(type='mmcv.LoadImageFromFile'),
    dict(type='LoadObjectMask', first_frame_only=True),
    dict(type='PackVideoFrameInputs'),
]
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='VideoSampler'),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='VIPDataset',
        data_root='data/VIP_Fine',
        ann_file='lists/val_videos.txt',
        pipeline=test_pipeline),
)
test_evaluator = dict(type='PartIoUMetric', num_classes=20)
test_cfg = dict(type='TestLoop')
