"""Connecting the driver to Ray: ``auto``, ``HOST:PORT`` or ``local``.

Ray turns a loopback address (``127.0.0.1:6380``) into the machine's own non-loopback address
before connecting, unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; a head started on loopback only
(``ray start --head --node-ip-address=127.0.0.1 …``, as in the tests) is then unreachable. So for a
loopback address, and for ``local``, the driver keeps Ray on loopback.
"""

from __future__ import annotations

import ipaddress
import os

_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def is_loopback(address: str) -> bool:
    """Whether ``HOST:PORT`` (or a bare host) names this machine's loopback interface."""
    host = address.strip()
    if "://" in host:
        host = host.split("://", 1)[1]
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _keep_loopback() -> None:
    os.environ.setdefault(_ENV, "0")
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = os.environ[_ENV] not in ("0", "false", "False")
    except (ImportError, AttributeError):
        pass


def connect(address: str, num_cpus: int | None = None):
    """``ray.init`` for ``address``: ``auto`` (a running cluster: ``$RAY_ADDRESS`` or the one
    ``ray start`` recorded), ``HOST:PORT``, or ``local`` (a fresh in-process cluster on loopback with
    ``num_cpus`` CPUs). Returns the ``ray`` module.

    Token authentication is Ray's: with ``HOST:PORT``, a cluster started with
    ``RAY_AUTH_MODE=token`` needs ``RAY_AUTH_MODE=token`` (and ``RAY_AUTH_TOKEN`` or
    ``~/.ray/auth_token``) in the driver's environment too; the tasks get the cluster's."""
    if address == "local" or (address != "auto" and is_loopback(address)):
        # Before ray is imported, so that its constants see it.
        os.environ.setdefault(_ENV, "0")
    import ray

    if ray.is_initialized():
        return ray
    quiet = dict(logging_level="WARNING", log_to_driver=False)
    if address == "local":
        _keep_loopback()
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
        return ray
    if address == "auto":
        raw = None
        try:
            from ray._private import services

            raw = services.get_ray_address_from_environment("auto", None)
        except Exception:  # noqa: BLE001 (private API: fall back to Ray's own lookup)
            raw = None
        if raw and raw != "auto" and is_loopback(raw):
            _keep_loopback()
        # "auto" itself, not the address found: only then does Ray pick up a local token
        # (~/.ray/auth_token) for a cluster that uses token authentication.
        ray.init(address="auto", **quiet)
        return ray
    if is_loopback(address):
        _keep_loopback()
    ray.init(address=address, **quiet)
    return ray


def cluster_cpus(ray) -> int:
    """The cluster's CPUs (at least 1)."""
    try:
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    except Exception:  # noqa: BLE001
        return 1
