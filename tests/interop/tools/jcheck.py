#!/usr/bin/env python3
"""JSON assertions for run.sh (the nvmf CLI's JSON layout is checked loosely where
the exact schema is not fixed, strictly where it is).

  jcheck.py nqns FILE NQN...     every NQN is the value of some "subnqn"/"nqn" key
  jcheck.py values FILE VALUE... every VALUE is some string value (whitespace-trimmed)
  jcheck.py perf FILE            top-level "errors" == 0 and "iops" > 0 (and, when
                                 present, "verify_errors" == 0, "verified_reads" > 0)
  jcheck.py no-corruption FILE   "verify_errors" is 0 (or absent)
Exit 0 when the assertion holds, 1 when not, 2 when FILE is not JSON.
"""
import json
import sys


def walk(x, fn, key=None):
    if isinstance(x, dict):
        for k, v in x.items():
            walk(v, fn, k)
    elif isinstance(x, list):
        for v in x:
            walk(v, fn, key)
    else:
        fn(key, x)


def main(argv):
    cmd, path, args = argv[1], argv[2], argv[3:]
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        print("jcheck: %s is not JSON: %s" % (path, e))
        return 2
    if cmd == "nqns":
        found = set()
        walk(doc, lambda k, v: found.add(v.strip()) if isinstance(k, str) and k.lower() in ("subnqn", "nqn") and isinstance(v, str) else None)
        missing = [n for n in args if n not in found]
        print("json subnqns: %s%s" % (sorted(found), "; missing %s" % missing if missing else ""))
        return 1 if missing else 0
    if cmd == "values":
        found = set()
        walk(doc, lambda k, v: found.add(v.strip()) if isinstance(v, str) else None)
        missing = [n for n in args if n not in found]
        print("json values %s: %s" % (args, "missing %s" % missing if missing else "all present"))
        return 1 if missing else 0
    if cmd == "perf":
        if not isinstance(doc, dict):
            print("perf json: not an object")
            return 1
        err, iops = doc.get("errors"), doc.get("iops")
        ok = err == 0 and isinstance(iops, (int, float)) and not isinstance(iops, bool) and iops > 0
        extra = ""
        # optional keys, checked when present: the verifier must really have checked
        # reads and found nothing
        if "verify_errors" in doc:
            extra += " verify_errors=%r" % doc["verify_errors"]
            ok = ok and doc["verify_errors"] == 0
        if "verified_reads" in doc:
            extra += " verified_reads=%r" % doc["verified_reads"]
            ok = ok and isinstance(doc["verified_reads"], int) and doc["verified_reads"] > 0
        print("perf json: errors=%r iops=%r%s -> %s" % (err, iops, extra, "ok" if ok else "BAD"))
        return 0 if ok else 1
    if cmd == "no-corruption":
        # a failed run may have I/O errors, but nothing it read may have been wrong
        ve = doc.get("verify_errors") if isinstance(doc, dict) else None
        print("perf json (failed run): errors=%r verify_errors=%r" % (doc.get("errors") if isinstance(doc, dict) else None, ve))
        return 0 if ve in (None, 0) else 1
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
