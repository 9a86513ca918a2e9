import torch

from pipeline.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint


def test_round_trip_nested_state(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    seq = torch.nn.Sequential(torch.nn.Linear(2, 2))  # dotted keys: '0.weight'
    state = {"net": net.state_dict(), "opt": opt.state_dict(), "counter": 7, "pl_mean": torch.tensor(0.5),
             "seq": seq.state_dict()}
    path = save_checkpoint(tmp_path, 12, state, {"kimg": 0.1})
    loaded, meta = load_checkpoint(path)
    assert meta["kimg"] == 0.1 and meta["step"] == 12 and loaded["counter"] == 7
    assert set(loaded["seq"]) == {"0.weight", "0.bias"}
    net2 = torch.nn.Linear(3, 2)
    net2.load_state_dict(loaded["net"])
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["opt"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert opt2.state_dict()["param_groups"][0]["lr"] == 1e-3


def test_latest_skips_checkpoints_without_sidecar(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": torch.zeros(1)}, {})
    second = save_checkpoint(tmp_path, 2, {"x": torch.ones(1)}, {})
    assert latest_checkpoint(tmp_path) == second
    second.with_suffix(".json").unlink()  # an interrupted write
    assert latest_checkpoint(tmp_path).name == "ckpt-000000001.safetensors"
    assert latest_checkpoint(tmp_path / "none") is None
