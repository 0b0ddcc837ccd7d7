"""
Sizes and limits of the Noise layer, with the values of codex exec-server
0.169.0 (clatter 2.2.0, ML-KEM-768, AES-256-GCM).
"""

#: Largest Noise message, handshake or transport (clatter's limit).
MAX_NOISE_MESSAGE_LEN = 65535

#: AES-GCM tag appended to every encryption.
TAG_LEN = 16

#: Key and ciphertext sizes of the primitives.
X25519_KEY_LEN = 32
MLKEM768_PUBLIC_KEY_LEN = 1184
MLKEM768_CIPHERTEXT_LEN = 1088

#: Handshake message 1 is this many bytes plus the authorization payload.
MESSAGE1_OVERHEAD = 3568

#: Largest harness authorization an executor accepts in message 1 (UTF-8).
MAX_AUTHORIZATION_LEN = 4096

#: Plaintext bytes per transport record (60 KiB).
RECORD_PLAINTEXT_LEN = 61440

#: A JSON-RPC message travels as a u32 big-endian length, then the message.
LENGTH_PREFIX_LEN = 4

#: Largest JSON-RPC message, without its length prefix.
MAX_MESSAGE_LEN = 64 * 1024 * 1024

#: Records are numbered by their nonce and the relay's u32 C{seq} never
#: wraps, so a direction of a stream carries at most this many records.
MAX_RECORDS = 2**32
