"""CurveZMQ encryption and authentication for the daemon's sockets, replay and subscribers.

One key pair per program (``livedenoise keys NAME`` writes ``NAME.key``, the public key to hand
out, and ``NAME.key_secret``, to keep). The rules are ZMQ's:

* the side that **binds** is the CURVE *server*: it has a key pair (``--curve-secret``) and, with
  ``--curve-allow DIR_OR_FILE``, accepts only clients whose public key is listed (a ``*.key``
  file, or a directory of them); without ``--curve-allow`` any client that knows the server's
  public key may connect (encryption without client authentication);
* the side that **connects** is the CURVE *client*: it must know the server's public key
  (``--source-curve-server-key`` for ``serve``'s input, ``--curve-server-key`` for a subscriber)
  and uses its own key pair (``--curve-secret``; a throw-away one if none is given).

So ``serve`` is a server on its PUB output and a client of the detector on its input.
Key files are parsed as text (``zmq.auth.load_certificate``): no pickle, no eval.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq

from .errors import LivedenoiseError

log = logging.getLogger("livedenoise.security")


def require_curve() -> None:
    if not zmq.has("curve"):
        raise LivedenoiseError("this libzmq was built without CURVE support: encryption is unavailable")


def make_keys(name: str | Path) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600); return both paths."""
    import zmq.auth

    require_curve()
    name = Path(name)
    folder = name.parent if str(name.parent) else Path(".")
    if not folder.is_dir():
        raise LivedenoiseError(f"no such directory: {folder}")
    public, secret = folder / f"{name.name}.key", folder / f"{name.name}.key_secret"
    for p in (public, secret):
        if p.exists():
            raise LivedenoiseError(f"{p} exists; not overwriting a key")
    pub, sec = zmq.auth.create_certificates(folder, name.name)
    Path(sec).chmod(0o600)
    return Path(pub), Path(sec)


def load_keypair(path: str | Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` z85 keys from a ``.key_secret`` file."""
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise LivedenoiseError(f"cannot read key file {path}: {exc}") from None
    if not secret:
        raise LivedenoiseError(f"{path} holds no secret key (give the NAME.key_secret file)")
    return public, secret


def load_public(path: str | Path) -> bytes:
    """A z85 public key from a ``.key`` (or ``.key_secret``) file."""
    import zmq.auth

    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise LivedenoiseError(f"cannot read key file {path}: {exc}") from None
    return public


def load_allowed(path: str | Path) -> set[bytes]:
    """Public keys allowed to connect: one ``.key`` file, or every ``*.key`` in a directory."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.key"))
        if not files:
            raise LivedenoiseError(f"no *.key public key files in {path}")
        return {load_public(f) for f in files}
    return {load_public(path)}


class _AllowList:
    def __init__(self, keys: set[bytes]):
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.keys
        if not allowed:
            log.warning("CURVE: refused a client with an unknown public key %s", key.decode(errors="replace"))
        return allowed


class CurveServer:
    """Makes sockets CURVE servers; with ``allow``, runs a ZAP authenticator on ``ctx`` that
    accepts only the listed public keys. Call :meth:`stop` before ``ctx.term()``."""

    def __init__(self, ctx: zmq.Context, secret_file: str | Path, allow: str | Path | None = None):
        require_curve()
        self.public, self.secret = load_keypair(secret_file)
        self.auth = None
        if allow is not None:
            from zmq.auth.thread import ThreadAuthenticator

            keys = load_allowed(allow)
            self.auth = ThreadAuthenticator(ctx, log=logging.getLogger("livedenoise.zap"))
            self.auth.start()
            self.auth.configure_curve_callback(domain="*", credentials_provider=_AllowList(keys))
            log.info("CURVE: %d client key(s) allowed", len(keys))

    def apply(self, sock: zmq.Socket) -> None:
        """Before ``bind``."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def stop(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


def curve_client(sock: zmq.Socket, server_key_file: str | Path, secret_file: str | Path | None = None) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is in ``server_key_file``
    (before ``connect``), with the key pair in ``secret_file`` or a throw-away one."""
    require_curve()
    server = load_public(server_key_file)
    public, secret = load_keypair(secret_file) if secret_file is not None else zmq.curve_keypair()
    sock.curve_serverkey = server
    sock.curve_publickey = public
    sock.curve_secretkey = secret
