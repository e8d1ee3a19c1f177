"""A job's LoRA entries as files (inputs/lora_files.py): refusals before any download, local files
and folders inside LORA_DIR, downloads into the capped cache, the names messages use.

Loading a file onto the models is tested with jobs in tests/scenarios/test_loras.py."""

import os
import time

import pytest

from sdxl_worker.config import FetchSettings, LoraSettings
from sdxl_worker.errors import InputError
from sdxl_worker.inputs.fetch import Fetcher
from sdxl_worker.inputs.lora_files import LoraFiles, evict, label_of
from sdxl_worker.testing.servers import Server, body
from sdxl_worker.testing.tiny_loras import tiny_lora

LORA = tiny_lora("base", ["to_q"], seed=1)


@pytest.fixture
def lora_dir(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    return folder.resolve()


@pytest.fixture
def files(lora_dir, tmp_path):
    """LoRA files with a LORA_DIR, a 1 MB cap per file and a 1 MB cache, fetching from loopback."""
    settings = LoraSettings(dir=lora_dir, cache_dir=tmp_path / "cache", cache_mb=1, max_mb=1)
    return LoraFiles(settings, Fetcher(FetchSettings(allow_private=True)), hub_offline=True)


@pytest.fixture
def server():
    with Server({"/fox.safetensors": body(LORA), "/big.safetensors": body(b"x" * 1_500_000),
                 "/page.safetensors": body(b"<html>not weights</html>")}) as http:
        yield http


def _refusal(call) -> str:
    with pytest.raises(InputError) as error:
        call()
    return str(error.value)


@pytest.mark.parametrize("weight_name", ["", "sub/x.safetensors", "a\\b.safetensors", ".hidden.safetensors",
                                         "x\0.safetensors"])
def test_a_weight_name_that_could_leave_the_folder_is_refused(files, weight_name):
    entry = {"path": "owner/repo", "weight_name": weight_name}
    assert _refusal(lambda: files.check_entry(entry, 2)) == (
        "LoRA 'repo': 'loras[2].weight_name' must be a file name inside the LoRA's folder (no '/', no leading '.'), "
        "for a folder inside LORA_DIR or a hub repo.")


def test_a_weight_name_must_be_safetensors(files):
    entry = {"path": "owner/repo", "weight_name": "style.ckpt"}
    assert _refusal(lambda: files.check_entry(entry, 0)) == \
        "LoRA 'repo': 'loras[0].weight_name' must name a .safetensors file."


@pytest.mark.parametrize("path", ["../outside.safetensors", "/etc/passwd", "./../../x.safetensors"])
def test_a_path_outside_lora_dir_is_refused_before_any_file_is_read(files, path):
    name = path.rsplit("/", 1)[-1]
    assert _refusal(lambda: files.check_entry({"path": path}, 1)) == (
        f"LoRA '{name}': 'loras[1].path' must lead to a file inside LORA_DIR, the worker's LoRA folder.")


def test_the_refusal_is_the_same_whether_or_not_the_file_exists(files, lora_dir):
    there = lora_dir.parent / "there.safetensors"
    there.write_bytes(LORA)
    existing = _refusal(lambda: files.check_entry({"path": str(there)}, 0))
    missing = _refusal(lambda: files.check_entry({"path": str(lora_dir.parent / "there2.safetensors")}, 0))
    assert existing.replace("there", "X") == missing.replace("there2", "X")


def test_without_lora_dir_local_paths_are_refused_and_hub_ids_and_urls_pass(tmp_path):
    files = LoraFiles(LoraSettings(dir=None, cache_dir=tmp_path), Fetcher())
    assert _refusal(lambda: files.check_entry({"path": "/data/x.safetensors"}, 0)) == \
        "LoRA 'x.safetensors': local paths in 'loras[0].path' need LORA_DIR set on the worker."
    files.check_entry({"path": "owner/some-lora"}, 0)
    files.check_entry({"path": " https://example.com/a.safetensors "}, 0)


def test_a_path_the_file_system_cannot_hold_is_refused_in_words(files):
    entry = {"path": "x" * 5000 + ".safetensors"}
    assert "'loras[0].path' is not a path this worker can read." in _refusal(lambda: files.resolve(entry, 0))


def test_a_local_file_and_a_folder_resolve_to_the_file_inside_lora_dir(files, lora_dir):
    (lora_dir / "style.safetensors").write_bytes(LORA)
    folder = lora_dir / "fox"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(LORA)
    (folder / "other.safetensors").write_bytes(LORA)
    assert files.resolve({"path": "style.safetensors"}, 0) == lora_dir / "style.safetensors"
    assert files.resolve({"path": str(lora_dir / "style.safetensors")}, 0) == lora_dir / "style.safetensors"
    assert files.resolve({"path": "fox"}, 0) == folder / "pytorch_lora_weights.safetensors"
    assert files.resolve({"path": "fox", "weight_name": "other.safetensors"}, 0) == folder / "other.safetensors"


def test_local_files_that_cannot_be_used_are_named(files, lora_dir):
    (lora_dir / "style.safetensors").write_bytes(LORA)
    (lora_dir / "weights.bin").write_bytes(b"pickle")
    (lora_dir / "empty").mkdir()
    assert _refusal(lambda: files.resolve({"path": "style.safetensors", "weight_name": "a.safetensors"}, 3)) == (
        "LoRA 'style.safetensors': 'loras[3].weight_name' applies to a folder, but 'loras[3].path' names a file; "
        "drop one of them.")
    assert _refusal(lambda: files.resolve({"path": "weights.bin"}, 0)) == \
        "LoRA 'weights.bin': 'loras[0].path' must be a .safetensors file."
    assert _refusal(lambda: files.resolve({"path": "empty"}, 0)) == \
        "LoRA 'empty': the folder in 'loras[0].path' has no file 'pytorch_lora_weights.safetensors'."
    assert _refusal(lambda: files.resolve({"path": "gone.safetensors"}, 0)) == (
        "LoRA 'gone.safetensors': 'loras[0].path' is not an https URL, a hub id (owner/name) or an existing "
        "local path.")


def test_a_link_inside_lora_dir_that_points_out_of_it_is_refused(files, lora_dir):
    secret = lora_dir.parent / "secret.safetensors"
    secret.write_bytes(LORA)
    folder = lora_dir / "linked"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").symlink_to(secret)
    assert _refusal(lambda: files.resolve({"path": "linked"}, 0)) == \
        "LoRA 'linked': 'loras[0].path' must lead to a file inside LORA_DIR, the worker's LoRA folder."
    assert _refusal(lambda: files.resolve({"path": "linked", "weight_name": "pytorch_lora_weights.safetensors"}, 0)) \
        .endswith("'loras[0].weight_name' must lead to a file inside LORA_DIR, the worker's LoRA folder.")


def test_a_hub_id_missing_from_an_offline_cache_is_named_with_the_fix(files):
    assert _refusal(lambda: files.resolve({"path": "someone/some-lora", "weight_name": "style.safetensors"}, 1)) == (
        "LoRA 'some-lora': 'style.safetensors' of hub repo 'someone/some-lora' was not found in this worker's "
        "hub cache (LocalEntryNotFoundError); give 'loras[1].weight_name' or an https URL.")


def test_a_url_is_downloaded_once_then_served_from_the_cache(files, server, tmp_path):
    url = server.url("/fox.safetensors")
    first = files.resolve({"path": url}, 0)
    assert first.read_bytes() == LORA and first.parent == tmp_path / "cache"
    assert first.suffix == ".safetensors" and len(first.stem) == 32
    again = files.resolve({"path": url}, 0)
    assert again == first
    assert [path for path, _ in server.requests] == ["/fox.safetensors"]
    assert list((tmp_path / "cache").iterdir()) == [first]  # no staging file left behind


def test_a_download_that_is_not_safetensors_or_too_large_is_refused_and_not_cached(files, server, tmp_path):
    assert _refusal(lambda: files.resolve({"path": server.url("/page.safetensors")}, 1)) == (
        "LoRA 'page.safetensors': 'loras[1].path' is not a valid .safetensors file (other formats are refused).")
    assert _refusal(lambda: files.resolve({"path": server.url("/big.safetensors")}, 0)) == \
        "LoRA 'big.safetensors': 'loras[0].path' is larger than the 1.0 MB limit."
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_new_download_evicts_older_files_over_the_cache_cap(files, server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    old = cache / ("0" * 32 + ".safetensors")
    old.write_bytes(b"x" * 999_000)
    os.utime(old, (time.time() - 100, time.time() - 100))
    fresh = files.resolve({"path": server.url("/fox.safetensors")}, 0)
    assert sorted(cache.iterdir()) == [fresh]


def test_the_cache_evicts_the_least_recently_used_first(tmp_path):
    now = time.time()
    for age, name in enumerate(["new", "middle", "old"]):
        file = tmp_path / f"{name}.safetensors"
        file.write_bytes(b"x" * 1000)
        os.utime(file, (now - age * 100, now - age * 100))
    removed = evict(tmp_path, cap_bytes=2000)
    assert [file.name for file in removed] == ["old.safetensors"]
    removed = evict(tmp_path, cap_bytes=0, keep=tmp_path / "middle.safetensors")
    assert [file.name for file in removed] == ["new.safetensors"]
    assert [file.name for file in tmp_path.iterdir()] == ["middle.safetensors"]
    assert evict(tmp_path, cap_bytes=1000) == []  # at the cap exactly: nothing to do


def test_messages_name_a_lora_by_its_file_never_its_signed_url_or_a_token():
    assert label_of({"path": "https://cdn.example/loras/fox.safetensors?X-Amz-Signature=abc123"}) == \
        "'fox.safetensors'"
    assert label_of({"path": "owner/some-lora/"}) == "'some-lora'"
    token = "hf_AbC123dEf456GhI789jKl012MnO345pQr678"
    assert label_of({"path": f"https://x.example/{token}"}) == "'<a name of 39 characters>'"
    assert label_of({"path": "https://x.example/<b>fox</b>.safetensors"}) == "'<a name of 14 characters>'"


def test_what_check_entry_lets_through(tmp_path):
    files = LoraFiles(LoraSettings(dir=None, cache_dir=tmp_path), Fetcher())
    for path in ("http://example.com/a.safetensors", "HTTPS://example.com/a.safetensors", "owner/repo"):
        files.check_entry({"path": path, "weight_name": "style.safetensors"}, 0)
    with pytest.raises(InputError) as refused:
        files.check_entry({"path": "./style.safetensors"}, 0)
    assert str(refused.value) == "LoRA 'style.safetensors': local paths in 'loras[0].path' need LORA_DIR set on the worker."


def test_a_path_with_a_nul_byte_is_refused_in_words(files):
    assert _refusal(lambda: files.check_entry({"path": "a\0b.safetensors"}, 1)) == \
        "LoRA '<a name of 15 characters>': 'loras[1].path' is not a path this worker can read."


def test_resolving_names_the_entry_by_its_index_and_label(files, lora_dir):
    assert _refusal(lambda: files.resolve({"path": "../outside.safetensors"}, 2)) == \
        "LoRA 'outside.safetensors': 'loras[2].path' must lead to a file inside LORA_DIR, the worker's LoRA folder."
    assert _refusal(lambda: files.resolve({"path": "./gone.safetensors"}, 0)) == (
        "LoRA 'gone.safetensors': 'loras[0].path' is not an https URL, a hub id (owner/name) or an existing "
        "local path.")


def test_an_https_url_is_downloaded_never_read_as_a_path(files, server):
    url = f"HTTPS://127.0.0.1:{server.port}/fox.safetensors"
    assert _refusal(lambda: files.resolve({"path": url}, 0)).startswith(
        "LoRA 'fox.safetensors': 'loras[0].path' could not be downloaded: TLS failed (")


def test_a_hub_lora_missing_from_the_local_cache_is_downloaded_into_the_lora_cache(tmp_path, server, monkeypatch):
    import huggingface_hub

    asked = []

    def hub_url(repo_id, filename):
        asked.append((repo_id, filename))
        return server.url("/fox.safetensors")

    monkeypatch.setattr(huggingface_hub, "hf_hub_url", hub_url)
    files = LoraFiles(LoraSettings(dir=None, cache_dir=tmp_path / "cache"), Fetcher(FetchSettings(allow_private=True)))
    found = files.resolve({"path": "someone/fox-lora", "weight_name": "fox.safetensors"}, 0)
    assert found.parent == tmp_path / "cache" and found.read_bytes() == LORA
    assert asked == [("someone/fox-lora", "fox.safetensors")]

    monkeypatch.setattr(huggingface_hub, "hf_hub_url", lambda repo_id, filename: server.url("/page.safetensors"))
    assert _refusal(lambda: files.resolve({"path": "someone/page-lora"}, 3)) == (
        "LoRA 'page-lora': 'loras[3].path' is not a valid .safetensors file (other formats are refused).")

    def no_hub(repo_id, filename):
        raise ValueError("the hub is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_url", no_hub)
    assert _refusal(lambda: files.resolve({"path": "someone/other-lora"}, 1)) == (
        "LoRA 'other-lora': 'pytorch_lora_weights.safetensors' of hub repo 'someone/other-lora' was not found on "
        "the hub (ValueError); give 'loras[1].weight_name' or an https URL.")


def test_a_download_is_staged_beside_the_cache_and_the_cache_folder_made_as_needed(tmp_path, server):
    cache = tmp_path / "deep" / "er" / "cache"
    seen = []

    class Watching(Fetcher):
        def fetch_into(self, source, field, write, max_bytes=None):
            def watched(chunk):
                seen.append(sorted(path.name for path in cache.iterdir()))
                write(chunk)
            return super().fetch_into(source, field, watched, max_bytes)

    files = LoraFiles(LoraSettings(dir=None, cache_dir=cache), Watching(FetchSettings(allow_private=True)))
    fresh = files.resolve({"path": server.url("/fox.safetensors")}, 0)
    assert seen and all(len(names) == 1 and names[0].endswith(".part") for names in seen)
    assert sorted(cache.iterdir()) == [fresh]


def test_the_new_download_is_kept_even_over_the_cap_and_files_under_it_stay(tmp_path, server):
    cache = tmp_path / "cache"
    cache.mkdir()
    old = cache / ("1" * 32 + ".safetensors")
    old.write_bytes(b"x" * 1000)
    roomy = LoraFiles(LoraSettings(dir=None, cache_dir=cache, cache_mb=1), Fetcher(FetchSettings(allow_private=True)))
    first = roomy.resolve({"path": server.url("/fox.safetensors")}, 0)
    assert old.exists() and first.exists()  # about 1 KB + the LoRA: under 1 MB
    cramped = LoraFiles(LoraSettings(dir=None, cache_dir=cache, cache_mb=0.000001),
                        Fetcher(FetchSettings(allow_private=True)))
    second = cramped.resolve({"path": server.url("/fox.safetensors") + "?v=2"}, 0)
    assert sorted(cache.iterdir()) == [second]  # the rest evicted, the file just fetched kept


def test_eviction_goes_on_until_the_folder_is_under_the_cap(tmp_path):
    now = time.time()
    for age, name in enumerate(["c", "b", "a"]):
        file = tmp_path / f"{name}.safetensors"
        file.write_bytes(b"x" * 400)
        os.utime(file, (now - age * 100, now - age * 100))
    assert [file.name for file in evict(tmp_path, cap_bytes=500)] == ["a.safetensors", "b.safetensors"]


def test_a_label_keeps_its_last_part_whole():
    assert label_of({"path": "https://x.example/loras/STYLEX"}) == "'STYLEX'"
    assert label_of({"path": "https://x.example/a/b/c.safetensors"}) == "'c.safetensors'"


def test_hub_ids_may_be_downloaded_unless_the_worker_is_offline(tmp_path):
    assert LoraFiles(LoraSettings(cache_dir=tmp_path), Fetcher()).hub_offline is False
