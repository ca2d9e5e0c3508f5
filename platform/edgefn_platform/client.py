"""A small client for the admin API, used by the CLI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx

from edgefn_runtime import EdgefnError

__all__ = ["AdminClient", "AdminError", "GatewayUnreachable", "LogPage"]


class AdminError(EdgefnError):
    """The admin API answered with an error: its `status` and `code` are the server's."""

    code = "admin_error"
    status = 502

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code


class GatewayUnreachable(EdgefnError):
    """The admin API could not be reached (refused, timed out, TLS failed): a script
    may retry, which it should not after an `AdminError`."""

    code = "unreachable"
    status = 503
    exit_code = 3


@dataclass
class LogPage:
    """Log lines from the admin API, oldest first; `more`: lines were left out (with
    `oldest`, after the last of these); `skipped`: lines after the cursor may have
    been dropped by retention before they were read."""

    lines: list[dict[str, Any]]
    more: bool
    skipped: bool


class _Progress:
    """A file wrapper that reports how many bytes were read from it."""

    def __init__(self, file: BinaryIO, report: Callable[[int], None]) -> None:
        self._file = file
        self._report = report

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._report(len(chunk))
        return chunk


class AdminClient:
    def __init__(self, gateway: str, token: str | None, timeout: float = 300.0) -> None:
        self.gateway = gateway.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.gateway, headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        return response.json() if response.content else None

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise GatewayUnreachable(
                f"cannot reach the gateway admin API at {self.gateway}: {exc}"
            ) from None
        if 300 <= response.status_code < 400:
            # Not followed (a redirected PUT or DELETE would change what it is sent
            # to), and not a success either: the call did nothing.
            where = response.headers.get("location", "nowhere")
            raise AdminError(
                response.status_code,
                "http_error",
                f"the gateway redirected {method} {path} to {where} instead of answering it",
            )
        if response.status_code >= 400:
            try:  # the gateway's error shape; a proxy in front may answer in its own
                error = response.json()["error"]
                code, message = str(error["code"]), str(error["message"])
            except (ValueError, KeyError, TypeError):
                raise AdminError(response.status_code, "http_error", response.text[:200]) from None
            raise AdminError(response.status_code, code, message)
        return response

    def deploy(
        self,
        manifest: str,
        component: Path,
        assets: Path | None = None,
        progress: Callable[[int], None] = lambda _n: None,
    ) -> dict[str, Any]:
        with component.open("rb") as wasm:
            files: dict[str, Any] = {
                "component": (component.name, _Progress(wasm, progress), "application/wasm")
            }
            if assets is not None:
                files["assets"] = ("assets.tar.gz", assets.open("rb"), "application/gzip")
            result: dict[str, Any] = self._call(
                "POST", "/v1/functions", data={"manifest": manifest}, files=files
            )
            return result

    def functions(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/functions")  # type: ignore[no-any-return]

    def function(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/functions/{name}")  # type: ignore[no-any-return]

    def versions(self, name: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/functions/{name}/versions")  # type: ignore[no-any-return]

    def activate(self, name: str, version: int) -> dict[str, Any]:
        path = f"/v1/functions/{name}/activate"
        return self._call("POST", path, json={"version": version})  # type: ignore[no-any-return]

    def limits(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/functions/{name}/limits")  # type: ignore[no-any-return]

    def set_limits(self, name: str, limits: dict[str, str]) -> dict[str, Any]:
        path = f"/v1/functions/{name}/limits"
        return self._call("PATCH", path, json=limits)  # type: ignore[no-any-return]

    def reset_limits(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/functions/{name}/limits")  # type: ignore[no-any-return]

    def purge(self, name: str, prefix: str = "/") -> dict[str, Any]:
        path = f"/v1/functions/{name}/purge"
        return self._call("POST", path, json={"prefix": prefix})  # type: ignore[no-any-return]

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/v1/functions/{name}")

    def logs(
        self, name: str, after: int = 0, request_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest lines (up to 200) after line `after`, oldest first."""
        return self.log_page(name, after, request_id, oldest=False).lines

    def log_page(
        self,
        name: str,
        after: int = 0,
        request_id: str | None = None,
        oldest: bool = True,
        limit: int = 200,
    ) -> LogPage:
        """Lines after line `after`, oldest first: with `oldest`, the first `limit`
        of them (read on from a cursor), else the newest `limit`."""
        path = f"/v1/functions/{name}/logs"
        params: dict[str, str | int] = {"after": after, "limit": limit}
        if oldest:
            params["oldest"] = "true"
        if request_id is not None:
            params["request_id"] = request_id
        response = self._send("GET", path, params=params)
        return LogPage(
            lines=response.json(),
            more=response.headers.get("x-edgefn-more") == "1",
            skipped=response.headers.get("x-edgefn-skipped") == "1",
        )

    # -- key-value stores -------------------------------------------------------

    def kv_keys(self, name: str, store: str, prefix: str = "", limit: int = 1000) -> list[str]:
        """The store's live keys starting with `prefix`, in byte order, at most `limit`."""
        params: dict[str, str | int] = {"prefix": prefix, "limit": limit}
        result = self._call("GET", _kv_path(name, store), params=params)
        return [str(key) for key in result["keys"]]

    def kv_get(self, name: str, store: str, key: str) -> bytes:
        """The key's value; `AdminError` with code `kv_key_not_found` if absent."""
        return self._send("GET", _kv_path(name, store, key)).content

    def kv_set(
        self, name: str, store: str, key: str, value: bytes, ttl: float | None = None
    ) -> None:
        params = {} if ttl is None else {"ttl": repr(ttl)}
        self._send("PUT", _kv_path(name, store, key), content=value, params=params)

    def kv_delete(self, name: str, store: str, key: str) -> None:
        self._send("DELETE", _kv_path(name, store, key))

    def secrets(self, name: str) -> list[dict[str, Any]]:
        """Each secret's name, `set_at` (None: declared, not set) and `declared`."""
        result = self._call("GET", _secret_path(name))
        return list(result["secrets"])

    def set_secret(self, name: str, key: str, value: str) -> dict[str, Any]:
        """Set a secret; answers once every worker of the gateway reads it."""
        return dict(self._call("PUT", _secret_path(name, key), json={"value": value}))

    def delete_secret(self, name: str, key: str) -> None:
        """Remove a secret; `AdminError` with code `secret_not_found` if none is set."""
        self._send("DELETE", _secret_path(name, key))

    def rotate_secrets(self) -> int:
        """Encrypt every secret again with the gateway's first key; how many."""
        return int(self._call("POST", "/v1/secrets/rotate")["rotated"])

    def close(self) -> None:
        self._http.close()


def _kv_path(name: str, store: str, key: str | None = None) -> str:
    path = f"/v1/functions/{quote(name, safe='')}/kv/{quote(store, safe='')}"
    if key is None:
        return path
    # Every reserved character percent-encoded, `/` included (the server takes the
    # rest of the path as the key); dots too, so that no client or proxy resolves
    # a key such as ".." as a path segment.
    return path + "/" + quote(key, safe="").replace(".", "%2E")


def _secret_path(name: str, key: str | None = None) -> str:
    path = f"/v1/functions/{quote(name, safe='')}/secrets"
    return path if key is None else f"{path}/{quote(key, safe='')}"
