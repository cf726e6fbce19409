"""The network interface a multi-host job's collectives bind to.

resourceconfig.json names it (network_interface_name) and `train` hands it to
gloo, NCCL and mpirun. SageMaker's cloud names an interface the container has;
the v3 SDK's local mode writes "ethwe" into every host's resourceconfig.json
while its compose containers only have eth0, and gloo then fails on every host
with "Unable to find address for: ethwe". So when the named interface is not
there, we use the one that routes to the first host, and say so.

The route comes from /proc/net/route (longest prefix match): the image has no
iproute2, and a library such as pyroute2 would be a dependency for ten lines.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import time
from pathlib import Path

from train.errors import ContractError

log = logging.getLogger("train")

ROUTES = Path("/proc/net/route")


def interface_names() -> set:
    return {name for _, name in socket.if_nameindex()}


def route_interface(address: str, routes: str) -> str | None:
    """The interface of the most specific IPv4 route to `address` in /proc/net/route text."""
    target = int(ipaddress.IPv4Address(address))
    best = None  # (prefix length, interface)
    for line in routes.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        # Destination and Mask are little-endian hex: 0100A8C0 is 192.168.0.1
        destination = int.from_bytes(bytes.fromhex(fields[1]), "little")
        mask = int.from_bytes(bytes.fromhex(fields[7]), "little")
        if target & mask == destination:
            prefix = bin(mask).count("1")
            if best is None or prefix > best[0]:
                best = (prefix, fields[0])
    return best[1] if best else None


def resolve_ipv4(host: str, wait_s: float) -> str:
    """The host's IPv4 address, retrying while the other containers start (their names appear then)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
        except OSError as error:
            if time.monotonic() > deadline:
                raise ContractError(f"cannot resolve the first host {host!r} after {wait_s:.0f} s: {error}") from None
            time.sleep(1)  # startup only: that host's container may not be up yet


def resolves(host: str) -> bool:
    """Whether `host` resolves here now (no retry: for a one-host job, where the name is this
    container's own or none at all)."""
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return False
    return True


def usable_interface(named: str, first_host: str, wait_s: float, routes_file: Path | None = None) -> str:
    """`named` when this container has it, else the interface that routes to the first host."""
    if named in interface_names():
        return named
    address = resolve_ipv4(first_host, wait_s)
    found = route_interface(address, (routes_file or ROUTES).read_text())
    if found is None:
        raise ContractError(
            f"network interface {named!r} (network_interface_name in resourceconfig.json) does not exist "
            f"here, and no interface routes to the first host {first_host} ({address})"
        )
    log.warning("network interface %r (network_interface_name in resourceconfig.json) does not exist here: "
                "using %s, which routes to the first host %s (%s)", named, found, first_host, address)
    return found


def with_usable_interface(contract):
    """The contract with an interface this container has (multi-host jobs only: one host needs none)."""
    if len(contract.hosts) < 2:
        return contract
    interface = usable_interface(contract.network_interface_name, contract.hosts[0], contract.settings.mpi_wait_s)
    if interface == contract.network_interface_name:
        return contract
    return dataclasses.replace(contract, network_interface_name=interface)
