"""What a brand would build instead of Switchboard, as issue 8 describes it: one FastAPI endpoint, LangChain, an
in-process Chroma collection and the same MiniLM embedder (int8 ONNX through fastembed), answering with the same
OpenAI-compatible LLM. No persistence, guardrails, grounding check, tenants or channels. Run by
benchmarks/handbuilt_stack.py with the hand-built virtualenv's Python (benchmarks/handbuilt/requirements.txt).

    POST /chat {"question": "..."} -> {"answer": "...", "sources": [...]}

Environment: KNOWLEDGE (a folder of .md files and an FAQ .csv), MODEL_DIR (the model folder the driver prepared),
LLM_BASE_URL, LLM_API_KEY, PORT.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastembed import TextEmbedding
from fastembed.common.model_description import ModelSource, PoolingType
from langchain_chroma import Chroma
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from langchain_text_splitters import RecursiveCharacterTextSplitter
from pydantic import BaseModel

MODEL = "sentence-transformers/all-MiniLM-L6-v2-int8"


class MiniLM(Embeddings):
    def __init__(self, model_dir: str) -> None:
        TextEmbedding.add_custom_model(
            model=MODEL, pooling=PoolingType.MEAN, normalization=True,
            sources=ModelSource(hf="sentence-transformers/all-MiniLM-L6-v2"), dim=384, model_file="model.onnx")
        self.model = TextEmbedding(model_name=MODEL, specific_model_path=model_dir, local_files_only=True)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [v.tolist() for v in self.model.embed(texts, batch_size=32)]

    def embed_query(self, text: str) -> list[float]:
        return next(iter(self.model.query_embed(text))).tolist()


def documents(folder: Path) -> list[Document]:
    docs = [Document(page_content=p.read_text(), metadata={"source": p.name}) for p in sorted(folder.glob("*.md"))]
    for path in sorted(folder.glob("*.csv")):
        with path.open() as f:
            docs += [Document(page_content=f"Q: {row['question']}\nA: {row['answer']}", metadata={"source": path.name})
                     for row in csv.DictReader(f)]
    return RecursiveCharacterTextSplitter(chunk_size=800, chunk_overlap=100).split_documents(docs)


store = Chroma.from_documents(documents(Path(os.environ["KNOWLEDGE"])), MiniLM(os.environ["MODEL_DIR"]),
                              collection_name="faq")
llm = ChatOpenAI(model="fake", base_url=os.environ["LLM_BASE_URL"], api_key=os.environ["LLM_API_KEY"],
                 temperature=0)
prompt = ChatPromptTemplate.from_messages([
    ("system", "You are Northwind Outfitters' assistant. Answer only from these passages, citing them as [n]:\n"
               "{passages}"),
    ("human", "{question}"),
])
chain = prompt | llm
app = FastAPI()


class Question(BaseModel):
    question: str


@app.get("/ready")
def ready() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/chat")
def chat(body: Question) -> dict[str, Any]:  # a sync endpoint: FastAPI runs it in its thread pool
    hits = store.similarity_search(body.question, k=4)
    passages = "\n\n".join(f"[{i}] {d.page_content}" for i, d in enumerate(hits, 1))
    answer = chain.invoke({"passages": passages, "question": body.question})
    return {"answer": answer.content, "sources": [d.metadata["source"] for d in hits]}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
