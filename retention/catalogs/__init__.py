"""Catalog implementations, one module per backend, behind the participant contract of
`retention.participants`: `sqlite` (the embedded default), `postgres` (a ``postgresql://``
URL in ``catalog.path``) and `jsondoc` (a JSON document). Nothing outside this package
branches on the kind of catalog."""
