"""Flower's simulation on a running Ray cluster: a head and a second node started with `ray start` on
127.0.0.1; the run attaches to them through RAY_ADDRESS and its clients run on both nodes."""

from __future__ import annotations

import pytest

from hydiscgan_fl.orchestration.flwr_runner import LocalFederation
from hydiscgan_fl.orchestration.ray_cluster import RayCluster, RayStartError


def test_a_simulation_attaches_to_a_two_node_ray_cluster_and_runs_clients_on_both(tmp_path):
    cluster = RayCluster(num_nodes=2, cpus_per_node=1)
    try:
        cluster.start()
    except RayStartError as err:
        print(f"ray start cannot run here: {err}")
        pytest.skip(f"ray start cannot run here: {str(err)[-300:]}")
    try:
        run_config = {"dataset": "synthetic", "rounds-align": 1, "rounds-msa": 1, "local-epochs": 1,
                      "output-dir": str(tmp_path)}
        with LocalFederation(flwr_home=tmp_path / "flwr-home", ray_address=cluster.address) as federation:
            outcome = federation.run(run_config, num_supernodes=4, client_cpus=1, timeout_s=600)
        assert outcome.status == "finished:completed"
        # One ClientAppActor per CPU of the cluster: one on each node, each running ClientApps.
        nodes = cluster.actor_nodes("ClientAppActor")
        assert len(set(nodes.values())) == 2, nodes
    finally:
        cluster.stop()
