# Semantic features alone on DAVIS: a ResNet-50 from an image-level
# self-supervised method (MoCo v1/v2, SimCLR, BYOL, SimSiam, InstDis or a
# torchvision classifier), layer3 output at stride 8 (1024 channels); the
# single-network settings of paper Table A.1.
#
#   mim test sfc_plugin configs/semantic_davis.py --checkpoint MOCO_V2.pth.tar
_base_ = ['fc_davis.py']

model = dict(
    encoder=dict(
        backbone=dict(
            depth=50, num_stages=3, strides=(1, 2, 1), out_indices=(2, ),
            # A random baseline without zero-init residuals: zero-init makes
            # an untrained ResNet nearly shallow.
            zero_init_residual=False)))
