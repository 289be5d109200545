# Label propagation with SFC features (paper eq. 7): a semantic ResNet-50
# (layer3, 1024 channels) fused with the FC encoder of fc_tracker_r18.py.
# tools/test.py loads its CHECKPOINT argument into the FC network; the
# semantic checkpoint is model.encoder.semantic.checkpoint.
_base_ = ['fc_tracker_r18.py']
model = dict(
    encoder=dict(
        _delete_=True,
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
        fine_grained={{_base_.model.encoder}},
        fc_weight=1.0))
checkpoint_field = 'model.encoder.fine_grained.checkpoint'
