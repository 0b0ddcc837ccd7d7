"""
The hybrid IK handshake, its cipher states and the public key JSON.

Interoperability with codex exec-server 0.169.0 was proven by running these
modules as a harness against the binary (docs/reference/relay-noise.md);
the constants checked here are the ones that run depended on.
"""

import json
import subprocess
import sys

import pybase64
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from execserver.noise import handshake, keys, limits
from execserver.noise.records import RecordDecoder, RecordEncoder
from execserver.noise.errors import DecryptFailed, HandshakeFailed, InvalidPublicKey, NoiseError
from execserver.noise.handshake import Initiator, Responder, prologue
from execserver.noise.keys import NoiseIdentity, NoisePublicKey
from execserver.noise.symmetric import CipherState, hkdf, sha256
from tests.support import PROJECT_ROOT

EXECUTOR = NoiseIdentity.generate()
HARNESS = NoiseIdentity.generate()
PROLOGUE = prologue("env-1", "reg-0001", "52d00af8-6261-4aa0-9df6-c2b742ce0410")


def handshake_pair(authorization=b"harness-auth-xyz", harness_prologue=PROLOGUE,
                   executor=EXECUTOR, pinned=None):
    """Run both messages; return (request, initiator ciphers, responder ciphers)."""
    initiator = Initiator(HARNESS, pinned or executor.public_key, harness_prologue)
    responder = Responder(executor, PROLOGUE)
    request = responder.read_message1(initiator.write_message1(authorization))
    message2, responder_ciphers = responder.write_message2()
    return request, initiator.read_message2(message2), responder_ciphers


class ConstantsTests(unittest.SynchronousTestCase):
    def test_protocol_name_and_its_hash(self):
        self.assertEqual(handshake.PROTOCOL_NAME, b"Noise_hybridIK_25519+MLKEM768_AESGCM_SHA256")
        self.assertEqual(
            sha256(handshake.PROTOCOL_NAME).hex(),
            "646856ce6fda9f9f037c69557c3c9f5ada7d1bc70b0c4beea72befcaf862edfa",
        )

    def test_token_order_is_clatter_2_2(self):
        self.assertEqual(handshake.MESSAGE1_TOKENS, ("skem", "e", "es", "s", "ss"))
        self.assertEqual(handshake.MESSAGE2_TOKENS, ("ekem", "skem", "e", "ee", "se"))

    def test_prologue_is_u64_length_prefixed(self):
        self.assertEqual(
            prologue("env-1", "registration-1", "stream-1").hex(),
            "0000000000000020"
            "636f6465782d657865632d7365727665722d72656c61792d6e6f6973652f7631"
            "0000000000000005" "656e762d31"
            "000000000000000e" "726567697374726174696f6e2d31"
            "0000000000000008" "73747265616d2d31",
        )

    def test_prologue_counts_utf8_bytes(self):
        self.assertEqual(prologue("é", "", "s")[40:50], bytes.fromhex("0000000000000002c3a9"))


class SymmetricTests(unittest.SynchronousTestCase):
    def test_hkdf_is_rfc5869_with_the_chaining_key_as_salt(self):
        ck, ikm = bytes(range(32)), b"input key material"
        expected = HKDF(hashes.SHA256(), 96, salt=ck, info=b"").derive(ikm)
        self.assertEqual(b"".join(hkdf(ck, ikm, 3)), expected)
        self.assertEqual(b"".join(hkdf(ck, ikm, 2)), expected[:64])

    def test_nonce_is_four_zero_bytes_then_big_endian_counter(self):
        key = bytes(range(32))
        cipher = CipherState(key)
        cipher.encrypt(b"first")
        second = cipher.encrypt(b"second")
        nonce = bytes(4) + (1).to_bytes(8, "big")
        self.assertEqual(AESGCM(key).decrypt(nonce, second, b""), b"second")
        self.assertEqual(cipher.nonce, 2)

    def test_transport_messages_fit_65535_bytes(self):
        cipher = CipherState(bytes(32))
        self.assertEqual(len(cipher.encrypt(bytes(65535 - 16))), 65535)
        self.assertRaises(NoiseError, cipher.encrypt, bytes(65535 - 15))
        self.assertEqual(cipher.nonce, 1)

    def test_impossible_ciphertext_sizes_are_refused(self):
        cipher = CipherState(bytes(32))
        self.assertRaises(DecryptFailed, cipher.decrypt, bytes(15))
        self.assertRaises(DecryptFailed, cipher.decrypt, bytes(65536))
        self.assertEqual(cipher.nonce, 0)


