# SFC on VIP part maps (paper Table A.2: top-k 10, r' 15, m 8, λ 1.0; τ not
# stated, 0.1 as for fused features on DAVIS).
_base_ = [
    '_base_/models/sfc_tracker_r50_r18.py',
    '_base_/datasets/vip_val.py',
    '_base_/default_runtime.py',
]
model = dict(
    encoder=dict(fc_weight=1.0),
    propagator=dict(topk=10, radius=15, context_frames=8, temperature=0.1),
    label_codec=dict(num_classes=20))
