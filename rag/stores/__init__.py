"""Where chunks live once ingested: vectors in Chroma (``chroma.Store``), terms in a BM25 index
(``bm25.LexicalIndex``, on Tantivy), and the per-file record that plans an ingest
(``files.FileRecord``). Each is one module behind a protocol in ``rag.types`` (``VectorStore``,
``LexicalStore``, ``FileRecord``), which is all the indexer and the retriever know of them: a second
vector store would be one new module here."""
