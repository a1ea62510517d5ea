"""What a run writes: ``record.json`` and images that carry their record in a PNG text chunk.

    build       the one record and image naming rule (``workbench run``, sweep cells, ``workbench reproduce``)
    provenance  what a result depends on besides its config (models, file hashes, versions, git, memory)
    png         the PNG text chunk, and reading records back (refusing paths outside a record's folder)
    png_encode  the PNG writer: row bands filtered and deflated on several threads (pigz's technique)
    files       valid JSON, atomic writes, the output folder check, dotted keys

Writers call these through the package (``from workbench import record as rec``; ``rec.save_png``),
so a test that replaces ``rec.save_png`` (a full disk) reaches every writer.
"""

from workbench.record.build import RECORD_ONLY, finish, image_entry, image_file, png_chunk, record_head, slug
from workbench.record.files import atomic_write_bytes, atomic_write_json, check_output_dir, dumps, json_safe
from workbench.values import flatten
from workbench.record.png import (
    PNG_KEY,
    check_png,
    inside,
    png_bytes,
    read_png_record,
    read_record_json,
    record_images,
    record_source,
    save_png,
)
from workbench.record.provenance import (
    HASH_CACHE,
    LIBRARIES,
    device_info,
    file_sha256,
    git_state,
    library_versions,
    model_file_hashes,
    path_sha256,
    peak_memory,
    provenance,
    reference_image_hashes,
)

__all__ = [
    "RECORD_ONLY", "finish", "image_entry", "image_file", "png_chunk", "record_head", "slug",
    "atomic_write_bytes", "atomic_write_json", "check_output_dir", "dumps", "flatten", "json_safe",
    "PNG_KEY", "check_png", "inside", "png_bytes", "read_png_record", "read_record_json", "record_images", "record_source", "save_png",
    "HASH_CACHE", "LIBRARIES", "device_info", "file_sha256", "git_state", "library_versions",
    "model_file_hashes", "path_sha256", "peak_memory", "provenance", "reference_image_hashes",
]
