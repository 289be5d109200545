# Label propagation with SFC features (paper eq. 7): a semantic ResNet-50
# (layer3, 1024 channels) fused with the FC ResNet-18 (layer3, 256 channels).
# tools/test.py loads its CHECKPOINT argument into the FC network; the
# semantic checkpoint is model.encoder.semantic.checkpoint.
model = dict(
    type='SFCTracker',
    encoder=dict(
        type='FusedCorrespondenceEncoder',
        semantic=dict(
            type='CorrespondenceEncoder',
            backbone=dict(
                type='ResNet',
                depth=50,
                num_stages=3,
                strides=(1, 2, 1),
                out_indices=(2, ),
                # Zero-init residuals would make a random baseline shallow.
                zero_init_residual=False),
            checkpoint=None),
        fine_grained=dict(
            type='CorrespondenceEncoder',
            backbone=dict(
                type='ResNet',
                depth=18,
                num_stages=3,
                strides=(1, 2, 1),
                out_indices=(2, )),
            checkpoint=None),
        fc_weight=1.0),
    propagator=dict(type='LabelPropagator', restrict_first_frame=False),
    label_codec=dict(type='MaskCodec'),
)
checkpoint_field = 'model.encoder.fine_grained.checkpoint'
