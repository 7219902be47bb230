"""Outbound URL policy for every URL a tenant can set: its LLM base URL, a channel account's API base.

A tenant admin must not be able to make the server reach what only the server can reach (SSRF): Redis on
localhost, the cloud metadata service, a database on the private network. So a tenant-set URL must be http(s),
and every connection made for it goes only to public addresses. The check runs when the connection is opened,
on the very addresses the socket then connects to (resolve, vet, connect to the vetted IP; TLS still verifies
the host name), so a DNS answer that changes between a check and the request (rebinding) gains nothing.

The operator may allow named hosts (`OUTBOUND_ALLOW_HOSTS=ollama.internal,127.0.0.1:11434`): a local model
server is a real use. URLs the operator sets (`LLM_BASE_URL`, the provider base variables) are trusted and never
pass through this guard.

Two checks, one rule:
- `check_url(url)` when a URL is saved (admin API): scheme, host present, and an IP literal in any spelling
  (`2130706433`, `0x7f.1`, `[::1]`) or a `localhost` name refused at once, with a message saying why;
- `guarded_transport()` / `async_guarded_transport()` for the HTTP clients that use such a URL.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore
import httpcore2
import httpx
import httpx2

from app.config import get_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Public-looking but reserved for special use; `is_global` already excludes loopback, private (RFC 1918, ULA),
# link-local (169.254.0.0/16 with the metadata service, fe80::/10), shared (100.64.0.0/10), documentation,
# benchmarking and unspecified ranges. Multicast is refused separately (some multicast ranges count as global).
_ALSO_BLOCKED = (
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS metadata over IPv6 (inside ULA already; named for readers)
    ipaddress.ip_network("64:ff9b::/96"),  # NAT64: would reach any IPv4 address, private ones included
    ipaddress.ip_network("2002::/16"),  # 6to4: embeds an IPv4 address
)


class BlockedDestination(httpcore.ConnectError, httpcore2.ConnectError):
    """A tenant-set URL led to an address tenants may not reach. Either httpx generation raises it as its
    `ConnectError`; find it with `blocked_reason(exc)`."""


def allowed_hosts() -> frozenset[str]:
    raw = get_settings().outbound_allow_hosts or ""
    return frozenset(h.strip().lower().strip("[]") for h in raw.split(",") if h.strip())


def _allowed(host: str, port: int | None, allow: frozenset[str]) -> bool:
    host = host.lower().strip("[]")
    return host in allow or f"{host}:{port}" in allow


def address_problem(ip: IPAddress) -> str | None:
    """Why a tenant-set URL may not reach `ip`, or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_problem(ip.ipv4_mapped)
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "a private or reserved address"
    if any(ip in net for net in _ALSO_BLOCKED):
        return "a reserved address"
    return None


def _literal_ip(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, in any spelling a resolver accepts (`2130706433`,
    `0177.0.0.1`, `0x7f.1`, `::ffff:127.0.0.1`), or None for a name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))  # the classic forms getaddrinfo also takes
    except OSError:
        return None


def check_url(url: str) -> str | None:
    """Why `url` cannot be a tenant-set outbound URL, or None. Names are resolved only when connecting."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{url!r} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"{url!r} must start with https:// or http://"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return f"{url!r} has no host"
    if parts.username or parts.password:
        return f"{url!r} must not carry credentials; store them as the account's credentials"
    if _allowed(host, port, allowed_hosts()):
        return None
    if host == "localhost" or host.endswith(".localhost"):
        return f"{url!r} points at this server (localhost); tenant URLs must reach public addresses"
    ip = _literal_ip(host)
    if ip is not None and (problem := address_problem(ip)):
        return (f"{url!r} points at {ip}, {problem}; tenant URLs must reach public addresses "
                "(the operator can allow a host with OUTBOUND_ALLOW_HOSTS)")
    return None


def vetted_address(host: str, port: int, infos: Iterable[tuple[Any, ...]]) -> str:
    """The address to connect to for `host`, after checking every address it resolved to."""
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise BlockedDestination(f"{host} did not resolve to any address")
    for address in addresses:
        problem = address_problem(ipaddress.ip_address(address.split("%", 1)[0]))
        if problem:
            raise BlockedDestination(
                f"{host}:{port} resolves to {address}, {problem}; tenant-set URLs must reach public addresses "
                "(the operator can allow a host with OUTBOUND_ALLOW_HOSTS)")
    return addresses[0]


def _resolve(host: str, port: int) -> str:
    if _allowed(host, port, allowed_hosts()):
        return host
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise BlockedDestination(f"cannot resolve {host}: {exc}") from exc
    return vetted_address(host, port, infos)


async def _aresolve(host: str, port: int) -> str:
    if _allowed(host, port, allowed_hosts()):
        return host
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise BlockedDestination(f"cannot resolve {host}: {exc}") from exc
    return vetted_address(host, port, infos)


# httpx and httpx2 (the openai SDK's) share httpcore's design: a connection pool opens every TCP connection
# through its network backend, so a backend that connects only to vetted addresses guards every request,
# redirects included. TLS still checks the certificate against the host name.
class _Guarded(httpcore.SyncBackend):
    def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        return super().connect_tcp(_resolve(host, port), port, *args, **kwargs)


class _AsyncGuarded(httpcore.AnyIOBackend):
    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        return await super().connect_tcp(await _aresolve(host, port), port, *args, **kwargs)


class _Guarded2(httpcore2.SyncBackend):
    def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        return super().connect_tcp(_resolve(host, port), port, *args, **kwargs)


def guarded_transport() -> httpx.HTTPTransport:
    """An httpx transport whose every connection is vetted. Proxies from the environment are not used (they would
    hide the real destination from the check)."""
    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool._network_backend = _Guarded()  # the pool's backend hook (httpcore's `network_backend`)
    return transport


def async_guarded_transport() -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool._network_backend = _AsyncGuarded()
    return transport


def guarded_client2(**kwargs: Any) -> httpx2.Client:
    """An httpx2 client (the openai SDK's HTTP library) through the same guard."""
    transport = httpx2.HTTPTransport(trust_env=False)
    transport._pool._network_backend = _Guarded2()
    return httpx2.Client(transport=transport, trust_env=False, **kwargs)


def blocked_reason(exc: BaseException) -> str | None:
    """The policy's message when `exc` (or what caused it) is a refused destination."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BlockedDestination):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None
