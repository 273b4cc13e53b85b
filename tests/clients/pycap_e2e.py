"""PyCap 2.7.0 through the gateway: the calls analysts make, unmodified.

Usage: python3 pycap_e2e.py URL JWT DENIED_JWT
Prints one line per check and exits non-zero on the first failure.
"""
import io
import sys

from redcap import Project
from redcap.request import RedcapError

url, jwt, denied_jwt = sys.argv[1], sys.argv[2], sys.argv[3]
# PyCap insists on a 32-character token; the gateway replaces it.
project = Project(url, "0" * 32, headers={"Authorization": f"Bearer {jwt}"})


def check(name, cond, detail=""):
    print(f"{'ok' if cond else 'FAIL'}: {name} {detail}")
    if not cond:
        sys.exit(1)


records = project.export_records()
check("export_records", len(records) == 3 and records[0]["record_id"] == "1", records[:1])
csv_records = project.export_records(format_type="csv")
check("export_records csv", csv_records.splitlines()[0].startswith("record_id,"), csv_records[:40])
metadata = project.export_metadata()
check("export_metadata", metadata[0]["field_name"] == "record_id")
users = project.export_users()
names = sorted(u["username"] for u in users)
check("export_users", "alice" in names and "bob" in names, names)
imported = project.import_users([{"username": "carol", "expiration": "2027-01-31", "design": "0", "user_rights": "0"}])
check("import_users", imported == 1, imported)
check("imported user visible", "carol" in [u["username"] for u in project.export_users()])
deleted = project.delete_users(["carol"])
check("delete_users", deleted == 1, deleted)
check("deleted user gone", "carol" not in [u["username"] for u in project.export_users()])
mapping = project.export_user_dag_assignment()
check("export_user_dag_assignment", {"username": "alice", "redcap_data_access_group": "site_a"} in mapping, mapping)
n = project.import_user_dag_assignment([{"username": "alice", "redcap_data_access_group": "site_b"}])
check("import_user_dag_assignment", n == 1, n)
mapping = project.export_user_dag_assignment()
check("user dag reassigned", {"username": "alice", "redcap_data_access_group": "site_b"} in mapping, mapping)
n = project.import_records([{"record_id": "4", "name": "Katherine", "age": "50"}])
check("import_records", n.get("count") == 1, n)
project.import_file(record="4", field="consent_file", file_name="consent.txt", file_object=io.BytesIO(b"signed"))
content, headers = project.export_file(record="4", field="consent_file")
check("file round trip", content == b"signed" and headers.get("name") == "consent.txt", headers)

# A caller without grants: the denial must reach PyCap as an error, not as data.
denied = Project(url, "0" * 32, headers={"Authorization": f"Bearer {denied_jwt}"})
try:
    denied.export_records(format_type="json")
    check("denied export raises", False)
except RedcapError as e:
    check("denied export raises", "grants" in str(e), str(e)[:80])
try:
    project.switch_dag("site_a")
    check("dag switch raises", False)
except RedcapError as e:
    check("dag switch raises", "dag:switch" in str(e), str(e)[:80])
print("pycap: all checks passed")
