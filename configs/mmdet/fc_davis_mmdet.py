# FC label propagation on DAVIS run by mmdet 3.x's own tools: the settings,
# masks and J&F of configs/fc_davis.py (paper Table A.1), with the tracker
# as an mmdet tracking model and DAVIS as an mmdet video dataset
# (_base_/davis_mmdet.py), scored by sfc_plugin's DAVIS metric.
#
#   mim test mmdet configs/mmdet/fc_davis_mmdet.py --checkpoint FC_CHECKPOINT \
#       --cfg-options test_dataloader.dataset.data_root=data/DAVIS \
#       test_evaluator.output_dir=results/fc_davis
#
# FC_CHECKPOINT: an FC training checkpoint (sfc_plugin's iter_*.pth or the
# SFC reference's); mmdet's runner loads it (load_from) and the tracker puts
# it into its FC network. Needs mmdet 3.x with a full mmcv (README.md).
_base_ = ['../fc_davis.py', './_base_/davis_mmdet.py']

default_scope = 'mmdet'
custom_imports = dict(imports=['sfc_plugin'], allow_failed_imports=False)
# mmengine's Runner, as mmdet's tools build it.
runner_type = 'Runner'
model = {{_base_.mmdet_model}}
test_dataloader = {{_base_.mmdet_test_dataloader}}
test_evaluator = {{_base_.mmdet_test_evaluator}}
