# JHMDB keypoint propagation: frames resized to 320×320 (40×40 features),
# 15 joints; ann_file lines are "<frames folder> <joint_positions.mat>".
# Streaming settings as for DAVIS.
_base_ = ['davis2017_val.py']
test_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='JHMDBDataset',
        data_root='data/jhmdb',
        ann_file='jhmdb_val.txt',
        pipeline=[
            # mmcv.LoadImageFromFile's decoding; an empty or cut frame is an
            # error naming it, not grey rows scored as a prediction.
            dict(type='LoadVideoFrame'),
            dict(type='mmcv.Resize', scale=(320, 320), keep_ratio=False),
            dict(type='PackVideoFrameInputs'),
        ]))
test_evaluator = dict(
    _delete_=True, type='JHMDBPCKMetric', thresholds=(0.1, 0.2))
