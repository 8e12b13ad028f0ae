"""Carry the queue across an air gap: export bundles, import them elsewhere, bring receipts back.

- :mod:`.format`: the container (gzip JSON lines, header, SHA-256 trailer) and its checks.
- :mod:`.export`: ``export_bundle`` on the origin; marks nothing as synced.
- :mod:`.importer`: ``import_bundle`` on the connected machine; idempotent per origin row.
- :mod:`.receipt`: ``write_receipt`` there, ``import_receipt`` back on the origin.

Operation state changes go through :mod:`galtea_local.outbox.imports`. See docs/airgap.md.
"""

from galtea_local.bundle.export import ExportResult, export_bundle
from galtea_local.bundle.format import FORMAT, VERSION, BundleReader, BundleWriter
from galtea_local.bundle.importer import ImportResult, import_bundle
from galtea_local.bundle.receipt import ReceiptResult, import_receipt, write_receipt

__all__ = [
    "FORMAT",
    "VERSION",
    "BundleReader",
    "BundleWriter",
    "ExportResult",
    "ImportResult",
    "ReceiptResult",
    "export_bundle",
    "import_bundle",
    "import_receipt",
    "write_receipt",
]
