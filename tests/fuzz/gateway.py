"""What tests/fuzz/schemathesis.sh asks of the running gateway, outside schemathesis itself.

    gateway.py key STDOUT WORD       print the first API key on startup lines matching WORD,
                                     printed there or in a file whose path is printed there
    gateway.py call BASE METHOD PATH FIELD [JSON]
                                     one call with the key in $SIMGATE_FUZZ_KEY; print the
                                     answer's FIELD (none: print nothing); fail on non-2xx
    gateway.py seed BASE             real resources for schemathesis to name, as TOML
                                     settings (the reseller's key in $SIMGATE_FUZZ_KEY)

Keys travel in the environment, never on a command line (any local user can read those),
and are never printed except to the script that captures them.
"""

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

KEY = re.compile(r"sgk_(?:live|test)_[0-9A-Za-z]{30}_[0-9A-Za-z]{6}")
SUBJECT = "fuzz-subject-1"


def key(stdout, word):
    with open(stdout, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f if re.search(word, line, re.I)]
    for line in lines:
        found = KEY.search(line)
        if found:
            return found.group(0)
        for token in line.split():
            path = token.strip("'\"`()[]<>,;:")
            if path.startswith(("/", "./")) and os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    found = KEY.search(f.read())
                if found:
                    return found.group(0)
    return ""


def call(base, method, path, body=None):
    headers = {"authorization": "Bearer " + os.environ.get("SIMGATE_FUZZ_KEY", "")}
    data = None
    if body is not None:
        headers["content-type"] = "application/json"
        headers["idempotency-key"] = "fuzz-setup-%d" % time.monotonic_ns()
        data = json.dumps(body).encode()
    req = urllib.request.Request(base + path, method=method, headers=headers, data=data)
    with urllib.request.urlopen(req, timeout=60) as answer:
        return json.load(answer)


def seed(base):
    """Generated ids are almost never real, so without these every route behind an id
    answers only its 404. Reads the catalog and places a few orders with a subject
    reference, then binds product ids, order ids, ICCIDs, the subject reference and
    currencies to the request fields of those names half of the time (the other half stays
    freely generated)."""
    products = [p["id"] for p in call(base, "GET", "/v1/products")["data"]]
    values = {
        "product_ids": products,
        "order_ids": [],
        "iccids": [],
        "subject_refs": [SUBJECT],
        "currencies": ["USD", "EUR"],
    }
    for product in products[:3]:
        try:
            order = call(base, "POST", "/v1/orders", {"product_id": product, "subject_ref": SUBJECT})
        except urllib.error.HTTPError:
            continue  # a product that needs eKYC first, or is out of stock
        values["order_ids"].append(order["id"])
        values["iccids"] += [e["iccid"] for e in order["esims"]]
    bindings = {
        "body.product_id": "product_ids",
        "path.id": "order_ids",
        "path.iccid": "iccids",
        "path.subject_ref": "subject_refs",
        "body.subject_ref": "subject_refs",
        "path.currency": "currencies",
        "body.currency": "currencies",
    }
    out = [""]
    for name, entries in values.items():
        if entries:
            out.append("[dictionaries.%s]\nvalues = %s" % (name, json.dumps(entries)))
    out.append("[parameters]")
    for field, name in bindings.items():
        if values[name]:
            out.append('"%s" = { dictionary = "%s", probability = 0.5 }' % (field, name))
    print(
        "fuzz: seeded %d products, %d orders, %d eSIMs"
        % (len(products), len(values["order_ids"]), len(values["iccids"])),
        file=sys.stderr,
    )
    return "\n".join(out)


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "key":
        print(key(*args))
    elif command == "call":
        base, method, path, field = args[:4]
        body = json.loads(args[4]) if len(args) > 4 else None
        try:
            answer = call(base, method, path, body)
        except (urllib.error.URLError, OSError) as e:
            detail = e.read()[:300] if isinstance(e, urllib.error.HTTPError) else e
            sys.exit("fuzz: %s %s failed: %s" % (method, path, detail))
        if field:
            print(answer[field])
    elif command == "seed":
        print(seed(*args))
    else:
        sys.exit("usage: see the module doc")


if __name__ == "__main__":
    main()
