"""Patient identifiers: what must never leave medaug, and the salted hashes that replace UIDs.

The list below is the patient, study and personnel part of the DICOM PS3.15 Annex E *Basic
Application Level Confidentiality Profile* (table E.1-1): the attributes a de-identifier must remove
or replace. medaug never copies any of them into predictions, datalists, logs, error messages or
MLflow records: the readers return only ``modality``, the UIDs, ``patient_id`` (which
:func:`pseudonym` replaces before anything is written), photometric interpretation,
sizes and transfer syntax, and skip reasons never quote header values. The UIDs themselves are in
the profile too (they are replaced by the profile's "U" action); sites that need them out of the
outputs as well use :func:`hash_uid` (``medaug predict --hash-uids``).

Example::

    from medaug.io.phi import hash_uid
    hash_uid("1.2.840.113619.2.55.3", salt="site secret")  # 'u-5c0e...' (stable for one salt)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import warnings

__all__ = ["IDENTIFYING_ATTRIBUTES", "UID_ATTRIBUTES", "UID_SALT_ENV", "hash_uid", "pseudonym", "quiet_header_libraries",
           "uid_salt"]  # fmt: skip

#: Keywords of PS3.15 E.1-1 attributes (patient, visit, study, personnel, institution, device
#: owner, free text) that identify a person or can be joined back to one.
IDENTIFYING_ATTRIBUTES: tuple[str, ...] = (
    # patient module
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientBirthTime", "PatientBirthName",
    "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "PatientAddress", "PatientMotherBirthName",
    "PatientTelephoneNumbers", "PatientTelecomInformation", "PatientReligiousPreference", "PatientComments",
    "PatientInsurancePlanCodeSequence", "PatientPrimaryLanguageCodeSequence", "PatientState",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "EthnicGroup", "Occupation",
    "MilitaryRank", "BranchOfService", "MedicalRecordLocator", "MedicalAlerts", "Allergies",
    "CountryOfResidence", "RegionOfResidence", "SmokingStatus", "PregnancyStatus", "LastMenstrualDate",
    "AdditionalPatientHistory", "ResponsiblePerson", "ResponsibleOrganization", "PatientSexNeutered",
    # visit, study and request
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "AcquisitionDate",
    "AcquisitionTime", "ContentDate", "ContentTime", "AcquisitionDateTime", "InstanceCreationDate",
    "StudyDescription", "SeriesDescription", "AdmittingDiagnosesDescription", "AdmissionID",
    "RequestAttributesSequence", "RequestedProcedureID", "ScheduledProcedureStepID", "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepDescription", "ImageComments",
    "ReasonForStudy", "RequestingService", "CurrentPatientLocation", "ServiceEpisodeID",
    # personnel and institution
    "ReferringPhysicianName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "OperatorsName",
    "RequestingPhysician", "ScheduledPerformingPhysicianName", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber", "PersonName",
    "ContentCreatorName", "VerifyingObserverName",
)  # fmt: skip

#: UIDs the profile replaces: kept in predictions by default (sites join predictions back to
#: their PACS with them), replaced by :func:`hash_uid` on request.
UID_ATTRIBUTES: tuple[str, ...] = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")

UID_SALT_ENV = "MEDAUG_UID_SALT"


def pseudonym(value: str) -> str:
    """A stable stand-in for a patient identifier: splits need only to group images, and the real
    identifier must not reach datalists, logs or MLflow."""
    return "p-" + hashlib.sha256(value.encode()).hexdigest()[:16]


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
