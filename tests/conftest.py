import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models on 2 cores (pytest -n 2 runs two workers) are fastest on one thread each: no OpenMP spin contention.
torch.set_num_threads(1)
