# Frames of YouTube-VOS sampled as independent images (paper §4.1).
# Other frame folders (see README "Training on other frames"):
#   DAVIS:  data_root=data/DAVIS data_prefix.img_path=JPEGImages/480p
#           ann_file=ImageSets/2017/train.txt
#   a flat folder of images: data_root=DIR data_prefix.img_path=''
dataset_type = 'FrameDataset'
data_root = 'data/youtube-vos/train_all_frames'

train_pipeline = [
    # mmcv.LoadImageFromFile's decoding, with errors naming the frame (an
    # empty or cut file is refused, not an OpenCV assertion or grey rows).
    dict(type='LoadVideoFrame'),
    # Cropping only: colour jitter, blur and grayscale hurt (paper Table 3).
    dict(
        type='TwoViewRandomResizedCrop',
        size=256,
        scale=(0.0, 1.0),
        ratio=(3. / 4., 4. / 3.),
        flip_prob=0.0),
    dict(type='PackMultiViewInputs'),
]

train_dataloader = dict(
    batch_size=96,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='JPEGImages'),
        ann_file='',
        frame_interval=1,
        pipeline=train_pipeline),
)
