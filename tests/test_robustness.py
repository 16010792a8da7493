"""Nothing lost, nobody let in: concurrent ingests, hostile files, random bytes, configs, templates,
models and secrets, all done for real (real files, the packaged MiniLM, real child processes, real
sockets), nothing mocked."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proc_support import IngestChild, child_env
from support import PROSE, make_folder

from rag.cli import main
from rag.config import dump_settings, load_settings
from rag.errors import ConfigError, LoadError, ModelError
from rag.loaders import SUPPORTED_EXTENSIONS, load_file
from rag.pipeline import Pipeline


def model_sets(model: Path) -> list[str]:
    return ["--set", f"embedding.model={model}"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("rag: error: ") and "Traceback" not in err
    return lines[0]


# --- concurrency, and a run that cannot reach the network ------------------------------------------


def offline_env(proxy: str, home: Path) -> dict[str, str]:
    """The offline switches unset and every proxy pointing at ``proxy``: whatever tries the network
    goes there (or fails), so a run that works and leaves ``proxy`` untouched needed no network."""
    drop = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ANONYMIZED_TELEMETRY", "NO_PROXY", "no_proxy")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy, https_proxy=proxy, ALL_PROXY=proxy,
               HF_HOME=str(home), TOKENIZERS_PARALLELISM="false")
    return env


class ConnectionCounter:
    """A local TCP listener that accepts and records every connection attempt."""

    def __init__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.socket.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.attempts: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except OSError:
                continue
            connection.settimeout(1)
            with contextlib.suppress(OSError):
                self.attempts.append(connection.recv(200))
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


def default_model_snapshot(store: Path) -> dict[str, tuple]:
    """id -> (text, source, file_signature) of every chunk in a store built with the default model."""
    pipeline = Pipeline.from_config({"store": {"path": str(store)}})
    chroma = pipeline.store
    chroma.open(chroma.record(), create=False)
    texts = dict(chroma.iter_texts())
    chunks = {i: (texts[i], m.get("source"), m.get("file_signature")) for i, m in chroma.iter_metadata()}
    assert len(chunks) == chroma.count()
    return chunks


# A child that imports what rag needs at once, then waits for a line on stdin before it runs the command:
# the three children started beside ingest A spend their start-up while A starts, and act only once A
# holds the store.
GATED = "import sys, rag.pipeline\nsys.stdin.readline()\nfrom rag.cli import main\nsys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def concurrent(tmp_path_factory, minilm_path) -> dict:
    """One run, two tests. Ingest A (`python -m rag.cli ingest`) is stopped with SIGSTOP right after it
    has taken the store's write lock, so the overlap does not depend on timing. Then ingest B (same
    store) should wait with a message, ingest C with --no-wait should fail at once, and a search D
    should answer from what the store already holds, with the offline switches unset and every proxy
    pointing at a socket that counts connection attempts. Then A goes on; A and B finish. All use the
    default embedding model id, which resolves to the packaged MiniLM with no network."""
    tmp = tmp_path_factory.mktemp("concurrent")
    x = make_folder(tmp / "x", PROSE)
    y = make_folder(tmp / "y", {"yak.txt": "The yak herder zqyakword counts animals on the plateau."})
    z = make_folder(tmp / "z", {"zebra.md": "# Zebra\n\nStripes of the zebra zqzebraword confuse flies."})
    seed = Pipeline.from_config({"store": {"path": str(tmp / "seed")}})
    seed.progress = False
    seed.ingest([x])
    store = tmp / "store"
    shutil.copytree(tmp / "seed", store)  # a store this process never opened, already holding x
    counter = ConnectionCounter()
    result: dict = {}

    def start(*args: str, name: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        """`rag ARGS` in a fresh interpreter that does its imports now and runs on a line on stdin."""
        err = tmp / f"{name}.err"
        proc = subprocess.Popen([sys.executable, "-c", GATED, *args], cwd=tmp, env=env or child_env(),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err.open("wb"))
        return proc, err

    a = IngestChild(["ingest", str(y), "--store", str(store), "--json"], cwd=tmp)
    b, b_err = start("ingest", str(z), "--store", str(store), "--json", name="b")
    c, c_err = start("ingest", str(z), "--store", str(store), "--no-wait", name="c")
    d, d_err = start("search", "boron carbide control rods", "--store", str(store), "--json", name="d",
                     env=offline_env(counter.url, tmp / "hf-home"))
    try:
        a.wait_progress()  # the progress bar starts inside the write lock
        os.kill(a.proc.pid, signal.SIGSTOP)
        for proc in (b, c, d):
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        c.wait(timeout=300)
        result["c"] = (c.returncode, c_err.read_text())
        d_out = d.stdout.read()
        d.wait(timeout=300)
        result["d"] = (d.returncode, d_out.decode(), d_err.read_text())
        deadline = time.monotonic() + 300
        while b"waiting for another ingest" not in b_err.read_bytes() and b.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        result["b_waiting"] = (b_err.read_text(), b.poll())
    except BaseException:
        for proc in (a.proc, b, c, d):
            with contextlib.suppress(OSError):
                proc.kill()
        raise
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
        counter.close()
    rc, out = a.finish()
    result["a"] = (rc, out, a.stderr)
    b_out = b.stdout.read()
    b.wait(timeout=300)
    result["b"] = (b.returncode, b_out.decode(), b_err.read_text())
    result["attempts"] = counter.attempts
    clean = Pipeline.from_config({"store": {"path": str(tmp / "clean")}})
    clean.progress = False
    clean.ingest([x, y, z])
    result["store"] = default_model_snapshot(store)
    result["clean"] = default_model_snapshot(tmp / "clean")
    return result


def test_two_ingests_into_one_store_wait_for_each_other(concurrent):
    waiting_err, waiting_rc = concurrent["b_waiting"]
    assert waiting_rc is None and "waiting for another ingest to finish writing" in waiting_err, waiting_err
    rc, err = concurrent["c"]
    line = one_line_error(err)
    assert rc == 2 and "another ingest" in line and "--no-wait" in line
    for name in ("a", "b"):
        rc, out, err = concurrent[name]
        assert rc == 0 and "Traceback" not in err, err
        assert json.loads(out)["added"] == 1
    assert concurrent["store"] == concurrent["clean"]


def test_search_during_an_ingest_works_and_never_tries_the_network(concurrent):
    rc, out, err = concurrent["d"]
    assert rc == 0 and "Traceback" not in err, err
    hits = json.loads(out)["hits"]
    assert hits and hits[0]["source"].endswith("alpha.md")
    assert not concurrent["attempts"], f"network attempts through the proxy: {concurrent['attempts']}"


# --- hostile files ----------------------------------------------------------------------------------


def make_pdf(text: str) -> bytes:
    """A one-page PDF with ``text`` in Helvetica, written by hand (pypdf reads it back)."""
    content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def encrypt_pdf(data: bytes, path: Path) -> None:
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password="s3cret", owner_password="owner", algorithm="RC4-128")
    with open(path, "wb") as handle:
        writer.write(handle)


def hostile_folder(root: Path) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """Good files (name -> unique word), bad files (names), and files either outcome is fine for (name -> word)."""
    root.mkdir()
    good: dict[str, str] = {}

    def text(name: str, word: str, body: str = "") -> None:
        (root / name).write_text(f"{body}This note mentions {word} once. " * 3, encoding="utf-8")
        good[name] = word

    text("plain.txt", "zqplainword")
    text("with space.txt", "zqspaceword")
    text("ünïcödé 東京.md", "zqunicodeword", "# Ünïcödé\n\n")
    text("new\nline.txt", "zqnewlineword")
    (root / "utf16.txt").write_bytes("UTF-16 without a byte order mark: zqutfsixteen here. ".encode("utf-16-le") * 4)
    good["utf16.txt"] = "zqutfsixteen"
    (root / "mixed.txt").write_bytes("Café in UTF-8, ".encode() + "naïve in Latin-1 ".encode("latin-1")
                                     + b"and zqmixedword after both.\n")
    good["mixed.txt"] = "zqmixedword"
    pdf = make_pdf("A good PDF about zqpdfword and nothing else")
    (root / "good.pdf").write_bytes(pdf)
    good["good.pdf"] = "zqpdfword"
    import docx

    document = docx.Document()
    document.add_heading("Good document", 1)
    document.add_paragraph("A good Word file about zqdocxword.")
    document.save(root / "good.docx")
    good["good.docx"] = "zqdocxword"
    (root / "good.html").write_text("<html><head><title>Good</title><script>var zqscriptword;</script></head>"
                                    "<body><p>A good page about zqhtmlword.</p></body></html>", encoding="utf-8")
    good["good.html"] = "zqhtmlword"

    bad = []

    def junk(name: str, data: bytes) -> None:
        (root / name).write_bytes(data)
        bad.append(name)

    junk("zero.txt", b"")
    junk("zero.md", b"")
    junk("binary.txt", bytes(range(256)) * 40)
    junk("binary.md", random.Random(0).randbytes(4096))
    junk("truncated.pdf", pdf[: len(pdf) // 2])
    encrypt_pdf(pdf, root / "encrypted.pdf")
    bad.append("encrypted.pdf")
    junk("notzip.docx", b"This is plain text pretending to be a Word file.")
    junk("bad\nname.txt", b"")
    junk("huge.txt", b"zqhugeword " * 300_000)  # one 3.3 MB line, over the limit set below
    (root / "loop.txt").symlink_to("loop.txt")  # a symlink to itself
    bad.append("loop.txt")
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to("..")  # a folder loop: must not hang or count files twice
    (root / "deep.html").write_text("<html><body>" + "<div>" * 100_000 + "zqdeepword" + "</div>" * 100_000
                                    + "</body></html>", encoding="utf-8")
    either = {"deep.html": "zqdeepword"}  # read, or refused with a reason: both are fine
    if os.geteuid() != 0:  # root reads anything, so the case only means something for other users
        (root / "locked.txt").write_text("zqlockedword", encoding="utf-8")
        (root / "locked.txt").chmod(0)
        bad.append("locked.txt")
    return good, bad, either


def test_hostile_files_beside_good_ones(tmp_path, minilm_path, capsys):
    docs = tmp_path / "docs"
    good, bad, either = hostile_folder(docs)
    store = str(tmp_path / "store")
    args = ["ingest", str(docs), "--store", store, *model_sets(minilm_path), "--set", "loading.max_file_bytes=2000000"]
    try:
        rc, out, err = run_cli(capsys, *args, "--json")
    finally:
        with contextlib.suppress(FileNotFoundError):
            (docs / "locked.txt").chmod(0o644)
    report = json.loads(out)
    failures = {Path(f["source"]).name: f["reason"] for f in report["failures"]}
    print(f"\nhostile inputs: {len(bad)} bad, {len(either)} either way, {len(good)} good; "
          f"{len(failures)} failed: {failures}")
    problems = []
    if "Traceback" in err:
        problems.append("a traceback on stderr")
    missing = [name for name in bad if name not in failures]
    if missing:
        problems.append(f"bad files with no reason: {missing}")
    if any(not reason or "\n" in reason for reason in failures.values()):
        problems.append("a reason that is empty or not one line")
    if set(failures) & set(good):
        problems.append(f"good files that failed: {set(failures) & set(good)}")
    # One line on stderr per failed file, and nothing else: a newline in a name must not split it.
    lines = [line for line in err.splitlines() if line.strip()]
    stray = [line for line in lines if not line.startswith("failed: ")]
    if len(lines) != len(failures) or stray:
        problems.append(f"{len(lines)} stderr lines for {len(failures)} failures; lines not naming a failure: {stray}")
    if rc != 1:
        problems.append(f"exit code {rc}, not 1")
    if "over the limit" not in failures.get("huge.txt", "") or "max_file_bytes" not in failures.get("huge.txt", ""):
        problems.append(f"huge.txt: {failures.get('huge.txt')!r} does not name the size limit")
    if "encrypted" not in failures.get("encrypted.pdf", ""):
        problems.append(f"encrypted.pdf: {failures.get('encrypted.pdf')!r} does not say it is encrypted")
    if report["added"] != len(good) + sum(name not in failures for name in either):
        problems.append(f"{report['added']} files added")

    rc, out, err = run_cli(capsys, *args, "--allow-failures")
    if rc != 0 or "Traceback" in err:
        problems.append(f"with --allow-failures: exit code {rc}")
    findable = {**good, **{name: word for name, word in either.items() if name not in failures}}
    for name, word in findable.items():
        rc, out, err = run_cli(capsys, "search", word, "--mode", "lexical", "-k", "1", "--json", "--store", store,
                               *model_sets(minilm_path))
        hits = json.loads(out)["hits"] if rc == 0 else []
        if not (hits and Path(hits[0]["source"]).name == name and word in hits[0]["text"]):
            problems.append(f"{name!r} not found by its word {word}: {err.strip() or hits[:1]}")
    rc, out, err = run_cli(capsys, "search", "zqscriptword", "--mode", "lexical", "--json", "--store", store,
                           *model_sets(minilm_path))
    if any("zqscriptword" in hit["text"] for hit in json.loads(out)["hits"]):
        problems.append("a <script> was indexed")
    assert not problems, "\n".join(problems)


def test_oversized_file_is_skipped_before_it_is_read(tmp_path, minilm_path, capsys):
    docs = make_folder(tmp_path / "docs", {"small.txt": "A small file about zqsmallword."})
    size = 48_000_000
    (docs / "huge.txt").write_bytes(b"w" * size)  # one line, no spaces: the worst case for a splitter
    args = ["ingest", str(docs), "--store", str(tmp_path / "store"), *model_sets(minilm_path),
            "--set", "loading.max_file_bytes=1000000", "--json"]
    run_cli(capsys, "info", "--store", str(tmp_path / "store"))  # imports done before measuring
    tracemalloc.start()
    try:
        rc, out, _ = run_cli(capsys, *args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    report = json.loads(out)
    print(f"\npeak Python memory while skipping a {size / 1e6:.0f} MB file: {peak / 1e6:.1f} MB")
    assert rc == 1 and report["added"] == 1 and report["failed"] == 1
    assert "max_file_bytes" in report["failures"][0]["reason"]
    assert peak < size / 4


# --- random bytes into every loader -------------------------------------------------------------

MAGIC = {
    ".pdf": b"%PDF-1.4\n", ".docx": b"PK\x03\x04", ".pptx": b"PK\x03\x04", ".xlsx": b"PK\x03\x04",
    ".html": b"<html><body>", ".htm": b"<div>", ".md": b"---\ntitle: x\n---\n", ".json": b'[{"text": ',
    ".jsonl": b'{"text": "a"}\n', ".csv": b"a,b\n", ".txt": b"", ".mdx": b"# ",
    ".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff\xe0", ".jpeg": b"\xff\xd8\xff\xe0", ".tif": b"II*\x00",
    ".tiff": b"MM\x00*", ".bmp": b"BM", ".webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
}


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("suffix", sorted(SUPPORTED_EXTENSIONS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048), with_magic=st.booleans())
def test_random_bytes_give_documents_or_load_error(fuzz_dir, suffix, data, with_magic):
    assert suffix in MAGIC
    path = fuzz_dir / f"random{suffix}"
    path.write_bytes((MAGIC[suffix] if with_magic else b"") + data)
    try:
        documents = load_file(path)
    except LoadError as exc:
        assert exc.reason and "\n" not in exc.reason
    else:
        assert documents and all(d.text.strip() for d in documents)


# --- configs ----------------------------------------------------------------------------------------


def test_yaml_tags_are_not_executed(tmp_path, capsys):
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f'store: !!python/object/apply:os.system ["touch {marker}"]\n'
                      f'retrieval:\n  k: !!python/object/apply:os.system ["touch {marker}"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape("evil.yaml")):
        load_settings(config)
    rc, _, err = run_cli(capsys, "info", "--config", str(config))
    assert rc == 2 and "evil.yaml" in one_line_error(err)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("retrieval:\n  kk: 3\n", "retrieval.kk: unknown key"),
        ("retrievers:\n  k: 3\n", "retrievers: unknown key"),
        ("retrieval:\n  k: many\n", "retrieval.k"),
        ("chunking:\n  chunk_size: -5\n", "chunking.chunk_size"),
        ("embedding:\n  normalize: [1, 2]\n", "embedding.normalize"),
        ("store: just-a-string\n", "store"),
        ("- a\n- list\n", "mapping"),
    ],
)
def test_bad_keys_and_types_name_the_key_and_file(tmp_path, capsys, yaml_text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert expected in str(info.value) and str(config) in str(info.value)
    rc, _, err = run_cli(capsys, "info", "--config", str(config))
    line = one_line_error(err)
    assert rc == 2 and expected in line and str(config) in line


def test_relative_paths_are_resolved_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    (folder / "prompts").mkdir(parents=True)
    (folder / "prompts" / "mine.j2").write_text("{{ question }}", encoding="utf-8")
    config = folder / "run.yaml"
    config.write_text("store:\n  path: data/store\nrun:\n  questions: questions.jsonl\n  inputs: [docs]\n"
                      "prompt:\n  template: prompts/mine.j2\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for path in (Path("../project/run.yaml"), config):
        s = load_settings(path)
        assert Path(s.store.path) == folder / "data" / "store"
        assert Path(s.run.questions) == folder / "questions.jsonl"
        assert [Path(p) for p in s.run.inputs] == [folder / "docs"]
        assert Path(s.prompt.template).resolve() == (folder / "prompts" / "mine.j2").resolve()
    builtin = folder / "builtin.yaml"
    builtin.write_text("prompt:\n  template: qa\n", encoding="utf-8")
    assert load_settings(builtin).prompt.template == "qa"  # a name, not a path, stays a name


def test_moved_ingest_keys_still_work_with_a_note(tmp_path, capsys):
    config = tmp_path / "old.yaml"
    config.write_text("embedding:\n  write_batch: 7\nloading:\n  prepare_ahead: true\n", encoding="utf-8")
    settings = load_settings(config)
    assert settings.ingest.write_batch == 7 and settings.ingest.prepare_ahead is True
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("rag: note:") and str(config) in line for line in err)
    assert "embedding.write_batch is now ingest.write_batch" in err[0]
    assert load_settings(None, sets=["embedding.write_batch=3"]).ingest.write_batch == 3
    new = load_settings(None, sets=["ingest.write_batch=5", "ingest.prepare_ahead=false"])
    assert new.ingest.write_batch == 5 and new.ingest.prepare_ahead is False
    assert capsys.readouterr().err.count("\n") == 1  # only the old key had a note


# --- templates --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def answer_setup(tmp_path_factory, minilm_path):
    from tiny_models import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("answer")
    generator = build_tiny_causal_lm(root / "tiny-lm", chat_template=True)
    docs = make_folder(root / "docs", {
        **PROSE,
        "curly.txt": "Template text in a document: {{ 7*7 }} and {% for i in range(3) %}loop{% endfor %} "
                     "about the zqcurlyword.",
    })
    store = root / "store"
    pipeline = Pipeline.from_config({"store": {"path": str(store)}, "embedding": {"model": str(minilm_path)}})
    pipeline.ingest([docs])
    sets = [*model_sets(minilm_path), "--set", f"generation.model={generator}",
            "--set", "generation.max_new_tokens=4", "--store", str(store)]
    return root, generator, store, sets


@pytest.mark.parametrize(
    "source",
    ["{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ cycler.__init__.__globals__ }}",
     "{{ question.__class__.__init__.__globals__['os'].system('touch MARKER') }}"],
)
def test_template_reaching_for_python_internals_fails_via_rag_ask(answer_setup, capsys, source):
    root, _, _, sets = answer_setup
    marker = root / "escaped"
    template = root / "escape.j2"
    template.write_text(source.replace("MARKER", str(marker)) + "\n{{ question }}\n", encoding="utf-8")
    rc, _, err = run_cli(capsys, "ask", "What is the alpha reactor?", *sets, "--set", f"prompt.template={template}")
    line = one_line_error(err)
    assert rc == 2 and "sandbox" in line and "escape.j2" in line
    assert not marker.exists()


def test_questions_and_documents_are_never_template_code(answer_setup, capsys, minilm_path):
    _, generator, store, sets = answer_setup
    pipeline = Pipeline.from_config({
        "store": {"path": str(store)}, "embedding": {"model": str(minilm_path)},
        "generation": {"model": str(generator), "max_new_tokens": 4},
    })
    answer = pipeline.ask("Which {{ 7*7 }} {% raw %}zqcurlyword{% endraw %} appears?", k=3, mode="hybrid")
    assert "Which {{ 7*7 }} {% raw %}zqcurlyword{% endraw %} appears?" in answer.prompt
    assert any("zqcurlyword" in hit.chunk.text for hit in answer.hits)
    assert "{{ 7*7 }} and {% for i in range(3) %}loop{% endfor %}" in answer.prompt
    # Paths in the prompt may hold any digits: look for the rendered values where they would land.
    assert "Which 49" not in answer.prompt and "49 and" not in answer.prompt and "looplooploop" not in answer.prompt
    rc, _, err = run_cli(capsys, "ask", "What is {{ 7*7 }}?", *sets, "--json")
    assert rc == 0 and "Traceback" not in err


# --- models -----------------------------------------------------------------------------------------


def remote_code_model(folder: Path, minilm: Path, marker: Path) -> Path:
    """A model folder whose config, tokenizer config and modeling code point at Python files that create
    ``marker`` when imported: whatever loads them ran code shipped with the model."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(minilm).save_pretrained(folder)
    trap = f"from pathlib import Path\nPath({str(marker)!r}).write_text('remote code ran')\n"
    (folder / "configuration_evil.py").write_text(
        trap + "from transformers import PretrainedConfig\n\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evilbert'\n", encoding="utf-8")
    (folder / "modeling_evil.py").write_text(
        trap + "from transformers import PreTrainedModel\nfrom .configuration_evil import EvilConfig\n\n"
        "class EvilModel(PreTrainedModel):\n    config_class = EvilConfig\n", encoding="utf-8")
    config = {"model_type": "evilbert", "architectures": ["EvilModel"], "hidden_size": 8,
              "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel",
                           "AutoModelForCausalLM": "modeling_evil.EvilModel"}}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
    (folder / "tokenization_evil.py").write_text(
        trap + "from transformers import BertTokenizer\n\nclass EvilTokenizer(BertTokenizer):\n    pass\n",
        encoding="utf-8")
    return folder


