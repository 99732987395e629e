#!/usr/bin/env python3
"""Sums up an nftables ruleset from `nft -j list ruleset` (the boot test reads the guest's):
the TCP ports its input chain accepts from anywhere, those it accepts only from some sources
(with the matches that restrict them), and the packets its final "dropped" counter saw.

    nft-summary.py RULESET.json   ->   {"open_tcp": [...], "restricted_tcp": [...],
                                          "dropped_packets": N}
"""
import json
import sys


def value(v):
    if isinstance(v, dict) and "set" in v:
        return [x for e in v["set"] for x in value(e)]
    if isinstance(v, dict) and "prefix" in v:
        return [f'{v["prefix"]["addr"]}/{v["prefix"]["len"]}']
    if isinstance(v, dict) and "range" in v:
        return [f'{v["range"][0]}-{v["range"][1]}']
    return v if isinstance(v, list) else [v]


out = {"open_tcp": [], "restricted_tcp": [], "dropped_packets": None}
for item in json.load(open(sys.argv[1]))["nftables"]:
    rule = item.get("rule")
    if not rule or rule["chain"] != "input":
        continue
    conds, verdict, packets = {}, None, None
    for e in rule["expr"]:
        if "match" in e:
            left = e["match"]["left"]
            key = (f'{left["payload"]["protocol"]} {left["payload"]["field"]}'
                   if "payload" in left else json.dumps(left, sort_keys=True))
            conds[key] = value(e["match"]["right"])
        elif "counter" in e:
            packets = e["counter"]["packets"]
        elif "accept" in e:
            verdict = "accept"
    if rule.get("comment") == "dropped":
        out["dropped_packets"] = packets
    if verdict != "accept" or "tcp dport" not in conds:
        continue
    ports = conds.pop("tcp dport")
    if not conds:
        out["open_tcp"] += ports
    else:
        out["restricted_tcp"].append({"ports": ports, "from": conds})
out["open_tcp"].sort()
json.dump(out, sys.stdout)
print()
