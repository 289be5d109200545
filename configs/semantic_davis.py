# Semantic features alone on DAVIS: a ResNet-50 from an image-level
# self-supervised method (MoCo v1/v2, SimCLR, BYOL, SimSiam, InstDis) or a
# torchvision classifier, layer3 at stride 8 (1024 channels); the
# single-network settings of paper Table A.1.
#
#   mim test sfc_plugin configs/semantic_davis.py --checkpoint MOCO.pth.tar
_base_ = ['fc_davis.py']
model = dict(
    encoder=dict(
        backbone=dict(
            depth=50,
            # Zero-init residuals would make a random baseline shallow.
            zero_init_residual=False)))
