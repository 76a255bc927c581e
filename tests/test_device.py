"""bench.runtime.device: CPU without CUDA, the SLURM-given GPU, and workstation GPUs claimed one per job."""

import pytest
import torch

from bench.runtime import device
from bench.runtime.device import NoFreeGPUError, claim_gpu, select_device, visible_gpu_ids


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch, tmp_path):
    """Each test chooses anew, with its own lock directory and without inherited SLURM/CUDA settings."""
    monkeypatch.setattr(device, "_CHOICE", None)
    monkeypatch.setattr(device, "_CLAIM", None)
    monkeypatch.setenv(device.LOCK_DIR_ENV, str(tmp_path / "locks"))
    for name in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    yield
    if device._CLAIM is not None:
        device._CLAIM.close()


@pytest.fixture
def fake_gpus(monkeypatch):
    """torch.cuda reporting two devices named 'Fake GPU <i>'."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"Fake GPU {i}")


def test_cpu_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    choice = select_device()
    assert choice.device == torch.device("cpu")
    assert choice.description.startswith("cpu (") and f"{torch.get_num_threads()} threads" in choice.description
    assert not (tmp_path / "locks").exists()


def test_slurm_job_takes_its_first_visible_gpu_without_a_lock(monkeypatch, tmp_path, fake_gpus):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    choice = select_device()
    assert choice.device == torch.device("cuda", 0)
    assert choice.description == "cuda:0 Fake GPU 0 (SLURM job 4242, CUDA_VISIBLE_DEVICES=3)"
    assert not (tmp_path / "locks").exists()


def test_slurm_job_without_a_gpu_allocation_claims_like_a_workstation(monkeypatch, tmp_path, fake_gpus):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert select_device().device == torch.device("cuda", 0)
    assert (tmp_path / "locks/gpu-0.lock").exists()


def test_workstation_jobs_claim_different_gpus(tmp_path, fake_gpus):
    choice = select_device()
    assert choice.device == torch.device("cuda", 0)
    assert choice.description == f"cuda:0 Fake GPU 0 (GPU 0, claimed in {tmp_path / 'locks'})"
    assert select_device() is choice  # chosen once per process
    # Another job (another open file description: flock conflicts as between processes) gets GPU 1.
    index, claim = claim_gpu(["0", "1"], tmp_path / "locks", wait_seconds=0)
    assert index == 1
    with pytest.raises(NoFreeGPUError, match=r"all 2 visible GPUs \['0', '1'\] stayed claimed by other jobs for 0.2 s"):
        claim_gpu(["0", "1"], tmp_path / "locks", wait_seconds=0.2, poll_seconds=0.05)
    claim.close()  # the job ends: its GPU is free again
    assert claim_gpu(["0", "1"], tmp_path / "locks", wait_seconds=0)[0] == 1


def test_claims_are_named_after_cuda_visible_devices(monkeypatch, tmp_path, fake_gpus):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa11, GPU-bb/22")
    assert visible_gpu_ids(2) == ["GPU-aa11", "GPU-bb/22"]
    _, other_job = claim_gpu(["GPU-aa11"], tmp_path / "locks", wait_seconds=0)
    choice = select_device()
    assert choice.device == torch.device("cuda", 1)
    assert "(GPU GPU-bb/22, claimed in" in choice.description
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["gpu-GPU-aa11.lock", "gpu-GPU-bb_22.lock"]
    other_job.close()


def test_visible_ids_are_ordinals_without_cuda_visible_devices_and_capped_by_the_count():
    assert visible_gpu_ids(3, env={}) == ["0", "1", "2"]
    assert visible_gpu_ids(1, env={"CUDA_VISIBLE_DEVICES": "5,7"}) == ["5"]
    assert visible_gpu_ids(2, env={"CUDA_VISIBLE_DEVICES": ""}) == []


def test_claim_needs_ids(tmp_path):
    with pytest.raises(ValueError, match="claim_gpu needs at least one GPU id, got none"):
        claim_gpu([], tmp_path)
