"""SuperNode authentication keys: an EC P-384 key pair per SuperNode, in the OpenSSH
formats flwr 1.42 reads (``flower-supernode --auth-supernode-private-key``, and
``flwr supernode register PUBLIC_KEY`` on a SuperLink started with
``--enable-supernode-auth``).

A SuperLink with authentication on accepts only SuperNodes whose public key was
registered; what this does and does not protect is in ``docs/deploy.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NodeKey:
    """One SuperNode's key pair on disk.

    Attributes:
        private: the OpenSSH private key (readable by its owner only).
        public: the OpenSSH public key (``ecdsa-sha2-nistp384 ...``).
    """

    private: Path
    public: Path


def make_node_key(folder: Path, name: str) -> NodeKey:
    """Write a fresh EC P-384 key pair ``<name>`` and ``<name>.pub`` into ``folder``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    out = NodeKey(private=folder / name, public=folder / f"{name}.pub")
    out.private.touch(mode=0o600)
    out.private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    out.public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH)
                           + b"\n")
    return out
