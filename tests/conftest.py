"""Test-wide settings."""

import torch

# The tests run tiny tensors, where a second intra-op thread costs more than it gives and,
# on a busy machine, spin-waiting threads slow every operation down.
torch.set_num_threads(1)