class HandshakeTests(unittest.SynchronousTestCase):
    def test_message_sizes(self):
        for authorization in (b"", b"a" * 16, b"a" * 4096):
            initiator = Initiator(HARNESS, EXECUTOR.public_key, PROLOGUE)
            message1 = initiator.write_message1(authorization)
            self.assertEqual(len(message1), 3568 + len(authorization))
            responder = Responder(EXECUTOR, PROLOGUE)
            responder.read_message1(message1)
            message2, _ = responder.write_message2()
            self.assertEqual(len(message2), 3424)

    def test_responder_learns_harness_key_and_authorization(self):
        request, _, _ = handshake_pair(b"harness-auth-xyz")
        self.assertEqual(request.harness_key, HARNESS.public_key)
        self.assertEqual(request.authorization, "harness-auth-xyz")

    def test_empty_authorization_is_passed_on(self):
        request, _, _ = handshake_pair(b"")
        self.assertEqual(request.authorization, "")

    def test_transport_both_directions(self):
        _, harness, executor = handshake_pair()
        for i in range(3):
            self.assertEqual(executor.receive.decrypt(harness.send.encrypt(b"req %d" % i)), b"req %d" % i)
            self.assertEqual(harness.receive.decrypt(executor.send.encrypt(b"res %d" % i)), b"res %d" % i)

    def test_directions_use_different_keys(self):
        """k1 carries initiator to responder, k2 the other way."""
        _, harness, executor = handshake_pair()
        self.assertRaises(DecryptFailed, harness.receive.decrypt, harness.send.encrypt(b"x"))
        self.assertRaises(DecryptFailed, executor.receive.decrypt, executor.send.encrypt(b"x"))

    def test_wrong_responder_key(self):
        other = NoiseIdentity.generate()
        initiator = Initiator(HARNESS, other.public_key, PROLOGUE)
        responder = Responder(EXECUTOR, PROLOGUE)
        self.assertRaises(HandshakeFailed, responder.read_message1, initiator.write_message1(b"a"))

    def test_mismatched_prologue(self):
        for harness_prologue in (
            prologue("env-1", "reg-0001", "another-stream"),
            prologue("env-1", "reg-0002", "52d00af8-6261-4aa0-9df6-c2b742ce0410"),
            prologue("env-2", "reg-0001", "52d00af8-6261-4aa0-9df6-c2b742ce0410"),
        ):
            self.assertRaises(HandshakeFailed, handshake_pair, harness_prologue=harness_prologue)

    def test_tampered_message1(self):
        message1 = Initiator(HARNESS, EXECUTOR.public_key, PROLOGUE).write_message1(b"auth")
        # skem ciphertext (clear), e (DH, KEM), s (DH, KEM), payload
        for offset in (0, 1087, 1088, 1120, 2304, 2352, 3551, 3552, len(message1) - 1):
            tampered = bytearray(message1)
            tampered[offset] ^= 0x01
            responder = Responder(EXECUTOR, PROLOGUE)
            self.assertRaises(HandshakeFailed, responder.read_message1, bytes(tampered))

    def test_tampered_message2(self):
        for offset in (0, 1088, 2192, 2224, 3408, 3423):
            initiator = Initiator(HARNESS, EXECUTOR.public_key, PROLOGUE)
            responder = Responder(EXECUTOR, PROLOGUE)
            responder.read_message1(initiator.write_message1(b"auth"))
            message2 = bytearray(responder.write_message2()[0])
            message2[offset] ^= 0x80
            self.assertRaises(HandshakeFailed, initiator.read_message2, bytes(message2))

    def test_low_order_executor_key_is_refused(self):
        """An all-zero X25519 key makes every DH output zero."""
        pinned = NoisePublicKey(bytes(32), EXECUTOR.public_key.mlkem768)
        initiator = Initiator(HARNESS, pinned, PROLOGUE)
        self.assertRaises(HandshakeFailed, initiator.write_message1, b"a")

    def test_message2_of_another_handshake(self):
        first = Initiator(HARNESS, EXECUTOR.public_key, PROLOGUE)
        first.write_message1(b"a")
        second = Initiator(HARNESS, EXECUTOR.public_key, PROLOGUE)
        responder = Responder(EXECUTOR, PROLOGUE)
        responder.read_message1(second.write_message1(b"a"))
        self.assertRaises(HandshakeFailed, first.read_message2, responder.write_message2()[0])

    def test_message2_must_carry_no_payload(self):
        initiator = Initiator(HARNESS, EXECUTOR.public_key, PROLOGUE)
        responder = Responder(EXECUTOR, PROLOGUE)
        responder.read_message1(initiator.write_message1(b"a"))
        message2 = responder._state.write(handshake.MESSAGE2_TOKENS, b"surprise")
        self.assertRaises(HandshakeFailed, initiator.read_message2, message2)

    def test_truncated_and_oversized_messages(self):
        message1 = Initiator(HARNESS, EXECUTOR.public_key, PROLOGUE).write_message1(b"")
        self.assertRaises(HandshakeFailed, Responder(EXECUTOR, PROLOGUE).read_message1, message1[:-1])
        self.assertRaises(HandshakeFailed, Responder(EXECUTOR, PROLOGUE).read_message1, bytes(65536))

    def test_oversized_payload(self):
        """Message 1 may be 65 535 bytes: the payload at most 65 535 - 3568."""
        largest = 65535 - limits.MESSAGE1_OVERHEAD
        initiator = Initiator(HARNESS, EXECUTOR.public_key, PROLOGUE)
        self.assertEqual(len(initiator.write_message1(b"a" * largest)), 65535)
        for size in (largest + 1, 65535):
            initiator = Initiator(HARNESS, EXECUTOR.public_key, PROLOGUE)
            with self.assertRaises(HandshakeFailed) as caught:
                initiator.write_message1(b"a" * size)
            self.assertEqual(str(caught.exception), "handshake payload is too large")

    def test_executor_refuses_authorizations_over_4096_bytes(self):
        handshake_pair(b"a" * 4096)
        self.assertRaises(HandshakeFailed, handshake_pair, b"a" * 4097)

    def test_executor_refuses_non_utf8_authorizations(self):
        self.assertRaises(HandshakeFailed, handshake_pair, b"\xff\xfe")

    def test_steps_run_once_and_in_order(self):
        initiator = Initiator(HARNESS, EXECUTOR.public_key, PROLOGUE)
        self.assertRaises(HandshakeFailed, initiator.read_message2, bytes(3424))
        message1 = initiator.write_message1(b"a")
        self.assertRaises(HandshakeFailed, initiator.write_message1, b"a")
        responder = Responder(EXECUTOR, PROLOGUE)
        self.assertRaises(HandshakeFailed, responder.write_message2)
        responder.read_message1(message1)
        self.assertRaises(HandshakeFailed, responder.read_message1, message1)
        message2, _ = responder.write_message2()
        self.assertRaises(HandshakeFailed, responder.write_message2)
        initiator.read_message2(message2)
        self.assertRaises(HandshakeFailed, initiator.read_message2, message2)

    def test_a_failed_handshake_cannot_continue(self):
        responder = Responder(EXECUTOR, PROLOGUE)
        self.assertRaises(HandshakeFailed, responder.read_message1, bytes(3568))
        self.assertRaises(HandshakeFailed, responder.write_message2)


