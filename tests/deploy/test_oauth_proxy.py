"""components/oauth-proxy (in prod): the sidecar, its OAuth client, certificate,
cookie secret and Routes, wired to the webui's trusted-header sign-in.

The webui side of the same path runs for real in
tests/webui/test_oauth_proxy_path.py, with the headers the proxy sends."""

from __future__ import annotations

import json
from ipaddress import ip_address

import pytest

from shared.settings import load_settings

from .manifests import Doc, config, deployment, named, of_kind, one

# What openshift/oauth-proxy adds to a signed-in request, per flag.
HEADERS_BY_FLAG = {
    "--pass-user-headers": ("X-Forwarded-User", "X-Forwarded-Email"),
    "--pass-access-token": ("X-Forwarded-Access-Token",),
}


@pytest.fixture
def prod(rendered: dict[str, list[Doc]]) -> list[Doc]:
    return rendered["prod"]


def proxy(docs: list[Doc]) -> tuple[Doc, Doc]:
    pod = deployment(docs, "webui")["spec"]["template"]["spec"]
    (sidecar,) = [c for c in pod["containers"] if c["name"] == "oauth-proxy"]
    return pod, sidecar


def flags(container: Doc) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in container["args"])


def mounted_volume(pod: Doc, container: Doc, path: str) -> Doc:
    """The volume mounted at the folder holding `path`."""
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    volumes: list[Doc] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (volume,) = volumes
    return volume


def test_the_webui_trusts_only_its_sidecar(prod: list[Doc]) -> None:
    _, sidecar = proxy(prod)
    args = flags(sidecar)
    data = config(prod)
    assert args["--upstream"] == f"http://localhost:{data['PORT']}"
    settings = load_settings(database_url="postgresql://u@db/x", redis_url="redis://r:6379/0",
                             **{k.lower(): v for k, v in data.items()})
    assert settings.trust_forwarded_user
    # localhost is 127.0.0.1 or ::1 depending on the resolver: both, and nothing wider.
    networks = settings.trusted_proxy_networks
    for peer in ("127.0.0.1", "::1"):
        assert any(ip_address(peer) in net for net in networks), peer
    assert all(net.num_addresses == 1 for net in networks)
    # The header the webui reads is one the proxy sends.
    sent = {h for flag, headers in HEADERS_BY_FLAG.items() if args.get(flag) == "true" for h in headers}
    assert settings.forwarded_user_header in sent
    # An API key typed into the page reaches the webui (no Basic auth put in its place),
    # and the user's OpenShift token is not handed to the application.
    assert args["--pass-basic-auth"] == "false"
    assert args["--pass-access-token"] == "false"


def test_oauth_client_certificate_and_cookie_secret(prod: list[Doc]) -> None:
    pod, sidecar = proxy(prod)
    args = flags(sidecar)
    # The OAuth client is the pod's service account, which names the Route to return to.
    assert args["--provider"] == "openshift"
    account = one(prod, "ServiceAccount", args["--openshift-service-account"])
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    ref = json.loads(account["metadata"]["annotations"]
                     ["serviceaccounts.openshift.io/oauth-redirectreference.primary"])
    route = one(prod, "Route", ref["reference"]["name"])
    assert route["spec"]["tls"]["termination"] == "reencrypt"
    # The router re-encrypts to the proxy's port, whose certificate the service CA issues.
    service = one(prod, "Service", route["spec"]["to"]["name"])
    https = [p for p in service["spec"]["ports"] if p["name"] == route["spec"]["port"]["targetPort"]]
    assert https and https[0]["targetPort"] == "https"
    port = [p["containerPort"] for p in sidecar["ports"] if p["name"] == "https"]
    assert port == [int(args["--https-address"].rsplit(":", 1)[1])]
    cert_secret = service["metadata"]["annotations"]["service.beta.openshift.io/serving-cert-secret-name"]
    for flag in ("--tls-cert", "--tls-key"):
        assert mounted_volume(pod, sidecar, args[flag])["secret"]["secretName"] == cert_secret
    # The cookie secret: created once by the operator (deploy/README.md), never rendered.
    cookie = mounted_volume(pod, sidecar, args["--cookie-secret-file"])["secret"]["secretName"]
    assert cookie == "sluice-oauth-proxy" and named(prod, "Secret", cookie) is None
    assert args["--cookie-secret-file"].endswith("/session_secret")


def test_api_clients_have_a_route_past_the_proxy(prod: list[Doc]) -> None:
    """Bearer-key clients cannot follow a login page: their Route goes to the webui's
    own port, where a forged X-Forwarded-Email comes from the router and is ignored."""
    routes = {r["metadata"]["name"]: r for r in of_kind(prod, "Route")}
    api = routes["webui-api"]
    assert api["spec"]["port"]["targetPort"] == "http"
    assert api["spec"]["tls"]["termination"] == "edge"


def test_the_webui_stays_the_default_container(prod: list[Doc]) -> None:
    """`oc exec deploy/webui -- sluice keys ...` (deploy/README.md), `oc logs` and
    `sluice doctor --overlay` reach the webui, not the sidecar."""
    template = deployment(prod, "webui")["spec"]["template"]
    assert template["spec"]["containers"][0]["name"] == "webui"
    assert template["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "webui"


def test_dev_has_no_proxy(rendered: dict[str, list[Doc]]) -> None:
    pod = deployment(rendered["dev"], "webui")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["webui"]
    assert config(rendered["dev"])["TRUST_FORWARDED_USER"] == "false"
