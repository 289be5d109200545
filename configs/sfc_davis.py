# SFC: fused semantic (ResNet-50) and fine-grained (FC ResNet-18) features,
# F = L2(cat(L2(F_s), λ·L2(F_f))) with λ = 1.75 (paper eq. 7), and the fused
# settings of paper Table A.2: top-k 15, r' 15, m 20, τ 0.1.
#
#   mim test sfc_plugin configs/sfc_davis.py --checkpoint FC_CHECKPOINT \
#       --cfg-options model.encoder.semantic.checkpoint=MOCO_V2.pth.tar
_base_ = ['fc_davis.py']

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
        fc_weight=1.75),
    propagator=dict(topk=15, radius=15, context_frames=20, temperature=0.1),
)

# The CHECKPOINT argument of tools/test.py is the FC network's.
checkpoint_field = 'model.encoder.fine_grained.checkpoint'
