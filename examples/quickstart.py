"""The Python API in ten lines: ingest the sample documents, search them, ask a question."""
from pathlib import Path

from rag import Pipeline

here = Path(__file__).parent
pipeline = Pipeline.from_yaml(here.parent / "configs" / "default.yaml", store={"path": str(here / ".rag")})
print(pipeline.ingest([here / "sample_docs"]).summary())
for hit in pipeline.search("How long is the inverter warranty?", k=2):
    print(f"{hit.score:.3f}  {hit.chunk.metadata['source']}")
answer = pipeline.ask("How long is the inverter warranty?")
print(answer.text, [answer.hits[n - 1].chunk.metadata["source"] for n in answer.citations])
