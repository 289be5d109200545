# FC network (paper §3.3, appendix A.1): a stride-8 ResNet-18 (layer3 and
# layer4 at stride 1: 256×256 crops give 32×32×512 maps) with dense heads.
model = dict(
    type='FineGrainedCorrespondence',
    backbone=dict(
        type='ResNet',
        depth=18,
        strides=(1, 2, 1, 1),
        out_indices=(3, ),
        zero_init_residual=True),
    projector=dict(
        type='ConvMLP', in_channels=512, hid_channels=2048, out_channels=256),
    predictor=dict(
        type='ConvMLP', in_channels=256, hid_channels=2048, out_channels=256),
    positive_radius=0.5,
    # ImageNet statistics, the same at training and test time.
    data_preprocessor=dict(
        type='MultiViewDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True),
)

# Target momentum 0.99 -> 1 on a cosine schedule over the training run;
# a loss or weights that are no longer finite stop it.
custom_hooks = [
    dict(type='CosineTargetMomentumHook', base_momentum=0.99,
         end_momentum=1.0),
    dict(type='FiniteTrainingHook'),
]
