"""A DFT actor's GPU share, read from a real Ray runtime (``dft.backend.actor_gpu_share``): the per-actor cap on
CuPy's pool comes from it. The runtime declares one GPU that does not exist (Ray schedules by the number); no
CUDA is touched."""
from __future__ import annotations

import shutil
import sys
import tempfile

import pytest


@pytest.fixture(scope="module")
def ray_with_one_gpu():
    ray = pytest.importorskip("ray")
    from edg.cluster.runtime import LOCALHOST, loopback_only, private_auth
    from ray import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the test module
    if ray.is_initialized():
        pytest.skip("a Ray runtime is already connected in this process")
    tmp = tempfile.mkdtemp(prefix="edgray")  # short: Ray's socket paths must stay under 108 characters
    try:
        with loopback_only(), private_auth(tmp):  # as cluster.runtime.ray_session: loopback, a private token
            ray.init(num_cpus=2, num_gpus=1, _temp_dir=tmp, include_dashboard=False, log_to_driver=False,
                     _node_ip_address=LOCALHOST)
            try:
                yield ray
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _share_and_fraction():
    from edg.dft.backend import actor_gpu_share, pool_fraction
    return actor_gpu_share(), pool_fraction(), pool_fraction(0.5)


def test_an_actor_reads_its_gpu_share_and_caps_its_pool_by_it(ray_with_one_gpu):
    ray = ray_with_one_gpu
    from edg.dft.backend import actor_gpu_share, pool_fraction
    assert actor_gpu_share() is None and pool_fraction() == 0.9  # the driver holds no GPU share

    @ray.remote
    class Probe:
        def read(self):
            return _share_and_fraction()

    def read(gpus: float):
        """What an actor holding ``gpus`` reads; one actor at a time, so that each can be placed at once."""
        actor = Probe.options(num_cpus=0, num_gpus=gpus).remote()
        try:
            return ray.get(actor.read.remote(), timeout=600)  # a bound, not a wait: placement is immediate
        finally:
            ray.kill(actor)

    share, fraction, configured = read(0.25)
    assert share == 0.25 and fraction == pytest.approx(0.9 * 0.25) and configured == 0.5
    assert read(0)[:2] == (None, 0.9)
    assert read(1)[:2] == (1.0, 0.9)
