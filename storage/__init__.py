"""bevkd.storage: the teacher store (docs/store.md).

Import from the modules (nothing heavy is imported here):

- ``schema``: SCHEMA_VERSION, FieldSpec, StoreContract (check_compatible), make_provenance
- ``fields``: field constructors with per-kind default codecs
- ``writer``: StoreWriter (create / open / write_shard / finalize)
- ``reader``: open_store -> TeacherStore (read_frame)
- ``augment``: transform_field, transform_boxes_rows
- ``verify``, ``copy``, ``info``, ``show``: what ``bevkd store ...`` runs
"""
