# FC features alone on DAVIS (paper Table A.1: top-k 10, r' 12, m 20,
# τ 0.05).
#
#   mim test sfc_plugin configs/fc_davis.py --checkpoint FC_CHECKPOINT \
#       --cfg-options test_evaluator.output_dir=results/fc_davis
#
# FC_CHECKPOINT: an FC training checkpoint of sfc_plugin (iter_*.pth) or of
# the SFC reference; it is loaded into model.encoder.
_base_ = [
    '_base_/models/fc_tracker_r18.py',
    '_base_/datasets/davis2017_val.py',
    '_base_/default_runtime.py',
]
model = dict(
    propagator=dict(topk=10, radius=12, context_frames=20, temperature=0.05))
