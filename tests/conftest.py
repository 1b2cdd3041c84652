"""One compute thread per test process.

The suite runs in two xdist workers on a machine with about as many cores. With torch's
default of one thread per core, each worker's tiny tensor operations open parallel
regions whose threads must wait for a core the other worker holds: on a loaded 2-core
machine a cross-entropy over 8 rows took 7.6 ms on two threads and 3 microseconds on
one. Tests that need another count set it themselves and put it back.
"""

import torch

torch.set_num_threads(1)
