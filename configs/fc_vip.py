# FC features on VIP part maps (paper Table A.1: top-k 10, r' 15, m 8; τ not
# stated, 0.05 as on DAVIS).
_base_ = [
    '_base_/models/fc_tracker_r18.py',
    '_base_/datasets/vip_val.py',
    '_base_/default_runtime.py',
]
model = dict(
    propagator=dict(topk=10, radius=15, context_frames=8, temperature=0.05),
    label_codec=dict(num_classes=20))
