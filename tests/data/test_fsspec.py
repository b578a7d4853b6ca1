"""`llmlab data run` through fsspec: sources (directories, globs, gzip files), the output, a seed index and a tokenizer
on other filesystems give the bytes of a run on local paths.

Two filesystems stand in for an object store. fsspec's memory:// is the real thing but lives in one process, so it
is used with workers: 1 (the local executor then runs every task in-process) and refused with more workers.
`ObjectStore` (objstore://, below) keeps objects as files of a local directory with an object store's semantics:
flat keys, directories only as key prefixes, no rename (fsspec's mv copies then deletes), an object visible only
once its upload closes. Worker processes (spawned, or Ray's) reach it too: the filesystem object travels with every
task and importing this module registers the protocol there. It shows that no pipeline write bypasses fsspec and
none relies on a rename or on directories; it does not show an object store's latency, listing consistency or
request limits.

Every document records the path it was read from (meta.path), so the cleaned documents of a run whose sources are
elsewhere differ in that field alone: those files are compared after decompression with the path mapped back.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import quote, unquote

import fsspec
import pyarrow
import pyarrow.parquet as parquet
import pytest
import zstandard
from fsspec.spec import AbstractFileSystem

from llmlab.data.paths import location
from llmlab.data.pipeline import run_pipeline
from llmlab.data.pipeline_recipe import recipe_from_dict
from llmlab.errors import ConfigError
from tests.data.test_pipeline import full_recipe, output_files, planted_corpus

ROOT_VARIABLE = "LLMLAB_TEST_OBJECT_STORE"
RUN_FIELDS = ("executor", "workers", "tasks", "seconds", "documents_per_second")
REPO = Path(__file__).parents[2]


class _Upload(io.BytesIO):
    """An object being uploaded: it appears, whole, when closed."""

    def __init__(self, file: Path):
        super().__init__()
        self.file = file

    def close(self) -> None:
        if not self.closed:
            staging = self.file.with_name(f"~{uuid.uuid4().hex}")  # "~" names are not keys (quote() never makes one)
            staging.write_bytes(self.getvalue())
            os.replace(staging, self.file)
        super().close()


class ObjectStore(AbstractFileSystem):
    """An object store kept in the local directory $LLMLAB_TEST_OBJECT_STORE: one file per key, no directories."""

    protocol = "objstore"
    cachable = False  # the root is read from the environment each time

    def __init__(self, **options):
        super().__init__(**options)
        self.root = Path(os.environ[ROOT_VARIABLE])

    @classmethod
    def _strip_protocol(cls, path):
        path = path[len("objstore://"):] if path.startswith("objstore://") else path
        return path.strip("/")

    def _file(self, key: str) -> Path:
        return self.root / quote(self._strip_protocol(key), safe="")

    def _keys(self) -> list[str]:
        return sorted(unquote(name) for name in os.listdir(self.root) if not name.startswith("~"))

    def info(self, path, **kwargs):
        key = self._strip_protocol(path)
        file = self._file(key)
        if file.is_file():
            return {"name": key, "size": file.stat().st_size, "type": "file", "mtime": file.stat().st_mtime_ns}
        if not key or any(other.startswith(key + "/") for other in self._keys()):
            return {"name": key, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    def ls(self, path, detail=True, **kwargs):
        key = self._strip_protocol(path)
        prefix = key + "/" if key else ""
        names = {prefix + other[len(prefix):].split("/")[0] for other in self._keys() if other.startswith(prefix)}
        if key in self._keys():
            names = {key}
        elif not names:
            raise FileNotFoundError(path)
        entries = [self.info(name) for name in sorted(names)]
        return entries if detail else [entry["name"] for entry in entries]

    def _open(self, path, mode="rb", **kwargs):
        return open(self._file(path), "rb") if "r" in mode else _Upload(self._file(path))

    def cp_file(self, path1, path2, **kwargs):
        with self._open(path2, "wb") as target:
            target.write(self._file(path1).read_bytes())

    def rm_file(self, path):
        os.unlink(self._file(path))

    def _rm(self, path):
        self.rm_file(path)

    def makedirs(self, path, exist_ok=False):
        pass

    def mkdir(self, path, create_parents=True, **kwargs):
        pass

    def rmdir(self, path):
        pass


fsspec.register_implementation("objstore", ObjectStore, clobber=True)


def tree(fs: AbstractFileSystem, root: str) -> dict[str, bytes]:
    """Every file's bytes below ROOT on FS by relative path, the reports left out."""
    root = fs._strip_protocol(root).rstrip("/")
    return {path[len(root) + 1:]: fs.cat_file(path) for path in sorted(fs.find(root))
            if path.rsplit("/", 1)[-1] not in ("report.json", "report.md")}