class TransportTests(unittest.SynchronousTestCase):
    def setUp(self):
        _, self.harness, self.executor = handshake_pair()

    def test_tampered_record(self):
        record = bytearray(self.harness.send.encrypt(b"process/start"))
        record[3] ^= 0x04
        self.assertRaises(DecryptFailed, self.executor.receive.decrypt, bytes(record))

    def test_replayed_record(self):
        record = self.harness.send.encrypt(b"once")
        self.assertEqual(self.executor.receive.decrypt(record), b"once")
        self.assertRaises(DecryptFailed, self.executor.receive.decrypt, record)

    def test_records_out_of_order(self):
        first = self.harness.send.encrypt(b"first")
        second = self.harness.send.encrypt(b"second")
        self.assertRaises(DecryptFailed, self.executor.receive.decrypt, second)
        self.assertEqual(self.executor.receive.decrypt(first), b"first")
        self.assertEqual(self.executor.receive.decrypt(second), b"second")


class PublicKeyJsonTests(unittest.SynchronousTestCase):
    def good(self):
        return EXECUTOR.public_key.to_json_object()

    def test_three_keys_in_codex_order(self):
        value = self.good()
        self.assertEqual(list(value), ["suite", "x25519_public_key", "mlkem768_public_key"])
        self.assertEqual(value["suite"], "Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256")
        self.assertEqual(len(value["x25519_public_key"]), 44)
        self.assertEqual(len(value["mlkem768_public_key"]), 1580)
        self.assertTrue(value["mlkem768_public_key"].endswith("="))
        self.assertTrue(json.dumps(value, separators=(",", ":")).startswith(
            '{"suite":"Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256","x25519_public_key":"'))

    def test_round_trip(self):
        self.assertEqual(NoisePublicKey.from_json_object(self.good()), EXECUTOR.public_key)

    def assertRefused(self, value):
        self.assertRaises(InvalidPublicKey, NoisePublicKey.from_json_object, value)

    def test_only_exactly_the_three_keys(self):
        self.assertRefused(dict(self.good(), extra=None))
        for key in ("suite", "x25519_public_key", "mlkem768_public_key"):
            value = self.good()
            del value[key]
            self.assertRefused(value)
        self.assertRefused([self.good()])
        self.assertRefused(None)

    def test_suite_must_match_exactly(self):
        for suite in ("Noise_hybridIK_25519+MLKEM768_AESGCM_SHA256",
                      "noise_hybridik_x25519+mlkem768_aesgcm_sha256",
                      "Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256 ", None):
            self.assertRefused(dict(self.good(), suite=suite))

    def test_base64_is_standard_with_canonical_padding(self):
        x25519 = b"\xfb\xef\xbe\xff\xff\xff" * 5 + b"\x00\x01"
        x = pybase64.b64encode(x25519).decode()
        self.assertEqual(x, "++++////" * 5 + "AAE=")
        self.assertEqual(NoisePublicKey.from_json_object(dict(self.good(), x25519_public_key=x)).x25519,
                         x25519)
        for bad in (x.rstrip("="), x + "=", x[:20] + "\n" + x[20:], " " + x, x + " ",
                    x.replace("+", "-").replace("/", "_"), x[:-2] + "F=", 42, None):
            self.assertRefused(dict(self.good(), x25519_public_key=bad))

    def test_exact_lengths(self):
        self.assertRefused(dict(self.good(), x25519_public_key=pybase64.b64encode(bytes(31)).decode()))
        self.assertRefused(dict(self.good(), x25519_public_key=pybase64.b64encode(bytes(33)).decode()))
        mlkem = pybase64.b64decode(self.good()["mlkem768_public_key"])
        self.assertRefused(dict(self.good(), mlkem768_public_key=pybase64.b64encode(mlkem[:-1]).decode()))
        self.assertRefused(dict(self.good(), mlkem768_public_key=pybase64.b64encode(mlkem + b"\0").decode()))

    def test_mlkem_key_must_be_well_formed(self):
        """FIPS 203's check: every coefficient below q (0xfff is not)."""
        bad = pybase64.b64encode(b"\xff" * 1184).decode()
        self.assertRefused(dict(self.good(), mlkem768_public_key=bad))

    def test_reprs_hold_no_key_material(self):
        public = EXECUTOR.public_key
        request, ciphers, _ = handshake_pair()
        texts = [repr(EXECUTOR), repr(public), repr(request), repr(ciphers)]
        for text in texts:
            self.assertNotIn(public.x25519.hex()[:16], text)
            self.assertNotIn(self.good()["x25519_public_key"][:16], text)
            self.assertNotIn("harness-auth-xyz", text)
        self.assertIn("<redacted>", repr(public))


