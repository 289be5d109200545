# VIP part propagation: 19 parts + background, class-id PNG annotations;
# the DAVIS loader and streaming settings with VIP's layout.
_base_ = ['davis2017_val.py']
test_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='VIPDataset',
        data_root='data/VIP_Fine',
        ann_file='lists/val_videos.txt',
        pipeline={{_base_.test_pipeline}}))
test_evaluator = dict(_delete_=True, type='PartIoUMetric', num_classes=20)
