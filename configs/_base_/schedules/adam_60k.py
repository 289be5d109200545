# Adam, lr 1e-3, no weight decay, 60k iterations (paper appendix A.1).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='Adam', lr=1e-3, weight_decay=0.0))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=60000)
# Constant learning rate.
param_scheduler = []
