# SFC on DAVIS: fused features with λ = 1.75 and the fused settings of paper
# Table A.2 (top-k 15, r' 15, m 20, τ 0.1).
#
#   mim test sfc_plugin configs/sfc_davis.py --checkpoint FC_CHECKPOINT \
#       --cfg-options model.encoder.semantic.checkpoint=MOCO.pth.tar
_base_ = [
    '_base_/models/sfc_tracker_r50_r18.py',
    '_base_/datasets/davis2017_val.py',
    '_base_/default_runtime.py',
]
model = dict(
    encoder=dict(fc_weight=1.75),
    propagator=dict(topk=15, radius=15, context_frames=20, temperature=0.1))
