"""Flower's simulation engine (Ray, one virtual SuperNode per training node) against
``mglightning.train``: same config and seed, so the same x_ag bit for bit."""

import pytest

pytest.importorskip("flwr", reason="the flower extra (pip install -e '.[flower]') is not installed")
pytest.importorskip("ray", reason="flwr[simulation] (Ray) is not installed")

import torch  # noqa: E402
from conftest import TINY, compose_config  # noqa: E402

from mglightning.flower.server_app import ROUNDS_FILE, STATE_FILE  # noqa: E402
from mglightning.flower.simulate import simulate  # noqa: E402
from mglightning.run.folder import RunFolder  # noqa: E402
from mglightning.train import run  # noqa: E402

ROUNDS = 3


@pytest.mark.slow
def test_simulation_meta_model_equals_the_in_process_run(tmp_path):
    common = [f"rounds={ROUNDS}", f"data_root={tmp_path / 'data'}"]
    in_process_cfg = compose_config(common, tmp_path / "in_process")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray actor: float sums in the same order
    try:
        run(in_process_cfg)
        output_dir = simulate([*TINY, f"output_root={tmp_path / 'flower'}", *common], num_cpus=1)
    finally:
        torch.set_num_threads(threads)
    reference = torch.load(RunFolder(in_process_cfg.output_dir).checkpoint_path,
                           weights_only=False)["state_dict"]
    flower = torch.load(output_dir / STATE_FILE, weights_only=True)["state_dict"]
    assert int(flower["rounds_done"]) == int(reference["rounds_done"]) == ROUNDS
    assert torch.equal(flower["x"], reference["x"])
    assert torch.equal(flower["x_ag"], reference["x_ag"])
    assert len((output_dir / ROUNDS_FILE).read_text().splitlines()) == ROUNDS + 1
