# JHMDB keypoint propagation: frames resized to 320×320 (40×40 features),
# 15 joints; ann_file lines are "<frames folder> <joint_positions.mat>".
test_pipeline = [
    dict(type='mmcv.LoadImageFromFile'),
    dict(type='mmcv.Resize', scale=(320, 320), keep_ratio=False),
    dict(type='PackVideoFrameInputs'),
]
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='VideoSampler'),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='JHMDBDataset',
        data_root='data/jhmdb',
        ann_file='jhmdb_val.txt',
        pipeline=test_pipeline),
)
test_evaluator = dict(type='JHMDBPCKMetric', thresholds=(0.1, 0.2))
test_cfg = dict(type='TestLoop')
