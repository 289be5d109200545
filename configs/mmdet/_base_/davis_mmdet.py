# What turns an sfc_plugin DAVIS config into one that mmdet 3.x's tools run:
# the tracker fed by mmdet's tracking pipeline (PackTrackInputs +
# TrackDataPreprocessor, pred_track_instances out) and DAVIS as an mmdet
# BaseVideoDataset. A config lists this file after its sfc_plugin config
# in _base_ and takes these entries (see fc_davis_mmdet.py); they have
# names of their own so that the two bases do not collide.
mmdet_model = dict(
    type='sfc_plugin.SFCTracker',
    data_preprocessor=dict(
        type='mmdet.TrackDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True))

mmdet_test_pipeline = [
    dict(
        type='TransformBroadcaster',
        transforms=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadTrackAnnotations', with_mask=True),
        ]),
    # What DAVISMetric needs besides mmdet's default meta keys.
    dict(
        type='PackTrackInputs',
        meta_keys=('video', 'seg_map_path', 'first_seg_map_path',
                   'mask_format')),
]

# Merged into the sfc_plugin config's test_dataloader: its data_root,
# ann_file and data_prefix stay.
mmdet_test_dataloader = dict(
    # One frame per step, videos whole per process and in order.
    sampler=dict(type='TrackImgSampler'),
    dataset=dict(
        type='sfc_plugin.DAVISVideoDataset',
        # Propagation reads frame 0's objects; the metric reads the rest.
        annotated_frames='first',
        test_mode=True,
        pipeline=mmdet_test_pipeline))

mmdet_test_evaluator = dict(type='sfc_plugin.DAVISMetric')
