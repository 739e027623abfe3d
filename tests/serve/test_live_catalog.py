"""The catalog changed over HTTP while serving (POST/DELETE /items): items are recommended at
once, survive a restart, and a server killed with SIGKILL in the middle of updates comes back
with a consistent catalog: every acknowledged change, no torn one."""

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from mlrec.serve.live import UPDATES_FILE
from tests.export.tiny_export import make_export
from tests.serve.server import MLREC, free_port, running_service

LIVE = "serve.live_updates=true"
TEXT = "Wahlen in Berlin: die Ergebnisse aus allen Bezirken"


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_shards) -> Path:
    return make_export(tmp_path_factory.mktemp("live"), tiny_shards)


@pytest.fixture
def export(base, tmp_path) -> Path:
    return shutil.copytree(base, tmp_path / "export")


def _ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [i["id"] for i in response.json()["results"][0]["items"]]


def _german(client, user: dict) -> list[str]:
    query = {**user, "k": 1000, "languages": ["de"], "exclude_history": False}
    return _ids(client.post("/recommend", json={"users": [query]}))


def test_added_items_are_served_at_once_and_survive_a_restart(export, tmp_path):
    log = tmp_path / "serve.log"
    with running_service(export, log, LIVE) as client:
        before = client.get("/health").json()["items"]
        new = [
            {"id": "X1", "language": "de", "text": TEXT, "category": "politics"},
            {"id": "X2@ru", "language": "ru", "text": "Новости спорта"},
        ]
        got = client.post("/items", json={"items": new})
        assert got.status_code == 200, got.text
        assert got.json() == {"ids": ["X1@de", "X2@ru"], "items": before + 2}
        by_id = _german(client, {"history": ["X1@de"]})
        assert "X1@de" in by_id and "X2@ru" not in by_id
        # the item's vector is its text's: a history of the text is the same user
        assert _german(client, {"texts": [TEXT]}) == by_id
        russian = {"history": ["X1@de"], "k": 1000, "languages": ["ru"]}
        full = client.post("/recommend", json={"users": [russian]})
        (listed,) = [i for i in full.json()["results"][0]["items"] if i["id"] == "X2@ru"]
        assert "category" not in listed
        german = {"history": ["X2@ru"], "k": 1000, "languages": ["de"]}
        full = client.post("/recommend", json={"users": [german]})
        (mine,) = [i for i in full.json()["results"][0]["items"] if i["id"] == "X1@de"]
        assert mine["category"] == "politics"
        replaced = client.post("/items", json={"items": [{**new[1], "text": "Погода"}]})
        assert replaced.json()["items"] == before + 2  # replaced, not added
        assert client.request("DELETE", "/items", json={"ids": ["X1@de"]}).status_code == 200
        others = [i for i in by_id if i != "X1@de"]
        after_delete = _german(client, {"history": others[:1]})
        assert "X1@de" not in after_delete and len(after_delete) == len(by_id) - 1
        expected_ru = client.post("/rank", json={"history": ["X2@ru"], "candidates": others[:5]})
    assert "dropped a torn" not in log.read_text()
    with running_service(export, tmp_path / "again.log") as client:  # read-only now
        assert client.get("/health").json()["items"] == before + 1
        assert _german(client, {"history": others[:1]}) == after_delete
        again = client.post("/rank", json={"history": ["X2@ru"], "candidates": others[:5]})
        assert again.json() == expected_ru.json()  # the replaced vector, not the first one
        gone = client.post("/rank", json={"history": ["X1@de"], "candidates": others[:2]})
        assert gone.status_code == 422 and "X1@de" in gone.text
        refused = client.post("/items", json={"items": new[:1]})
        assert refused.status_code == 403 and "serve.live_updates" in refused.text


