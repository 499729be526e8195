"""Source adapters: one per public collection, all behind ``base.Source`` (see ``covid_cxr.data.curate``
for the finding -> class mapping table)."""
from __future__ import annotations

from covid_cxr.data.sources.base import Candidate, Source, SourceError
from covid_cxr.data.sources.cohen import CohenSource
from covid_cxr.data.sources.folder import FolderSource, parse_class_map
from covid_cxr.data.sources.kermany import KermanySource
from covid_cxr.data.sources.radiography import RadiographySource
from covid_cxr.data.sources.rsna import RsnaSource

# Registry order is also the priority order of curation: when two sources hold the same picture, the
# copy from the earlier source is kept (sources with patient ids and richer metadata first).
SOURCES: dict[str, type[Source]] = {
    "cohen": CohenSource,
    "rsna": RsnaSource,
    "kermany": KermanySource,
    "radiography": RadiographySource,
    "folder": FolderSource,
}

__all__ = ["SOURCES", "Candidate", "Source", "SourceError", "CohenSource", "RsnaSource", "KermanySource",
           "RadiographySource", "FolderSource", "parse_class_map"]
