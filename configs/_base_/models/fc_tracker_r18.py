# Label propagation with FC features: ResNet-18 layer3 (256 channels, stride
# 8). tools/test.py loads its CHECKPOINT argument into the encoder.
model = dict(
    type='SFCTracker',
    encoder=dict(
        type='CorrespondenceEncoder',
        backbone=dict(
            type='ResNet',
            depth=18,
            num_stages=3,
            strides=(1, 2, 1),
            out_indices=(2, )),
        checkpoint=None),
    propagator=dict(type='LabelPropagator', restrict_first_frame=False),
    label_codec=dict(type='MaskCodec'),
)
checkpoint_field = 'model.encoder.checkpoint'
