"""The one device switch: params `device` / FACESEM_DEVICE, with clear refusals."""

import pytest
import torch

from support.device import select_device


def test_auto_and_cpu(monkeypatch):
    monkeypatch.delenv("FACESEM_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu") and select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")


def test_the_environment_variable_wins(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("FACESEM_DEVICE", "cpu")
    assert select_device("cuda") == torch.device("cpu")
    monkeypatch.setenv("FACESEM_DEVICE", "cuda:1")
    assert select_device("cpu") == torch.device("cuda:1")


def test_missing_or_invalid_cuda_devices_are_refused(monkeypatch):
    monkeypatch.delenv("FACESEM_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="'cuda' requested .* CUDA is not available"):
        select_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match=r"'cuda:3' requested but this machine has 1 CUDA device\(s\)"):
        select_device("cuda:3")
    for bad in ("gpu", "cuda:x", "cuda1"):
        with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda\\[:N\\]'"):
            select_device(bad)
    monkeypatch.setenv("FACESEM_DEVICE", "tpu")
    with pytest.raises(ValueError, match="FACESEM_DEVICE"):
        select_device("auto")
