# SFC (fused semantic + FC features) on DAVIS run by mmdet 3.x's tools: the
# settings of configs/sfc_davis.py (paper Table A.2); see fc_davis_mmdet.py.
#
#   mim test mmdet configs/mmdet/sfc_davis_mmdet.py --checkpoint FC_CHECKPOINT \
#       --cfg-options model.encoder.semantic.checkpoint=MOCO.pth.tar \
#       test_dataloader.dataset.data_root=data/DAVIS \
#       test_evaluator.output_dir=results/sfc_davis
_base_ = ['../sfc_davis.py', './_base_/davis_mmdet.py']

default_scope = 'mmdet'
custom_imports = dict(imports=['sfc_plugin'], allow_failed_imports=False)
runner_type = 'Runner'
model = {{_base_.mmdet_model}}
test_dataloader = {{_base_.mmdet_test_dataloader}}
test_evaluator = {{_base_.mmdet_test_evaluator}}
