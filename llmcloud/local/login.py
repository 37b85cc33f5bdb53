"""Signing in at the local stack's identity provider (oidc-provider-mock) as one of its demo users.

The same flows a person's browser and a program take: used by the integration tests and the edge benchmark.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse


def unanswered(error: BaseException) -> bool:
    """The server closed the connection before any byte of an answer: what a kept-alive connection that the
    server closed as the request went out looks like (nginx closes its idle ones when it reloads). Either
    client library's words for it: http.client's RemoteDisconnected (requests) or httpx's "Server
    disconnected without sending a response" (the openai client)."""
    from http.client import RemoteDisconnected

    try:
        from httpx2 import RemoteProtocolError as HttpxProtocolError
    except ImportError:  # no openai client here: only requests' form can occur
        HttpxProtocolError = ()

    seen, todo = set(), [error]
    while todo:
        found = todo.pop()
        if found is None or id(found) in seen:
            continue
        seen.add(id(found))
        if isinstance(found, RemoteDisconnected):
            return True
        if isinstance(found, HttpxProtocolError) and "without sending a response" in str(found):
            return True
        todo += [found.__cause__, found.__context__]
        todo += [arg for arg in getattr(found, "args", ()) if isinstance(arg, BaseException)]
    return False


def session(ca_bundle: str):
    """A requests session that verifies the edge against the stack's CA (and ignores REQUESTS_CA_BUNDLE).

    Like a browser, it sends a request again once, on a new connection, when the connection closed before any
    answer began: nginx closes its idle kept-alive connections when it reloads (each change of the edge), and
    a request sent on one in that instant meets a closed socket. Nothing else is sent again: an answer that
    began (a 502 too), a refused connection, a timeout."""
    import requests

    class ResendUnanswered(requests.adapters.HTTPAdapter):
        def send(self, request, *args, **kwargs):
            try:
                return super().send(request, *args, **kwargs)
            except requests.ConnectionError as error:
                if not unanswered(error):
                    raise
                return super().send(request, *args, **kwargs)

    s = requests.Session()
    s.verify = ca_bundle
    s.trust_env = False
    for scheme in ("https://", "http://"):
        s.mount(scheme, ResendUnanswered())
    return s


def browser_login(status: dict, user: str):
    """Through the redirects: edge → oauth2-proxy → identity provider's form → callback.

    ``status`` is what `llmcloud local status --json` prints. Returns the session (holding the edge's session
    cookie when the user is allowed) and the last response.
    """
    s = session(status["ca_bundle"])
    form = s.get(status["url"], timeout=20)
    if form.status_code != 200 or not form.url.startswith(status["login"]["provider"] + "/oauth2/authorize"):
        raise RuntimeError(f"the edge did not lead to the identity provider's form (HTTP {form.status_code})")
    return s, s.post(form.url, data={"sub": user}, timeout=20)


def id_token(status: dict, client_id: str, user: str = "alice") -> str:
    """An ID token (RS256) for ``client_id`` from the identity provider's authorization-code flow."""
    s = session(status["ca_bundle"])
    idp, callback = status["login"]["provider"], "https://client.invalid/callback"
    params = {"client_id": client_id, "redirect_uri": callback, "response_type": "code"}
    params["scope"] = "openid email"
    coded = s.post(
        f"{idp}/oauth2/authorize",
        params={**params, "state": "s", "nonce": "n"},
        data={"sub": user},
        allow_redirects=False,
        timeout=20,
    )
    code = parse_qs(urlparse(coded.headers["Location"]).query)["code"][0]
    token = s.post(
        f"{idp}/oauth2/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": callback},
        auth=(client_id, "any"),
        timeout=20,
    )
    if token.status_code != 200:
        raise RuntimeError(f"the identity provider refused the token request: {token.text[:200]}")
    return token.json()["id_token"]
