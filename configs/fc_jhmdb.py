# FC features on JHMDB keypoints (paper Table A.1: top-k 10, r' 3, m 8; τ is
# not stated, 0.05 as on DAVIS); Gaussian joints of σ 0.5 feature pixel,
# top-3 decoding.
_base_ = [
    '_base_/models/fc_tracker_r18.py',
    '_base_/datasets/jhmdb_val.py',
    '_base_/default_runtime.py',
]
model = dict(
    propagator=dict(topk=10, radius=3, context_frames=8, temperature=0.05),
    label_codec=dict(_delete_=True, type='KeypointCodec', sigma=0.5,
                     stride=8, topk=3))
