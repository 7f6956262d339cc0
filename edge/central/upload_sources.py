"""The registrar's one upload source over both transports: tus uploads and files sent over MQTT.

A registration names its upload (:func:`edge.central.registration.upload_source_key` turns the name into
a key, with the calling station): a tus upload id is looked up in the tus store; ``mqtt:<station>/<file
id>`` in the MQTT ingest store under the id :func:`edge.mqtt.filetransfer.transfer_upload_id` gives for
that station and file id. Whichever transport delivered the bytes, the same Registrar verifies them,
moves them into the one object store and appends the one Merkle log.

A central without an MQTT receiver has no MQTT store: ``mqtt:`` keys are then unknown uploads.
"""

from __future__ import annotations

from pathlib import Path

from edge.central.mqtt_ingest_store import MqttIngestStore, TransferNotCompleteError
from edge.central.objects import ReceivedContent
from edge.central.registration import MQTT_UPLOAD_PREFIX, StagedContent, UploadFacts, UploadSource
from edge.mqtt.filetransfer import FileTransferError, transfer_upload_id

__all__ = ["CombinedUploadSource"]


class CombinedUploadSource:
    """:class:`~edge.central.registration.UploadSource` over the tus store and the MQTT ingest store."""

    def __init__(self, tus: UploadSource, mqtt: MqttIngestStore | None) -> None:
        self.tus = tus
        self.mqtt = mqtt

    def __repr__(self) -> str:
        return f"CombinedUploadSource(tus={self.tus!r}, mqtt={self.mqtt!r})"

    def _transfer_id(self, key: str) -> str | None:
        """The MQTT store's id for an ``mqtt:<station>/<file id>`` key; None for a tus key."""
        if not key.startswith(MQTT_UPLOAD_PREFIX):
            return None
        station, _, file_id = key[len(MQTT_UPLOAD_PREFIX):].partition("/")
        try:
            return transfer_upload_id(station, file_id)
        except FileTransferError as exc:
            raise ValueError(f"upload {key[:160]!r}: {exc}") from None

    def get(self, upload_id: str) -> UploadFacts | None:
        transfer = self._transfer_id(upload_id)
        if transfer is None:
            return self.tus.get(upload_id)
        return None if self.mqtt is None else self.mqtt.get(transfer)

    def staged(self, upload_id: str) -> StagedContent | None:
        """The tus upload's content in the bucket (the shared store); MQTT transfers are local files."""
        return None if self._transfer_id(upload_id) is not None else self.tus.staged(upload_id)

    def complete_path(self, upload_id: str) -> Path:
        transfer = self._transfer_id(upload_id)
        if transfer is None:
            return self.tus.complete_path(upload_id)
        if self.mqtt is None:
            raise TransferNotCompleteError(f"no MQTT receiver here: no transfer {upload_id[:160]!r}")
        return self.mqtt.complete_path(transfer)

    def received(self, upload_id: str) -> ReceivedContent | None:
        """The hash the upload's store took as the bytes were written, if it vouches for one (the tus store
        does; the MQTT store does not)."""
        transfer = self._transfer_id(upload_id)
        if transfer is None:
            return self.tus.received(upload_id)
        return None if self.mqtt is None else self.mqtt.received(transfer)

    def remove(self, upload_id: str) -> bool:
        transfer = self._transfer_id(upload_id)
        if transfer is None:
            return self.tus.remove(upload_id)
        return False if self.mqtt is None else self.mqtt.remove(transfer)

    def remove_unleased(self, upload_id: str) -> bool:
        transfer = self._transfer_id(upload_id)
        if transfer is None:
            return self.tus.remove_unleased(upload_id)
        return False if self.mqtt is None else self.mqtt.remove_unleased(transfer)

    def release_lease(self, upload_id: str) -> None:
        transfer = self._transfer_id(upload_id)
        if transfer is None:
            self.tus.release_lease(upload_id)
        elif self.mqtt is not None:
            self.mqtt.release_lease(transfer)
