"""Unmodified clients that cannot add headers, through the gateway with a personal token.

Usage: python3 personal_tokens.py PROJECT_URL API_URL TOKEN
PROJECT_URL is .../p/demo/api/; API_URL is .../api/ (the token names the project).
"""
import json
import sys

from redcap import Project
from redcaplite import RedcapClient

project_url, api_url, token = sys.argv[1], sys.argv[2], sys.argv[3]


def check(name, cond, detail=""):
    print(f"{'ok' if cond else 'FAIL'}: {name} {detail}")
    if not cond:
        sys.exit(1)


for url in (project_url, api_url):
    r = RedcapClient(url, token)
    records = r.export_records()
    check(f"redcaplite export_records via {url}", len(records) == 3, str(records)[:60])
    users = r.get_users()
    check("redcaplite get_users", any(u["username"] == "alice" for u in users))
    out = r.import_users([{"username": "zoe", "expiration": "2027-01-31"}])
    check("redcaplite import_users", str(out).strip() == "1", out)
    out = r.delete_users(["zoe"])
    check("redcaplite delete_users", str(out).strip() == "1", out)
    out = r.import_user_dag_mappings([{"username": "bob", "redcap_data_access_group": "site_a"}])
    check("redcaplite import_user_dag_mappings", str(out).strip() == "1", out)
    mappings = r.get_user_dag_mappings()
    check("redcaplite get_user_dag_mappings", {"username": "bob", "redcap_data_access_group": "site_a"} in mappings, mappings)

p = Project(project_url, token)
check("PyCap without headers: export_records", len(p.export_records()) == 3)
check("PyCap without headers: export_users", any(u["username"] == "bob" for u in p.export_users()))

bad = RedcapClient(project_url, "0123456789ABCDEF0123456789ABCDEF")
try:
    bad.export_records()
    check("redcaplite with an unknown token fails", False)
except Exception as e:  # redcaplite raises its own APIException
    check("redcaplite with an unknown token fails", True, type(e).__name__)
print("personal tokens: all checks passed")
