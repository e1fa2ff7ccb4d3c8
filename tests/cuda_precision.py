"""A helper of the CUDA tests: the GPU computing in IEEE fp32, so that its results can equal the CPU's."""

import contextlib

import torch


@contextlib.contextmanager
def full_fp32_on_cuda():
    """cuDNN convolutions and matrix products in IEEE fp32 (PyTorch lets cuDNN use TF32 by default), so that CUDA
    and CPU agree to rounding; restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
