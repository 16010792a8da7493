"""Where an ingest runs, beside the local engine (rag.indexing.LocalEngine, the default).

``ray``: Ray Data on a Ray cluster, writing to a Chroma server (``ingest.engine: ray``). It is imported
only when asked for, so Ray stays an optional extra (``pip install -e ".[ray]"``).
"""