class LoggingTests(unittest.SynchronousTestCase):
    """Nothing the handshake and record layers log holds a secret or traffic."""

    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_no_keys_authorizations_plaintext_or_ciphertext(self):
        executor, harness = NoiseIdentity.generate(), NoiseIdentity.generate()
        authorization = b"authorization-4f1c9e2b7d"
        plaintext = b'{"id":1,"method":"initialize","params":{"clientName":"secret-9a8b7c"}}'
        secrets = [authorization, plaintext]
        for identity in (executor, harness):
            secrets += [identity.public_key.x25519, identity.public_key.mlkem768,
                        identity.x25519.private_bytes_raw(), identity.mlkem768.private_bytes_raw()]

        initiator = Initiator(harness, executor.public_key, PROLOGUE)
        message1 = initiator.write_message1(authorization)
        responder = Responder(executor, PROLOGUE)
        responder.read_message1(message1)
        message2, executor_ciphers = responder.write_message2()
        harness_ciphers = initiator.read_message2(message2)
        encoder, decoder = RecordEncoder(harness_ciphers.send), RecordDecoder(executor_ciphers.receive)
        encoder.write(plaintext)
        (_, record), = encoder.drain()
        decoder.receive(record)
        self.assertRaises(Exception, decoder.receive, record)
        secrets += [message1, message2, record]
        # failures: a stranger's message 1, a tampered message 2, a payload too large
        self.assertRaises(HandshakeFailed, Responder(NoiseIdentity.generate(), PROLOGUE).read_message1,
                          message1)
        other = Initiator(harness, executor.public_key, PROLOGUE)
        other.write_message1(authorization)
        self.assertRaises(HandshakeFailed, other.read_message2, message2)
        self.assertRaises(HandshakeFailed, Initiator(harness, executor.public_key, PROLOGUE)
                          .write_message1, authorization * 4000)

        outcomes = {(e.get("noise_side"), e.get("noise_outcome")) for e in self.events}
        self.assertTrue({("harness", "ok"), ("executor", "ok"), ("harness", "error"),
                         ("executor", "error")} <= outcomes, outcomes)
        logged = "\n".join(formatEvent(e) + repr(e) for e in self.events)
        for secret in secrets:
            piece = secret[:24]
            for form in (piece.hex(), pybase64.b64encode(secret).decode()[:24],
                         repr(piece)[2:-1], piece.decode("latin-1")):
                self.assertNotIn(form, logged)


class AvailabilityTests(unittest.SynchronousTestCase):
    def test_mlkem_is_available_here(self):
        keys.require_mlkem()

    def test_missing_mlkem_is_a_clear_error(self):
        """As with a cryptography older than 47, which has no mlkem module."""
        script = (
            "import sys\n"
            "sys.modules['cryptography.hazmat.primitives.asymmetric.mlkem'] = None\n"
            "from execserver.noise import keys\n"
            "keys.require_mlkem()\n"
        )
        result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT,
                                capture_output=True, text=True)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("execserver.noise.errors.NoiseUnavailable: remote mode needs ML-KEM-768 "
                      "from the 'cryptography' package (version 48 or later", result.stderr)
