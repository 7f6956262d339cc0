"""A real RFC 3161 time-stamping authority for the tests, over real HTTP on a free local port.

Its own root CA and a TSA certificate with the critical extended key usage id-kp-timeStamping; it parses
each DER ``TimeStampReq`` (asn1crypto), answers a ``TimeStampResp`` whose token is a CMS SignedData over
a ``TSTInfo`` with the request's imprint and nonce, signed attributes (content type, message digest,
the signing certificate v2) signed with ECDSA P-256, and the certificates when asked for. It can be
stopped and started again on the same port, and counts what it answered.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
from dataclasses import dataclass, field

from aiohttp import web
from asn1crypto import algos, cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

POLICY = "1.3.6.1.4.1.55555.1.1"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LocalTsa:
    """The authority: its keys and certificates, and an HTTP endpoint at :attr:`url`."""

    port: int = field(default_factory=_free_port)
    answered: int = 0

    def __post_init__(self) -> None:
        now = dt.datetime.now(dt.UTC)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = (
            x509.CertificateBuilder().subject_name(_name("Test TSA Root")).issuer_name(_name("Test TSA Root"))
            .public_key(self.root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(self.root_key, hashes.SHA256())
        )
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = (
            x509.CertificateBuilder().subject_name(_name("Test TSA")).issuer_name(self.root.subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.root_key, hashes.SHA256())
        )
        self._runner: web.AppRunner | None = None
        self._serial = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tsa"

    def root_pem(self) -> bytes:
        return self.root.public_bytes(Encoding.PEM)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/tsa", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.content_type != "application/timestamp-query":
            return web.Response(status=415)
        self.answered += 1
        return web.Response(body=self.respond(body), content_type="application/timestamp-reply")

    def respond(self, query: bytes) -> bytes:
        """The DER TimeStampResp for a DER TimeStampReq."""
        req = tsp.TimeStampReq.load(query)
        self._serial += 1
        info = {
            "version": "v1",
            "policy": POLICY,
            "message_imprint": req["message_imprint"],
            "serial_number": self._serial,
            "gen_time": dt.datetime.now(dt.UTC),
            "accuracy": {"seconds": 1},
        }
        if req["nonce"].native is not None:
            info["nonce"] = req["nonce"].native
        tst_info = tsp.TSTInfo(info)
        content = tst_info.dump()
        cert_der = self.certificate.public_bytes(Encoding.DER)
        attrs = cms.CMSAttributes([
            cms.CMSAttribute({"type": "content_type", "values": ["tst_info"]}),
            cms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha256(content).digest()]}),
            cms.CMSAttribute({"type": "signing_certificate_v2", "values": [{
                "certs": [{"cert_hash": hashlib.sha256(cert_der).digest()}],
            }]}),
        ])
        signature = self.key.sign(attrs.dump(), ec.ECDSA(hashes.SHA256()))
        asn1_cert = asn1_x509.Certificate.load(cert_der)
        signer = cms.SignerInfo({
            "version": "v1",
            "sid": cms.SignerIdentifier({"issuer_and_serial_number": cms.IssuerAndSerialNumber({
                "issuer": asn1_cert.issuer, "serial_number": asn1_cert.serial_number,
            })}),
            "digest_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
            "signed_attrs": attrs,
            "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"}),
            "signature": signature,
        })
        signed = {
            "version": "v3",
            "digest_algorithms": [algos.DigestAlgorithm({"algorithm": "sha256"})],
            "encap_content_info": {"content_type": "tst_info",
                                   "content": core.ParsableOctetString(content)},
            "signer_infos": [signer],
        }
        if req["cert_req"].native:
            signed["certificates"] = [asn1_cert]
        response = tsp.TimeStampResp({
            "status": {"status": "granted"},
            "time_stamp_token": cms.ContentInfo({"content_type": "signed_data",
                                                 "content": cms.SignedData(signed)}),
        })
        return bytes(response.dump())
