#!/usr/bin/env bash
# Checks the NixOS module.
#  - always: every .nix file parses (nix-instantiate --parse), as CI does,
#    and the module's duration parser reads nixos-module/test/durations.nix's
#    cases as nixpush does;
#  - with NIXPKGS_LIB=/path/to/nixpkgs.lib/lib: evaluates the module with
#    lib.evalModules (nixos-module/test/eval.nix), prints the generated units
#    and nix.settings, and renders nixos-module/test/nixpush.service;
#  - then: systemd-analyze security --offline=yes on that unit, failing
#    above an exposure of 2.5.
set -euo pipefail
cd "$(dirname "$0")/.."

nixfiles=$(find . -name '*.nix' -not -path './.git/*' | sort)
for f in $nixfiles; do nix-instantiate --parse "$f" >/dev/null; done
echo "parsed:" $nixfiles
nix-instantiate --eval --strict nixos-module/test/durations.nix

unit=nixos-module/test/nixpush.service
if [ -n "${NIXPKGS_LIB:-}" ]; then
	json=$(mktemp)
	nix-instantiate --eval --strict --json nixos-module/test/eval.nix --arg lib "import $NIXPKGS_LIB" >"$json"
	python3 - "$unit" "$json" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
if d["undocumented"]:
    sys.exit("options without a description or example: %s" % d["undocumented"])
print("assertion cases: %d, each failing as expected" % d["assertionCases"])
print("nix.settings:", json.dumps(d["nixSettings"], indent=2))
print("socket:", json.dumps(d["socket"], indent=2))
s = d["service"]
def val(v):
    if isinstance(v, bool): return "yes" if v else "no"
    return str(v)
lines = ["# Rendered from nixos-module/default.nix by scripts/check-module.sh; do not edit.", "[Unit]",
         "Description=" + s["description"]]
for k, key in (("after", "After"), ("wants", "Wants"), ("requires", "Requires"), ("documentation", "Documentation")):
    if s.get(k): lines.append(key + "=" + " ".join(s[k]))
lines.append("")
lines.append("[Service]")
for k, v in sorted(s.get("environment", {}).items()):
    lines.append('Environment="%s=%s"' % (k, v))
lines.append('Environment="PATH=' + ":".join(p + "/bin" for p in s.get("path", [])) + '"')
for k, v in sorted(s["serviceConfig"].items()):
    if isinstance(v, list):
        if k in ("LoadCredential", "SystemCallFilter"):
            lines += ["%s=%s" % (k, x) for x in v]
        else:
            lines.append("%s=%s" % (k, " ".join(v)))
    else:
        lines.append("%s=%s" % (k, val(v)))
lines += ["", "[Install]", "WantedBy=" + " ".join(s.get("wantedBy", []))]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print("rendered", sys.argv[1])
PY
	cat "$unit"
fi

if command -v systemd-analyze >/dev/null; then
	out=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1 || true)
	echo "$out" | tail -3
	exposure=$(echo "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
	[ -n "$exposure" ] || { echo "systemd-analyze gave no exposure figure"; exit 1; }
	awk -v e="$exposure" 'BEGIN { exit !(e <= 2.5) }' || { echo "exposure $exposure is above 2.5"; exit 1; }
	echo "systemd-analyze security exposure: $exposure (limit 2.5)"
fi