def documents_of(data: bytes, name: str, old: str, new: str) -> list[dict]:
    """The JSON records of a compressed JSONL file, with meta.path's prefix OLD replaced by NEW."""
    if name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    else:
        data = gzip.decompress(data)
    records = [json.loads(line) for line in data.decode().splitlines()]
    for record in records:
        assert record["path"].startswith(old), record["path"]
        record["path"] = new + record["path"][len(old):]
    return records


def assert_same_outputs(remote: dict[str, bytes], local: dict[str, bytes], old: str = "", new: str = "") -> None:
    """REMOTE's files are LOCAL's bytes; with OLD, the documents' meta.path differs by that prefix alone (and
    recipe.json, the recipe, names the other inputs)."""
    assert sorted(remote) == sorted(local) and len(local) > 20
    for name, data in local.items():
        if old and name == "recipe.json":
            continue
        if old and name.endswith((".jsonl.zst", ".jsonl.gz")):
            assert documents_of(remote[name], name, old, new) == documents_of(data, name, new, new), name
        else:
            assert remote[name] == data, name


def made(report: dict) -> dict:
    return {key: value for key, value in report.items() if key not in RUN_FIELDS}


@pytest.fixture
def corpus(tmp_path):
    """A planted corpus (exact and near duplicates across files) as gzip JSONL, and the local executor's run on it."""
    planted_corpus(tmp_path / "plain", files=4, per_file=12, words=120)
    for file in sorted((tmp_path / "plain").iterdir()):
        (tmp_path / "corpus").mkdir(exist_ok=True)
        (tmp_path / "corpus" / (file.name + ".gz")).write_bytes(gzip.compress(file.read_bytes(), mtime=0))
    report = run_pipeline(recipe_from_dict(full_recipe(tmp_path, tmp_path / "corpus")), tmp_path / "local",
                          progress=False)
    dedup = next(stage for stage in report["stages"] if stage["stage"] == "dedup")["counts"]
    assert dedup["exact_duplicates"] == 3 and dedup["near_duplicates"] == 3
    return tmp_path, output_files(tmp_path / "local"), report


def test_a_memory_output_holds_the_local_runs_bytes(corpus):
    root, expected, report = corpus
    out = f"memory://llmlab-{uuid.uuid4().hex}/run"
    remote = run_pipeline(recipe_from_dict(full_recipe(root, root / "corpus")), out, progress=False)
    assert tree(fsspec.filesystem("memory"), out) == expected  # work files too: units/, dedup/buckets/
    assert made(remote) == made(report)
    assert json.loads(fsspec.filesystem("memory").cat_file(out + "/report.json")) == remote


