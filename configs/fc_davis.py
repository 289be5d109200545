# FC features alone on DAVIS (paper Table A.1: top-k 10, r' 12, m 20,
# τ 0.05): ResNet-18 layer3 (256 channels, stride 8).
#
#   mim test sfc_plugin configs/fc_davis.py --checkpoint FC_CHECKPOINT \
#       --cfg-options test_evaluator.output_dir=results/fc_davis
#
# FC_CHECKPOINT: an FC training checkpoint of sfc_plugin (iter_*.pth) or of
# the SFC reference; it is loaded into model.encoder (checkpoint_field).
_base_ = [
    '_base_/datasets/davis2017_val.py',
    '_base_/default_runtime.py',
]

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
    propagator=dict(
        type='LabelPropagator',
        topk=10,
        radius=12,
        context_frames=20,
        temperature=0.05,
        restrict_first_frame=False),
)

# tools/test.py loads its CHECKPOINT argument here (instead of load_from).
checkpoint_field = 'model.encoder.checkpoint'
