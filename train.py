"Train a realfake classifier: `python train.py [--metadata M ...]`, `accelerate launch train.py ...` or `torchrun ... train.py --cpu` (see --help)."
from realfake.train import realfake_train
if __name__ == '__main__': realfake_train()
