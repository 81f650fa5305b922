"""``edg fetch edbench`` against a Dataverse file API served on 127.0.0.1 by the test (nothing reaches the
network): listing, streamed downloads verified by checksum, the original of an ingested table, archives
unpacked, names that would leave the output folder refused."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import urllib.parse
import zipfile

import pytest
from edg.cluster.cli import main
from edg.edg_core.dataverse import unpack
from edg.edg_core.download import ChecksumError, UnsafeArchiveError
from edg.edg_core.errors import DataSourceError
from edg.edg_core.readers import open_source
from edg.edg_core.readers.edbench_fetch import DOIS, fetch_edbench
from paperdata_fixtures import write_edbench


class FakeDataverse:
    """``files``: id -> (bytes, listing entry); ``tab``: id -> what the API serves without ?format=original."""

    def __init__(self):
        self.files, self.tab, self.requests = {}, {}, []
        self.doi = DOIS["ed_energy_5w"]

    def add(self, fid, data, name, folder="", checksum="MD5", original_of=None):
        digest = {"MD5": hashlib.md5, "SHA-1": hashlib.sha1, "SHA-256": hashlib.sha256}[checksum](data).hexdigest()
        df = {"id": fid, "filename": name, "filesize": len(data), "checksum": {"type": checksum, "value": digest}}
        if original_of is not None:  # an ingested table: the listing names the .tab, the original is the upload
            df.update(filename=name.rsplit(".", 1)[0] + ".tab", originalFileName=name,
                      originalFileSize=len(data), filesize=len(original_of))
            self.tab[fid] = original_of
        self.files[fid] = (data, {"label": df["filename"], "directoryLabel": folder, "dataFile": df})

    def handler(self):
        dv = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                u = urllib.parse.urlparse(self.path)
                q = urllib.parse.parse_qs(u.query)
                dv.requests.append(self.path)
                if u.path == "/api/datasets/:persistentId/versions/:latest-published/files":
                    if q.get("persistentId") != [dv.doi]:
                        return self.send_error(404)
                    body = json.dumps({"status": "OK", "data": [e for _, e in dv.files.values()]}).encode()
                elif u.path.startswith("/api/access/datafile/"):
                    fid = int(u.path.rsplit("/", 1)[1])
                    data, _ = dv.files[fid]
                    if fid in dv.tab and q.get("format") != ["original"]:
                        data = dv.tab[fid]
                    body = data
                else:
                    return self.send_error(404)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        return H


@pytest.fixture
def dataverse():
    dv = FakeDataverse()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), dv.handler())
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield dv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _tar_of(folder, arcroot):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(folder, arcname=arcroot)
    return buf.getvalue()


def _publish(dv, tmp_path):
    """The set as a tar.gz of its cube folders plus the CSV as an ingested table."""
    src = write_edbench(tmp_path / "src" / "ed_energy_5w")
    csv_bytes = (src / "raw" / "ed_energy_5w.csv").read_bytes()
    dv.add(11, _tar_of(src / "raw" / "psi4_grid0.4_cubes", "psi4_grid0.4_cubes"), "cubes.tar.gz",
           "ed_energy_5w/raw")
    dv.add(12, csv_bytes, "ed_energy_5w.csv", "ed_energy_5w/raw", checksum="SHA-1",
           original_of=csv_bytes.replace(b",", b"\t"))
    dv.add(13, b"# EDBench readme\n", "readme.md", "ed_energy_5w/raw", checksum="SHA-256")


def test_fetch_lists_downloads_verifies_unpacks_and_reads(dataverse, tmp_path, capsys):
    dv, url = dataverse
    _publish(dv, tmp_path)
    out = tmp_path / "data"
    assert main(["fetch", "edbench", "--set", "ed_energy_5w", "--out", str(out), "--server", url]) == 0
    printed = capsys.readouterr().out
    folder = out / "ed_energy_5w" / "ed_energy_5w"
    assert f"read it with: edbench:{folder}" in printed and printed.count("verified") == 3
    assert any("format=original" in r for r in dv.requests if "/datafile/12" in r)
    assert not (folder / "raw" / "cubes.tar.gz").exists()  # unpacked, then removed
    mols = list(open_source(f"edbench:{folder}").molecules())
    assert len(mols) == 3 and mols[2].labels["E6"] == 18.0
    n = len(dv.requests)
    assert fetch_edbench("ed_energy_5w", out, server=url)[0] == folder and len(dv.requests) == n  # a rerun: nothing
    marker = out / "ed_energy_5w.edg-fetched.json"
    assert json.loads(marker.read_text())["doi"] == DOIS["ed_energy_5w"]
    marker.write_text("[1, 2]")
    with pytest.raises(DataSourceError, match="not a completion marker EDG wrote"):
        fetch_edbench("ed_energy_5w", out, server=url)


def test_an_archive_cannot_forge_the_completion_marker(dataverse, tmp_path):
    dv, url = dataverse
    src = write_edbench(tmp_path / "src" / "ed_energy_5w")
    forged = tmp_path / "forged"
    (forged / "ed_energy_5w").mkdir(parents=True)
    (forged / "ed_energy_5w.edg-fetched.json").write_text(json.dumps({"doi": DOIS["ed_energy_5w"]}))
    dv.add(31, _tar_of(forged, "."), "bundle.tar.gz")  # tries to place the marker at the set folder's top
    dv.add(32, _tar_of(src, "ed_energy_5w"), "set.tar.gz")
    out = tmp_path / "data"
    folder, _ = fetch_edbench("ed_energy_5w", out, server=url)
    assert (out / "ed_energy_5w" / "ed_energy_5w.edg-fetched.json").exists()  # landed inside, harmless
    assert json.loads((out / "ed_energy_5w.edg-fetched.json").read_text())["files"][0]["path"] == "bundle.tar.gz"
    assert folder == out / "ed_energy_5w" / "ed_energy_5w"


def test_a_corrupt_download_is_refused_and_not_left_behind(dataverse, tmp_path):
    dv, url = dataverse
    _publish(dv, tmp_path)
    data, entry = dv.files[13]
    dv.files[13] = (b"# tampered\n", entry)  # the listing's SHA-256 no longer matches the body
    with pytest.raises(ChecksumError, match="readme.md"):
        fetch_edbench("ed_energy_5w", tmp_path / "data", server=url)
    assert not (tmp_path / "data" / "ed_energy_5w" / "ed_energy_5w" / "raw" / "readme.md").exists()
    data12, entry12 = dv.files[12]
    dv.files[13] = (data, entry)
    dv.files[12] = (data12[:-2] + b"9\n", entry12)  # same size, SHA-1 mismatch: checked here, not in download()
    with pytest.raises(ChecksumError, match="SHA-1"):
        fetch_edbench("ed_energy_5w", tmp_path / "data2", server=url)
    assert not list((tmp_path / "data2").rglob("ed_energy_5w.csv*"))
    dv.files[12] = (data12 + b"7\n", entry12)  # a body longer than the listed size is cut off while streaming
    with pytest.raises(DataSourceError, match=r"more than \d+ bytes; refusing"):
        fetch_edbench("ed_energy_5w", tmp_path / "data3", server=url)


def test_names_from_the_listing_or_an_archive_cannot_leave_the_folder(dataverse, tmp_path):
    dv, url = dataverse
    dv.add(21, b"evil", "x.txt", "../../outside")
    with pytest.raises(DataSourceError, match="outside"):
        fetch_edbench("ed_energy_5w", tmp_path / "data", server=url)
    assert not (tmp_path / "outside").exists()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok/a.txt", "fine")
        zf.writestr("../escape.txt", "evil")
    (tmp_path / "a.zip").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchiveError, match="escape.txt"):
        unpack(tmp_path / "a.zip", tmp_path / "unz")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "unz" / "ok" / "a.txt").exists()
    with pytest.raises(DataSourceError, match="unknown EDBench set 'ed_energy'"):
        fetch_edbench("ed_energy", tmp_path / "data", server=url)
