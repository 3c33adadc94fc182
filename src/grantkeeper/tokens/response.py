"""The answer parser's old home: `grantkeeper.protocol.answers` holds it now (pure, under the protocol, which the
refresh transaction classifies answers with). Re-exported here so existing imports keep working."""

from grantkeeper.protocol.answers import (
    MAX_BODY_BYTES,
    MAX_EXPIRES_IN,
    HttpReply,
    Interpretation,
    Malformed,
    OAuthFailure,
    Success,
    Transient,
    access_token_ok,
    as_number,
    decode_object,
    interpret,
    parse_retry_after,
    refresh_token_ok,
)

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_EXPIRES_IN",
    "HttpReply",
    "Interpretation",
    "Malformed",
    "OAuthFailure",
    "Success",
    "Transient",
    "access_token_ok",
    "as_number",
    "decode_object",
    "interpret",
    "parse_retry_after",
    "refresh_token_ok",
]
