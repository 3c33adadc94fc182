"""Key handling, all of it: where a store's keys come from, what they seal, how they rotate, what wraps a bundle.

* `grantkeeper.keys.sources`: the key ring's sources ($GRANTKEEPER_KEY, $GRANTKEEPER_KEY_COMMAND, the key file
  beside an SQLite store) and private files;
* `grantkeeper.keys.crypto`: `Crypto`, the ring's AES-256-GCM sealing and HMAC fingerprints (HKDF subkeys);
* `grantkeeper.keys.rekey`: unlocking a store at open, re-encrypting it with a new primary key, counting key use;
* `grantkeeper.keys.wrapping`: `BundleKey`, the passphrase or key file that seals an exported bundle.

Administration (rotate, retire, purge, generate) is `grantkeeper.admin`; nothing here prints or logs a key.
"""

from grantkeeper.keys.crypto import Crypto, key_id
from grantkeeper.keys.rekey import FORMAT_1, RotationResult, census, crypto_of, rotate
from grantkeeper.keys.sources import (
    KEY_COMMAND_ENV,
    KEY_ENV,
    KeySource,
    encode_key,
    generate_key,
    load_ring,
    parse_key,
    parse_ring,
    read_private_file,
    write_key_file,
    write_private_file,
)
from grantkeeper.keys.wrapping import BundleKey

__all__ = [
    "FORMAT_1",
    "KEY_COMMAND_ENV",
    "KEY_ENV",
    "BundleKey",
    "Crypto",
    "KeySource",
    "RotationResult",
    "census",
    "crypto_of",
    "encode_key",
    "generate_key",
    "key_id",
    "load_ring",
    "parse_key",
    "parse_ring",
    "read_private_file",
    "rotate",
    "write_key_file",
    "write_private_file",
]
