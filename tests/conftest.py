import os

# Before torch is imported anywhere: idle OpenMP threads sleep instead of spinning,
# which on a 2-core machine keeps a busy neighbour from slowing each test 10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
