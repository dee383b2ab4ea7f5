import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

# Tiny test models gain nothing from threads, and OpenMP spinning collapses under load.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    from calmrl.models import tiny_model

    return tiny_model("llama")
