import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

from llmlab.data.corpus import bundled_corpus, bundled_documents, stdlib_directory

SAMPLE_CHARS = 200_000


@pytest.fixture(scope="module")
def documents():
    return bundled_documents()


def run_python(code: str, cwd, hash_seed: str) -> str:
    environment = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_corpus_is_a_few_megabytes_of_distinct_docstrings(documents):
    texts = [document["text"] for document in documents]
    assert len(texts) > 1000
    assert 500_000 < sum(map(len, texts)) <= 4_000_000
    assert len(set(texts)) == len(texts)
    assert all(text.strip() for text in texts)


def test_documents_name_their_standard_library_source(documents):
    sources = {document["meta"]["source"] for document in documents}
    assert "json/decoder.py" in sources
    assert all(os.path.isfile(os.path.join(stdlib_directory(), source)) for source in sources)
    json_loads = [d["text"] for d in documents if d["meta"] == {"source": "json/__init__.py", "name": "loads"}]
    assert json_loads and json_loads[0].startswith("Deserialize ``s``")


def test_max_chars_caps_the_text():
    documents = bundled_documents(max_chars=10_000)
    assert 0 < sum(len(document["text"]) for document in documents) <= 10_000
    assert bundled_corpus(10_000) == "\n\n".join(document["text"] for document in documents)


def test_corpus_is_identical_across_processes_and_hash_seeds(tmp_path):
    expected = hashlib.sha256(bundled_corpus(SAMPLE_CHARS).encode()).hexdigest()
    code = f"""
        import hashlib
        from llmlab.data.corpus import bundled_corpus
        print(hashlib.sha256(bundled_corpus({SAMPLE_CHARS}).encode()).hexdigest())
    """
    assert run_python(code, tmp_path, hash_seed="12345") == expected


def test_corpus_reads_only_the_standard_library(tmp_path):
    (tmp_path / "shared").mkdir()
    code = f"""
        import json, sys
        from llmlab.data.corpus import bundled_documents
        opened = []
        sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
        bundled_documents({SAMPLE_CHARS})
        print(json.dumps(opened))
    """
    opened = json.loads(run_python(code, tmp_path, hash_seed="0"))
    assert opened
    assert all(os.path.realpath(path).startswith(os.path.realpath(stdlib_directory())) for path in opened), opened
