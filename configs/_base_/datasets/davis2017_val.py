# DAVIS-2017 val, semi-supervised: frames streamed in video order.
# DAVIS-2016 (one object, 8-bit {0, 255} masks), e.g. the shared data:
#   test_dataloader.dataset.data_root=../shared/data/davis2016
#   test_dataloader.dataset.ann_file=ImageSets/val.txt
# Masks are read as object ids whatever the format (mask_format='auto').
dataset_type = 'DAVISDataset'
data_root = 'data/DAVIS'

test_pipeline = [
    # mmcv.LoadImageFromFile's decoding; an empty or cut frame is an
    # error naming it, not grey rows scored as a prediction.
    dict(type='LoadVideoFrame'),
    dict(type='LoadObjectMask', first_frame_only=True),
    dict(type='PackVideoFrameInputs'),
]

test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=False,
    # Whole videos per process, frames in order.
    sampler=dict(type='VideoSampler'),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='ImageSets/2017/val.txt',
        data_prefix=dict(
            img_path='JPEGImages/480p', seg_map_path='Annotations/480p'),
        pipeline=test_pipeline),
)

# Set output_dir (--cfg-options test_evaluator.output_dir=DIR) to write the
# masks in the official results format and the toolkit's CSV files.
test_evaluator = dict(type='DAVISMetric', output_dir=None)
test_cfg = dict(type='TestLoop')
