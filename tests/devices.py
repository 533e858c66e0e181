"""The devices a device-sensitive test runs on: always the CPU, and CUDA too where a GPU is present (no skips)."""
import torch

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
