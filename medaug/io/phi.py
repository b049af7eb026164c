"""Patient identifiers: what must never leave medaug, and the salted hashes that replace UIDs.

The list below is the patient, study and personnel part of the DICOM PS3.15 Annex E *Basic
Application Level Confidentiality Profile* (table E.1-1): the attributes a de-identifier must remove
or replace. medaug never copies any of them into predictions, datalists, logs, error messages or
MLflow records: the readers return only ``modality``, the UIDs, ``patient_id`` (which
:func:`pseudonym` replaces before anything is written), photometric interpretation,
sizes and transfer syntax, and skip reasons never quote header values. The UIDs themselves are in
the profile too (they are replaced by the profile's "U" action); sites that need them out of the
outputs as well use :func:`hash_uid` (``medaug predict --hash-uids``).

Pseudonyms are keyed (HMAC-SHA256): an unkeyed hash of a PatientID is reversed by hashing every
candidate record number. The key is ``$MEDAUG_PSEUDONYM_KEY`` when set, else the contents of the
key file ``$MEDAUG_PSEUDONYM_KEY_FILE`` (default ``$XDG_CONFIG_HOME/medaug/pseudonym.key``, i.e.
``~/.config/medaug/pseudonym.key``), which is created once with a random key, readable by its owner
only (mode 0600). One key gives the same pseudonyms in every run; several people or machines working
on one project share one key (the variable, or one key file) to get the same ones.

Example::

    from medaug.io.phi import hash_uid
    hash_uid("1.2.840.113619.2.55.3", salt="site secret")  # 'u-5c0e...' (stable for one salt)
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
import warnings
from pathlib import Path

__all__ = [
    "IDENTIFYING_ATTRIBUTES",
    "PSEUDONYM_KEY_ENV",
    "PSEUDONYM_KEY_FILE_ENV",
    "UID_ATTRIBUTES",
    "UID_SALT_ENV",
    "PseudonymKeyError",
    "hash_uid",
    "pseudonym",
    "pseudonym_key",
    "pseudonym_key_file",
    "pseudonym_key_id",
    "quiet_header_libraries",
    "uid_salt",
]
logger = logging.getLogger("medaug.data")

#: Keywords of PS3.15 E.1-1 attributes (patient, visit, study, personnel, institution, device
#: owner, free text) that identify a person or can be joined back to one.
IDENTIFYING_ATTRIBUTES: tuple[str, ...] = (
    # patient module
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientBirthName",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "PatientMotherBirthName",
    "PatientTelephoneNumbers",
    "PatientTelecomInformation",
    "PatientReligiousPreference",
    "PatientComments",
    "PatientInsurancePlanCodeSequence",
    "PatientPrimaryLanguageCodeSequence",
    "PatientState",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "Occupation",
    "MilitaryRank",
    "BranchOfService",
    "MedicalRecordLocator",
    "MedicalAlerts",
    "Allergies",
    "CountryOfResidence",
    "RegionOfResidence",
    "SmokingStatus",
    "PregnancyStatus",
    "LastMenstrualDate",
    "AdditionalPatientHistory",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    "PatientSexNeutered",
    # visit, study and request
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "ContentDate",
    "ContentTime",
    "AcquisitionDateTime",
    "InstanceCreationDate",
    "StudyDescription",
    "SeriesDescription",
    "AdmittingDiagnosesDescription",
    "AdmissionID",
    "RequestAttributesSequence",
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
    "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepDescription",
    "ImageComments",
    "ReasonForStudy",
    "RequestingService",
    "CurrentPatientLocation",
    "ServiceEpisodeID",
    # personnel and institution
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "OperatorsName",
    "RequestingPhysician",
    "ScheduledPerformingPhysicianName",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "PersonName",
    "ContentCreatorName",
    "VerifyingObserverName",
)

#: UIDs the profile replaces: kept in predictions by default (sites join predictions back to
#: their PACS with them), replaced by :func:`hash_uid` on request.
UID_ATTRIBUTES: tuple[str, ...] = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")

UID_SALT_ENV = "MEDAUG_UID_SALT"
PSEUDONYM_KEY_ENV = "MEDAUG_PSEUDONYM_KEY"
PSEUDONYM_KEY_FILE_ENV = "MEDAUG_PSEUDONYM_KEY_FILE"


class PseudonymKeyError(ValueError):
    """The pseudonym key file cannot be created or read, or holds no key."""


def pseudonym_key_file() -> Path:
    """``$MEDAUG_PSEUDONYM_KEY_FILE``, else ``$XDG_CONFIG_HOME/medaug/pseudonym.key`` (default
    ``~/.config/medaug/pseudonym.key``)."""
    explicit = os.environ.get(PSEUDONYM_KEY_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "medaug" / "pseudonym.key"


def _create_key_file(path: Path) -> None:
    """Write a random key to ``path`` (mode 0600, folder 0700 when created), unless another process
    got there first: the key is written to a private temporary file that is then hard-linked to
    ``path``, so a reader never sees a half-written key and two first runs agree on one."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(handle, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
            os.link(temporary, path)
            logger.info("created the pseudonym key %s (keep it: other keys give other pseudonyms)", path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as err:
        raise PseudonymKeyError(
            f"the pseudonym key file {path} cannot be created ({err.strerror or err}); set "
            f"{PSEUDONYM_KEY_ENV} or {PSEUDONYM_KEY_FILE_ENV}"
        ) from err


@functools.lru_cache(maxsize=8)
def _read_key_file(path: str, inode: int, mtime_ns: int, mode: int) -> bytes:
    """The key in ``path``, read once per state of the file (inode, time, mode)."""
    try:
        key = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise PseudonymKeyError(f"the pseudonym key file {path} cannot be read ({err})") from err
    if not key:
        raise PseudonymKeyError(
            f"the pseudonym key file {path} is empty; delete it to have a new key made, or set {PSEUDONYM_KEY_ENV}"
        )
    if mode & 0o077:
        logger.warning("the pseudonym key file %s can be read by others (mode %o): chmod 600 it", path, mode & 0o777)
    return key.encode()


def pseudonym_key() -> bytes:
    """The pseudonym key: ``$MEDAUG_PSEUDONYM_KEY``, else the key file's contents (the file is created
    on first use, see :func:`pseudonym_key_file`)."""
    secret = os.environ.get(PSEUDONYM_KEY_ENV)
    if secret:
        return secret.encode()
    path = pseudonym_key_file()
    if not path.exists():
        _create_key_file(path)
    try:
        info = path.stat()
    except OSError as err:
        raise PseudonymKeyError(f"the pseudonym key file {path} cannot be read ({err.strerror or err})") from err
    return _read_key_file(str(path), info.st_ino, info.st_mtime_ns, info.st_mode)


def pseudonym_key_id(key: bytes | None = None) -> str:
    """A name of the key that reveals nothing about it (an HMAC of a fixed text): what caches built
    with pseudonyms are keyed by, so that another key never reads pseudonyms made with the old one."""
    return hmac.new(key or pseudonym_key(), b"medaug pseudonym key id", hashlib.sha256).hexdigest()[:16]


def pseudonym(value: str, key: bytes | None = None) -> str:
    """A stable stand-in for a patient identifier: ``'p-' + HMAC-SHA256(key, value)`` (first 16 hex
    digits), the key being :func:`pseudonym_key` unless given. Splits need only to group images, and
    the real identifier must not reach datalists, logs or MLflow; without the key it cannot be found
    by hashing candidate identifiers."""
    return "p-" + hmac.new(key or pseudonym_key(), value.encode(), hashlib.sha256).hexdigest()[:16]


def uid_salt(salt: str | None = None) -> str | None:
    """The salt given, else ``$MEDAUG_UID_SALT``, else None."""
    return salt if salt else (os.environ.get(UID_SALT_ENV) or None)


def hash_uid(uid: str | None, salt: str) -> str:
    """``'u-' + HMAC-SHA256(salt, uid)`` (first 32 hex digits): the same UID and salt always give the
    same value, so a site holding the salt can join outputs back; without the salt it cannot be reversed
    by hashing candidate UIDs. Empty stays empty."""
    if not uid:
        return ""
    if not salt:
        raise ValueError("hashing UIDs needs a non-empty salt")
    return "u-" + hmac.new(salt.encode(), str(uid).encode(), hashlib.sha256).hexdigest()[:32]


def quiet_header_libraries() -> None:
    """Silence the libraries that may quote header values in their own messages.

    pydicom warns and logs about invalid element values by quoting them (``Invalid value for VR PN:
    'DOE^JOHN'``); medaug gives its own reasons instead, so those messages are dropped.
    """
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    warnings.filterwarnings("ignore", message=r".*(VR|value).*", category=UserWarning)
    # MONAI's reader notes a missing affine for every 2D radiograph; irrelevant to a 2D classifier
    warnings.filterwarnings("ignore", message=r"PydicomReader: ")
