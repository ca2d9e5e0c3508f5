"""Keys and secret names the CLI refuses before calling the gateway, and an admin
answer that is a redirect: none of them may be reported as done. Found by using
the CLI as the README shows: `edgefn kv set NAME default "" v` printed "Set ''"
and `edgefn secrets rm NAME ""` "Removed", while the gateway had only redirected
the empty segment (and `secrets set` crashed on the redirect's empty body)."""

from __future__ import annotations

import httpx
import pytest
from click.testing import CliRunner

from edgefn_platform.cli import main
from edgefn_platform.client import AdminClient, AdminError

# Nothing listens there: a command that got past its arguments would exit 3.
UNREACHABLE = ["--gateway", "http://127.0.0.1:9", "--token", "t"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["kv", "set", "shop", "default", "", "v"], "keys cannot be empty"),
        (["kv", "get", "shop", "default", ""], "keys cannot be empty"),
        (["kv", "rm", "shop", "default", ""], "keys cannot be empty"),
        (["kv", "get", "shop", "default", "a\nb"], "control characters"),
        (["kv", "get", "shop", "default", "k" * 513], "at most 512 bytes"),
        (["secrets", "set", "shop", ""], "secret names are letters"),
        (["secrets", "rm", "shop", ""], "secret names are letters"),
        (["secrets", "rm", "shop", "bad-name"], "secret names are letters"),
    ],
)
def test_a_bad_key_or_secret_name_is_a_usage_error_saying_the_rule(
    args: list[str], says: str
) -> None:
    result = CliRunner().invoke(main, [*args[:2], *UNREACHABLE, *args[2:]], input="value\n")
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert "Set" not in result.output and "Removed" not in result.output


def test_an_admin_answer_that_redirects_is_an_error_not_a_success() -> None:
    def redirect(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"location": "http://gw/v1/functions/shop/kv/default"})

    client = AdminClient("http://gw", "t")
    client._http = httpx.Client(base_url="http://gw", transport=httpx.MockTransport(redirect))
    with pytest.raises(AdminError, match="redirected PUT") as error:
        client.kv_set("shop", "default", "k", b"v")
    assert error.value.status == 307
    with pytest.raises(AdminError, match="redirected DELETE"):
        client.delete_secret("shop", "TOKEN")
