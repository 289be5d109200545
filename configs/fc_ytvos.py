# FC pre-training on YouTube-VOS frames with the paper's settings:
# ResNet-18 (stride 8), batch 96, Adam 1e-3, wd 0, 60k iterations, r = 0.5,
# target momentum 0.99 -> 1 (cosine).
#
#   mim train sfc_plugin configs/fc_ytvos.py --work-dir work_dirs/fc_ytvos
#   mim train sfc_plugin configs/fc_ytvos.py --amp          # mixed precision
#       (fp16 with dynamic loss scaling; on Ampere/Hopper prefer bf16
#        with channels-last convolutions:
#        --cfg-options optim_wrapper.type=AmpOptimWrapper
#        optim_wrapper.dtype=bfloat16 model.channels_last=True)
#   mim train sfc_plugin configs/fc_ytvos.py --launcher pytorch --gpus 4
#
# Other frame folders: override train_dataloader.dataset.data_root,
# .data_prefix.img_path and .ann_file (see configs/_base_/datasets).
_base_ = [
    '_base_/models/fc_r18.py',
    '_base_/datasets/ytvos_frames.py',
    '_base_/schedules/adam_60k.py',
    '_base_/default_runtime.py',
]