def test_bad_item_changes_are_refused_and_change_nothing(export, tmp_path):
    with running_service(export, tmp_path / "serve.log", LIVE) as client:
        before = client.get("/health").json()["items"]
        bad = [
            ({"items": []}, 422, "items is empty"),
            ({"items": [{"id": "X@de", "language": "ru", "text": "t"}]}, 422, "names language"),
            ({"items": [{"id": "X", "language": "d e", "text": "t"}]}, 422, "language code"),
            ({"items": [{"id": "X", "language": "de", "text": " "}]}, 422, "empty"),
            ({"items": [{"id": "X", "language": "de"}]}, 422, "missing"),
            ({"items": [{"id": "X", "language": "de", "text": "t"}] * 2}, 422, "more than once"),
        ]
        for body, status, message in bad:
            got = client.post("/items", json=body)
            assert got.status_code == status and message in got.text, (body, got.text)
        some_known = {"ids": ["N1@de", "NOPE@de"]}
        got = client.request("DELETE", "/items", json=some_known)
        assert got.status_code == 404 and "NOPE@de" in got.text
        assert client.get("/health").json()["items"] == before  # N1@de was not removed either
    assert not (export / "catalog" / UPDATES_FILE).exists()  # nothing changed, nothing logged


def _writer(base_url: str, prefix: str, acked: list, stop: threading.Event) -> None:
    """Adds items two per request until stopped or the server is gone."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        n = 0
        while not stop.is_set():
            ids = [f"{prefix}{n}a", f"{prefix}{n}b"]
            items = [{"id": i, "language": "en", "text": f"story {i}"} for i in ids]
            try:
                got = client.post("/items", json={"items": items})
            except httpx.TransportError:
                return
            if got.status_code == 200:
                acked.extend(f"{i}@en" for i in ids)
            n += 1


def _reader(base_url: str, seen: list, stop: threading.Event) -> None:
    """Counts the catalog while the writers change it."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while not stop.is_set():
            try:
                seen.append(client.get("/health").json()["items"])
            except httpx.TransportError:
                return


def test_a_server_killed_mid_update_restarts_with_a_consistent_catalog(export, tmp_path):
    updates = export / "catalog" / UPDATES_FILE
    acked: list[str] = []
    seen: list[int] = []
    stop = threading.Event()
    with running_service(export, tmp_path / "serve.log", LIVE) as client:
        base_items = client.get("/health").json()["items"]
        url = str(client.base_url)
        threads = [threading.Thread(target=_writer, args=(url, p, acked, stop)) for p in "AB"]
        threads.append(threading.Thread(target=_reader, args=(url, seen, stop)))
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(client.server_pid, signal.SIGKILL)  # while both writers are still posting
        stop.set()
        for t in threads:
            t.join()
    assert len(acked) >= 40
    # both items of a request appear together: readers never saw half of one
    assert len(seen) > 10 and all((n - base_items) % 2 == 0 for n in seen), seen
    # What a kill during a write leaves: a line without its newline (appended here, since the
    # kill above lands between writes or inside one only by chance).
    with open(updates, "ab") as handle:
        handle.write(b'{"op":"put","items":[{"id":"TORN@en","language":"e')
    lines = updates.read_bytes().count(b"\n")
    assert 2 * lines >= len(acked)  # every acknowledged change was on disk before its answer
    log = tmp_path / "restart.log"
    with running_service(export, log, LIVE) as client:
        assert "dropped a torn last line" in log.read_text()
        assert client.get("/health").json()["items"] == base_items + 2 * lines
        known = client.post("/rank", json={"history": acked[:1], "candidates": acked})
        assert known.status_code == 200, known.text  # every acknowledged item is there
        torn = client.post("/rank", json={"history": acked[:1], "candidates": ["TORN@en"]})
        assert torn.status_code == 422
        # the log goes on after the cut: a new change and another restart
        more = {"items": [{"id": "C1", "language": "en", "text": "after the crash"}]}
        assert client.post("/items", json=more).status_code == 200
    assert updates.read_bytes().endswith(b"\n")
    with running_service(export, tmp_path / "third.log") as client:
        assert client.get("/health").json()["items"] == base_items + 2 * lines + 1


def test_a_damaged_update_log_stops_the_service_naming_the_line(export):
    updates = export / "catalog" / UPDATES_FILE
    good = {"op": "delete", "ids": ["N1@de"]}
    updates.write_text(json.dumps(good) + "\n" + "{not json\n" + json.dumps(good) + "\n")
    cmd = [MLREC, "serve", str(export), f"serve.port={free_port()}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert out.returncode != 0
    assert f"{updates}:2: unreadable update" in out.stderr + out.stdout
