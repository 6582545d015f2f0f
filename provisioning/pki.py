"""The fleet PKI, built on `cryptography`: CA, gateway and broker certificates, CRL.

The CA key lives in a PKCS#12 file (ca/ca.p12: AES-256-CBC, PBKDF2-SHA256 with 600,000 rounds,
readable by `openssl pkcs12`) and is unlocked only when something must be signed. Gateway keys are
ECDSA P-256 with CN = gateway id; broker certificates carry the names gateways dial.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning.fleet import FleetError, write_file

CA_KDF_ROUNDS = 600_000  # OWASP 2023 figure for PBKDF2-SHA256; ~0.3 s per unlock here
CLOCK_SKEW = dt.timedelta(minutes=10)  # gateways boot with a rough clock before NTP
GATEWAY_URI = "urn:wardgate:gateway:{}"

#: `provision revoke --reason` short name -> RFC 5280 CRLReason (x509.ReasonFlags name). Only
#: the reasons that fit a gateway certificate; certificateHold is left out on purpose (a revoke
#: is final) and caCompromise belongs to the CA.
REVOKE_REASONS = {
    "key_compromise": "key_compromise",  # stolen, opened, key copied: the key is not secret
    "cessation": "cessation_of_operation",  # site closed, gateway taken out of service
    "superseded": "superseded",  # replaced by a new certificate
    "affiliation_changed": "affiliation_changed",  # moved to another district / operator
    "privilege_withdrawn": "privilege_withdrawn",  # no longer allowed on the broker
    "unspecified": "unspecified",  # none of the above (no reason code on the CRL)
}


def reason_name(reason: x509.ReasonFlags | str | None) -> str:
    """The short name of a CRL reason, as `provision revoke --reason` takes it."""
    if reason is None:
        return "unspecified"
    flag = reason.name if isinstance(reason, x509.ReasonFlags) else str(reason)
    for short, name in REVOKE_REASONS.items():
        if name == flag:
            return short
    return flag


def crl_reason(entry: x509.RevokedCertificate) -> str:
    """A CRL entry's reason, short name (no reason code = unspecified)."""
    try:
        return reason_name(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason)
    except x509.ExtensionNotFound:
        return "unspecified"


_CA_USAGE = dict(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_USAGE = {**_CA_USAGE, "key_cert_sign": False, "crl_sign": False}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(cn: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":")


@dataclasses.dataclass
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | None = None  # None while locked

    def _signer(self) -> ec.EllipticCurvePrivateKey:
        if self.key is None:
            raise RuntimeError("the CA is locked")
        return self.key

    def _leaf(self, subject: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
        start = now() - CLOCK_SKEW
        end = min(start + dt.timedelta(days=days), self.cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(**_LEAF_USAGE), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),
                critical=False,
            )
        )

    def issue_gateway(
        self, gateway_id: str, days: int, organization: str | None = None
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = new_key()
        cert = (
            self._leaf(_name(gateway_id, organization), key.public_key(), days)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(GATEWAY_URI.format(gateway_id))]
                ),
                critical=False,
            )
            .sign(self._signer(), hashes.SHA256())
        )
        return key, cert

    def issue_server(
        self, names: list[str], days: int, organization: str | None = None
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = new_key()
        cert = (
            self._leaf(_name(names[0], organization), key.public_key(), days)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san_entries(names)), critical=False)
            .sign(self._signer(), hashes.SHA256())
        )
        return key, cert

    def crl(
        self, revoked: list[tuple[int, dt.datetime, str]], number: int, days: int
    ) -> x509.CertificateRevocationList:
        """revoked: (serial, when, reason) with reason a x509.ReasonFlags value name."""
        issued = now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(issued - CLOCK_SKEW)
            .next_update(issued + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),
                critical=False,
            )
        )
        for serial, when, reason in revoked:
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
            if reason != "unspecified":  # RFC 5280 5.3.1: leave the code out rather than 0
                entry = entry.add_extension(
                    x509.CRLReason(x509.ReasonFlags[reason]), critical=False
                )
            builder = builder.add_revoked_certificate(entry.build())
        return builder.sign(self._signer(), hashes.SHA256())


def san_entries(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def create_ca(name: str, days: int, organization: str | None = None) -> CA:
    key = new_key()
    subject = _name(name, organization)
    start = now() - CLOCK_SKEW
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(**_CA_USAGE), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CA(cert, key)


def import_ca(cert_path: Path, key_path: Path, key_password: bytes | None) -> CA:
    """An existing CA (PEM cert + PEM key, the key possibly encrypted), checked before use."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        raise FleetError(f"{cert_path}: not a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), key_password)
    except TypeError:
        raise FleetError(f"{key_path}: the key is encrypted; give its passphrase") from None
    except ValueError as exc:
        raise FleetError(f"{key_path}: cannot load the key ({exc})") from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise FleetError(f"{cert_path}: not a CA certificate (basicConstraints CA:TRUE missing)")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FleetError(f"{key_path}: only EC CA keys are supported (got {type(key).__name__})")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise FleetError(f"{key_path} is not the key of {cert_path}")
    return CA(cert, key)


def save_ca(ca: CA, ca_dir: Path, passphrase: bytes) -> None:
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(CA_KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(passphrase)
    )
    blob = pkcs12.serialize_key_and_certificates(
        b"wardgate-ca", ca._signer(), ca.cert, None, encryption
    )
    ca_dir.mkdir(parents=True, exist_ok=True)
    ca_dir.chmod(0o700)
    write_file(ca_dir / "ca.p12", blob, 0o600)
    write_file(ca_dir / "ca.crt", cert_pem(ca.cert), 0o644)


def load_ca_cert(ca_dir: Path) -> CA:
    path = ca_dir / "ca.crt"
    try:
        return CA(x509.load_pem_x509_certificate(path.read_bytes()))
    except FileNotFoundError:
        raise FleetError(f"{path}: no CA; run `wardgate provision init` first") from None


def unlock(ca: CA, ca_dir: Path, passphrase: bytes) -> CA:
    path = ca_dir / "ca.p12"
    try:
        key, cert, _ = pkcs12.load_key_and_certificates(path.read_bytes(), passphrase)
    except FileNotFoundError:
        raise FleetError(f"{path}: the CA key is missing") from None
    except ValueError:
        raise FleetError(f"{path}: wrong CA passphrase (or a damaged file)") from None
    if cert is None or cert != ca.cert:
        raise FleetError(f"{path} does not hold the key of {ca_dir / 'ca.crt'}")
    ca.key = key
    return ca


def load_cert(data: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data)
