"""PyCap 2.7.0 as a member of a group scoped to data access group site_a, through the
gateway. Usage: pycap_dag_scope.py API SITE_A_JWT"""
import sys

from redcap import Project, RedcapError

api, jwt = sys.argv[1:3]
p = Project(api, "0" * 32, headers={"Authorization": f"Bearer {jwt}"})

rows = p.export_records()
ids = sorted({r["record_id"] for r in rows})
assert ids == ["1", "3"], f"site A sees {ids}"
assert all("redcap_data_access_group" not in r for r in rows), rows[0].keys()
rows = p.export_records(export_data_access_groups=True)
assert {r["redcap_data_access_group"] for r in rows} == {"site_a"}, rows
df = p.export_records(format_type="df")
assert sorted(map(str, df.index)) == ["1", "3"], df.index
print("site A exports: records", ids)

try:
    p.import_records([{"record_id": "20", "age": "5", "redcap_data_access_group": "site_b"}])
except RedcapError as e:
    print(f"refused as expected: an import into site_b: {e}")
else:
    raise AssertionError("an import into site_b was not refused")

n = p.import_records([{"record_id": "21", "age": "5", "redcap_data_access_group": "site_a"}])
assert n["count"] == 1, n
print("pycap dag scope: all checks passed")
