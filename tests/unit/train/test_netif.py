"""The interface a multi-host job binds to when resourceconfig.json names one the container lacks."""

import json
import logging
import socket

import pytest

from train import launch, netif
from train.contract import load_contract
from train.errors import ContractError

# /proc/net/route of a compose container on a user network 172.18.0.0/16 (gateway 172.18.0.1),
# with a second, more specific network on eth1.
ROUTES = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010012AC\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth1\t000A12AC\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""

# What the SageMaker Python SDK v3 (sagemaker-train 1.27.0, local/local_container.py) writes
# for each host of a 2-instance local job: byte for byte its keys and values.
V3_RESOURCECONFIG = {
    "current_host": "algo-2",
    "hosts": ["algo-1", "algo-2"],
    "network_interface_name": "ethwe",
    "current_instance_type": "local",
}


def test_route_interface_takes_the_most_specific_route():
    assert netif.route_interface("172.18.0.3", ROUTES) == "eth0"
    assert netif.route_interface("172.18.10.7", ROUTES) == "eth1"
    assert netif.route_interface("10.1.2.3", ROUTES) == "eth0"  # the default route
    assert netif.route_interface("10.1.2.3", ROUTES.splitlines()[0]) is None


def test_an_interface_that_exists_is_kept(monkeypatch):
    monkeypatch.setattr(netif, "resolve_ipv4", lambda *a: pytest.fail("no lookup needed"))
    name = socket.if_nameindex()[0][1]
    assert netif.usable_interface(name, "algo-1", 1) == name


def test_fallback_on_this_machine_is_a_real_interface():
    """No fakes: this machine has no 'ethwe'; the route to its own name is through one it has."""
    assert "ethwe" not in netif.interface_names()
    assert netif.usable_interface("ethwe", socket.gethostname(), 5) in netif.interface_names()


def test_v3_resourceconfig_gets_the_interface_that_routes_to_the_first_host(tmp_path, monkeypatch, caplog):
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    (config / "resourceconfig.json").write_text(json.dumps(V3_RESOURCECONFIG))
    (config / "hyperparameters.json").write_text(json.dumps({"sagemaker_torch_distributed_enabled": "true"}))
    (tmp_path / "input" / "data" / "train").mkdir(parents=True)
    (tmp_path / "input" / "data" / "train" / "x").write_text("x")
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    monkeypatch.setattr(netif, "ROUTES", routes)
    monkeypatch.setattr(netif, "resolve_ipv4", lambda host, wait_s: {"algo-1": "172.18.0.2"}[host])

    contract = load_contract({"BYOC_ML_ROOT": str(tmp_path)}, num_gpus=0)
    assert contract.network_interface_name == "ethwe"
    with caplog.at_level(logging.WARNING, logger="train"):
        contract = netif.with_usable_interface(contract)
    assert contract.network_interface_name == "eth0"
    assert "'ethwe'" in caplog.text and "eth0" in caplog.text and "algo-1" in caplog.text
    plan = launch.plan_launch(contract, contract.environment())
    assert plan.launcher == "torchrun"
    assert plan.env["NCCL_SOCKET_IFNAME"] == plan.env["GLOO_SOCKET_IFNAME"] == "eth0"
    assert contract.environment()["SM_NETWORK_INTERFACE_NAME"] == "eth0"


def test_one_host_needs_no_interface(tmp_path, monkeypatch):
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    (config / "resourceconfig.json").write_text(json.dumps({**V3_RESOURCECONFIG, "current_host": "algo-1",
                                                             "hosts": ["algo-1"]}))
    monkeypatch.setattr(netif, "resolve_ipv4", lambda *a: pytest.fail("no lookup for one host"))
    contract = load_contract({"BYOC_ML_ROOT": str(tmp_path)}, num_gpus=0)
    assert netif.with_usable_interface(contract) is contract


def test_no_route_stops_the_job_with_the_reason(tmp_path, monkeypatch):
    routes = tmp_path / "route"
    routes.write_text(ROUTES.splitlines()[0] + "\n")
    monkeypatch.setattr(netif, "resolve_ipv4", lambda host, wait_s: "172.18.0.2")
    with pytest.raises(ContractError, match="'ethwe'.*no interface routes to the first host algo-1"):
        netif.usable_interface("ethwe", "algo-1", 1, routes)


def test_unresolvable_first_host_stops_with_the_reason():
    with pytest.raises(ContractError, match="cannot resolve the first host 'no-such-host.invalid'"):
        netif.resolve_ipv4("no-such-host.invalid", 0)
