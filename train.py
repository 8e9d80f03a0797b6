"""The course's training program as a script file, for launchers that run a file rather than a module.

SageMaker runs `torchrun --nnodes N --nproc_per_node P train.py --steps 100 ...` (ModelTrainer's drivers) or
`python train.py ...` / `torchrun ... train.py ...` (the training toolkit in the framework containers) from the
uploaded code folder. Running this file puts that folder on `sys.path`, so `utils` imports as a package. Everything
else is `utils/train.py` (notebooks 05, 08 and 09).
"""

from utils.train import run_and_exit

if __name__ == "__main__":
    run_and_exit()