def test_remote_code_stays_off_unless_configured(tmp_path, minilm_path, capsys):
    marker = tmp_path / "remote-code-ran"
    evil = remote_code_model(tmp_path / "evil-model", minilm_path, marker)
    docs = make_folder(tmp_path / "docs", {"a.txt": "Some text to embed."})

    rc, _, err = run_cli(capsys, "ingest", str(docs), "--store", str(tmp_path / "s1"),
                         "--set", f"embedding.model={evil}")
    line = one_line_error(err)
    assert rc == 2 and "embedding.model" in line
    assert not marker.exists()

    from rag.generation import Generator

    with pytest.raises(ModelError) as info:
        Generator(str(evil)).load()
    assert "\n" not in str(info.value)
    assert not marker.exists()



@pytest.mark.slow
def test_remote_code_runs_only_when_the_config_turns_it_on(tmp_path, minilm_path):
    """The control for the test above: the trap is real, and embedding.trust_remote_code reaches
    transformers. Run in a child so that transformers copies the module into a cache of the test's own."""
    marker = tmp_path / "remote-code-ran"
    evil = remote_code_model(tmp_path / "evil-model", minilm_path, marker)
    docs = make_folder(tmp_path / "docs", {"a.txt": "Some text to embed."})
    env = {**child_env(), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-m", "rag.cli", "ingest", str(docs), "--store", str(tmp_path / "store"),
         "--set", f"embedding.model={evil}", "--set", "embedding.trust_remote_code=true"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert marker.exists(), result.stderr
    assert "Traceback" not in result.stderr


class _Recorder(BaseHTTPRequestHandler):
    """A pretend Chroma server that refuses everyone, remembering the Authorization headers it saw."""

    seen: ClassVar[list[str]] = []  # shared on purpose: the server makes a handler per request

    def do_GET(self):
        type(self).seen.append(self.headers.get("Authorization", ""))
        body = b'{"error": "Unauthorized", "message": "bad credentials"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):  # quiet
        pass


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chroma_token_never_appears_in_output_or_logs(tmp_path, capsys, caplog, monkeypatch, minilm_path):
    import logging

    caplog.set_level(logging.DEBUG)
    docs = make_folder(tmp_path / "docs", {"a.txt": "Some text."})
    config_secret, env_secret = "tok-from-config-3f9a1c", "tok-from-env-77be02"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        refusing = f"http://127.0.0.1:{server.server_address[1]}"
        unreachable = f"http://127.0.0.1:{closed_port()}"
        outputs = []
        for url in (unreachable, refusing):
            monkeypatch.delenv("RAG_CHROMA_TOKEN", raising=False)
            for command in (["info", "--json"], ["ingest", str(docs), *model_sets(minilm_path)]):
                rc, out, err = run_cli(capsys, *command, "--set", f"store.url={url}", "--set",
                                       f"store.token={config_secret}")
                assert rc == 2 and "Chroma" in one_line_error(err)
                outputs.append(out + err)
            monkeypatch.setenv("RAG_CHROMA_TOKEN", env_secret)
            for command in (["info", "--json"], ["ingest", str(docs), *model_sets(minilm_path)]):
                rc, out, err = run_cli(capsys, *command, "--set", f"store.url={url}")
                assert rc == 2
                one_line_error(err)
                outputs.append(out + err)
    finally:
        server.shutdown()
    # The tokens did reach the server, from the config and from the environment ...
    assert f"Bearer {config_secret}" in _Recorder.seen and f"Bearer {env_secret}" in _Recorder.seen
    # ... and never the user's screen or the logs.
    everything = "\n".join(outputs) + caplog.text
    assert config_secret not in everything and env_secret not in everything
    settings = load_settings(None, {"store.token": config_secret})
    assert config_secret not in repr(settings) and config_secret not in dump_settings(settings)
