"""Network settings: command-line options over the store's config file over defaults.

The store's config file is ``<store>/config.toml``; its ``[net]`` table may hold::

    [net]
    listen = "127.0.0.1:4001"        # no listen: no port is opened
    peers = ["127.0.0.1:4002"]       # nodes to connect to and bootstrap the DHT from
    default_credit = "1GiB"          # letter granted to a peer met for the first time (0: none)
    metering = true
    provider_ttl = 172800            # seconds (libp2p: 48 h)
    republish = 79200                # seconds (libp2p: 22 h)
    follow = 5                       # seconds between checks for newer versions
    accept_pins = true               # accept pin requests from peers with credit
    min_free = "1GiB"                # decline pins that would leave less free space

Durations are seconds, sizes bytes or strings like ``"100MiB"``. Unknown keys are an
error (a typo should not silently do nothing).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib

from .wire import MAX_FRAME

_SIZE = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 1 << 20,
         "g": 10**9, "gb": 10**9, "gib": 1 << 30, "t": 10**12, "tb": 10**12, "tib": 1 << 40}


class ConfigError(ValueError):
    """A bad network setting (address, size, unknown key)."""


@dataclasses.dataclass
class NetConfig:
    """All network settings (see the module docstring for the file form)."""
    listen: tuple[str, int] | None = None
    peers: list = dataclasses.field(default_factory=list)
    default_credit: int = 1 << 30
    metering: bool = True
    provider_ttl: float = 48 * 3600.0
    republish: float = 22 * 3600.0
    follow: float = 5.0
    dht_refresh: float = 3600.0
    rpc_timeout: float = 5.0
    ksize: int = 20
    alpha: int = 10
    bad_peer_for: float = 600.0
    iou_every: int = 4 << 20
    max_frame: int = MAX_FRAME
    max_inflight: int = 64
    want_batch: int = 128
    request_timeout: float = 30.0
    accept_pins: bool = True
    min_free: int = 1 << 30


def parse_addr(s: str) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``"[v6]:PORT"`` -> (host, port). Raises ConfigError."""
    m = re.fullmatch(r"\s*(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+)):(\d{1,5})\s*", s or "")
    if not m or not 0 < int(m.group(3)) < 65536:
        raise ConfigError(f"not HOST:PORT: {s!r}")
    return (m.group(1) or m.group(2), int(m.group(3)))


def parse_size(v) -> int:
    """An int, or ``"100MiB"`` etc. -> bytes. Raises ConfigError."""
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(v))
    if not m or m.group(2).lower() not in _SIZE:
        raise ConfigError(f"not a size: {v!r}")
    return int(m.group(1)) * _SIZE[m.group(2).lower()]


def load(store_path: str | None, **overrides) -> NetConfig:
    """Defaults, then ``[net]`` of ``<store_path>/config.toml`` if present, then the
    ``overrides`` that are not None (``listen`` / ``peers`` as strings or tuples).
    Raises ConfigError."""
    cfg = NetConfig()
    table = {}
    path = os.path.join(store_path, "config.toml") if store_path else None
    if path and os.path.exists(path):
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f).get("net", {})
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from e
    fields = {f.name: f for f in dataclasses.fields(NetConfig)}
    for k, v in list(table.items()) + [(k, v) for k, v in overrides.items() if v is not None]:
        if k not in fields:
            raise ConfigError(f"unknown [net] setting {k!r}")
        if k == "listen":
            v = parse_addr(v) if isinstance(v, str) else (tuple(v) if v else None)
        elif k == "peers":
            v = [parse_addr(p) if isinstance(p, str) else tuple(p) for p in (v or [])]
        elif k in ("default_credit", "iou_every", "max_frame", "min_free"):
            v = parse_size(v)
        elif isinstance(getattr(cfg, k), bool):
            if not isinstance(v, bool):
                raise ConfigError(f"{k} is true or false")
        elif isinstance(getattr(cfg, k), (int, float)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{k} is a non-negative number")
            v = type(getattr(cfg, k))(v)
        setattr(cfg, k, v)
    return cfg
