"""PyCap 2.7.0 as a De-Identified analyst and as a full-rights member, through the gateway.
Usage: pycap_export_rights.py API ANALYST_JWT FULL_JWT"""
import sys

from redcap import Project, RedcapError

api, analyst, full = sys.argv[1:4]
PLACEHOLDER = "0" * 32


def project(jwt):
    return Project(api, PLACEHOLDER, headers={"Authorization": f"Bearer {jwt}"})


a = project(analyst)
rows = a.export_records()
assert rows, "the analyst gets records"
cols = set().union(*(r.keys() for r in rows))
for hidden in ("name", "dob", "notes"):
    assert hidden not in cols, f"{hidden} reached the analyst: {sorted(cols)}"
assert {"record_id", "age"} <= cols, sorted(cols)


def refused(what, call):
    try:
        call()
    except RedcapError as e:
        print(f"refused as expected: {what}: {e}")
        return
    raise AssertionError(f"{what} was not refused")


refused("fields=[name]", lambda: a.export_records(fields=["name"]))
refused("export_report", lambda: a.export_report(report_id="1"))
refused("export_logging", lambda: a.export_logging())
refused("export_file on consent_file", lambda: a.export_file(record="1", field="consent_file"))
assert "consent_complete" not in cols, sorted(cols)

f = project(full)
cols = set().union(*(r.keys() for r in f.export_records()))
assert {"name", "dob", "notes"} <= cols, sorted(cols)
print("pycap export rights: all checks passed")