def test_sources_glob_seed_index_and_tokenizer_on_memory(corpus):
    """A second corpus (gzip JSONL, Parquet in row-group units, text; a hidden file left out) de-duplicated against
    the first run's index, with its tokenizer: every input and the output on memory://, against the same run on
    local paths."""
    root, _, _ = corpus
    memory, base = fsspec.filesystem("memory"), f"memory://llmlab-{uuid.uuid4().hex}"
    (root / "second").mkdir()
    shutil.copy(root / "corpus" / "part3.jsonl.gz", root / "second" / "copy.jsonl.gz")  # all seen by the first run
    planted_corpus(root / "new", files=2, per_file=12, seed=1, words=120)
    for file in (root / "new").iterdir():
        (root / "second" / (file.name + ".gz")).write_bytes(gzip.compress(file.read_bytes(), mtime=0))
    (root / "second" / ".hidden.jsonl.gz").write_bytes((root / "second" / "copy.jsonl.gz").read_bytes())
    rows = [json.loads(line) for line in (root / "new" / "part0.jsonl").read_text().splitlines()]
    parquet.write_table(pyarrow.Table.from_pylist(rows[::-1]), root / "second" / "rows.parquet", row_group_size=5)
    (root / "second" / "notes.txt").write_text("A text file read whole as one document.\n")
    for directory in ("second", "local/dedup/index", "local/shards"):
        memory.put(str(root / directory), f"{base}/{directory}", recursive=True)

    def recipe(where: str) -> dict:
        data = full_recipe(root, f"{where}/second/*", tokenizer={"path": f"{where}/local/shards"})
        data["sources"][0]["rows_per_unit"] = 5  # the Parquet file in three units
        data["stages"][-1] = {"dedup": {"near": True, "index": f"{where}/local/dedup/index"}}
        return data

    local = run_pipeline(recipe_from_dict(recipe(str(root))), root / "again", progress=False)
    remote = run_pipeline(recipe_from_dict(recipe(base)), f"{base}/again", progress=False)
    assert local["units"] == 7 and local["stages"][0]["out"] == 36 + 12 + 1
    assert local["stages"][-2]["counts"]["exact_duplicates"] >= 11 + 11  # the copy's and the Parquet file's
    assert_same_outputs(tree(memory, f"{base}/again"), output_files(root / "again"), str(location(base)), str(root))
    assert made(remote)["stages"] == made(local)["stages"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty ObjectStore for this test (its root in the environment, so worker processes find it too)."""
    monkeypatch.setenv(ROOT_VARIABLE, str(tmp_path / "store"))
    (tmp_path / "store").mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), str(REPO / "src"),
                                                                    os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return ObjectStore()


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_an_object_store_across_worker_processes(corpus, store, executor):
    root, expected, report = corpus
    store.put(str(root / "corpus"), "corpus", recursive=True)
    recipe = recipe_from_dict(full_recipe(root, "objstore://corpus", workers=2))
    if executor == "ray":
        pytest.importorskip("ray", reason="Ray is not installed (pip install 'llmlab[scale]')")
    try:
        remote = run_pipeline(recipe, "objstore://run", progress=False, executor=executor)
    except ConfigError as error:
        pytest.skip(f"a local Ray cluster cannot start here ({error})")
    assert remote["executor"] == executor and remote["workers"] == 2
    assert_same_outputs(tree(store, "run"), expected, "objstore://corpus", str(root / "corpus"))
    assert made(remote)["stages"] == made(report)["stages"]
    assert not [key for key in store._keys() if key.endswith(".tmp")]


def test_a_crash_between_copy_and_delete_is_cleaned_up_and_resumed(corpus, store, monkeypatch):
    """The upload of a temporary and its copy onto the final key succeed, the delete fails and so does everything
    after: the rerun removes the temporary, redoes only the unfinished tasks and writes the same bytes."""
    root, expected, _ = corpus
    recipe = recipe_from_dict(full_recipe(root, root / "corpus"))
    deletes, remove = [], ObjectStore.rm_file

    def failing_remove(self, path):
        deletes.append(path)
        if len(deletes) >= 40:
            raise ConnectionError("the store went away")
        remove(self, path)

    monkeypatch.setattr(ObjectStore, "rm_file", failing_remove)
    with pytest.raises(ConnectionError):
        run_pipeline(recipe, "objstore://run", progress=False)
    monkeypatch.setattr(ObjectStore, "rm_file", remove)
    left = [key for key in store._keys() if key.endswith(".tmp")]
    directory, name = left[0].rsplit("/", 1)
    assert len(left) == 1 and store.isfile(f"{directory}/{name[1:-len('.12345678.tmp')]}")  # copied, not deleted
    report = run_pipeline(recipe, "objstore://run", progress=False)
    assert tree(store, "run") == expected
    assert report["tasks"]["clean"] == [4, 0] and report["tasks"]["dedup"][1] < report["tasks"]["dedup"][0]


def test_memory_with_other_processes_and_unknown_filesystems_are_refused_in_one_sentence(tmp_path):
    recipe = recipe_from_dict({"sources": [{"path": str(tmp_path)}], "workers": 2})
    with pytest.raises(ConfigError, match=r"^memory://run lives in this process's memory, which other worker") as error:
        run_pipeline(recipe, "memory://run", progress=False)
    assert str(error.value).count(". ") == 0
    with pytest.raises(ConfigError, match=r"^nosuchfs://run names a filesystem that fsspec cannot open here"):
        run_pipeline(recipe, "nosuchfs://run", progress=False)
