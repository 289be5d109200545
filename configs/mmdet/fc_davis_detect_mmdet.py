# "Detect, then propagate": frame 0's objects come from an mmdet
# instance-segmentation model instead of the annotation, and the FC tracker
# propagates them (fc_davis_mmdet.py otherwise). Scoring matches each video's
# detected objects to its annotated ones on frame 0 (Hungarian on IoU) and
# renumbers them after those; unmatched detections are dropped.
#
#   mim test mmdet configs/mmdet/fc_davis_detect_mmdet.py \
#       --checkpoint FC_CHECKPOINT --cfg-options \
#       model.detector.checkpoint=MASK_RCNN_CHECKPOINT \
#       test_dataloader.dataset.data_root=data/DAVIS \
#       test_evaluator.output_dir=results/fc_davis_detect
#
# MASK_RCNN_CHECKPOINT: the COCO weights of the config below, from mmdet's
# model zoo (configs/mask_rcnn/README.md in mmdet); any mmdet 3.x instance
# segmentation config and its weights work (model.detector.config=...).
_base_ = ['./fc_davis_mmdet.py']

model = dict(
    detector=dict(
        type='FirstFrameDetector',
        config='mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
        checkpoint=None,
        score_thr=0.5))
test_evaluator = dict(match_first_frame=True)
